"""Singh et al. 2023's competition question on the ``threshold`` condition (40,000 steps).

The ``threshold`` runs of ``reproduce singh2023`` (both-strategies data at the memorisation
threshold, K 144, 2 x 8 attention-only heads, 40,000 steps, seeds 0 and 1: the same sweep, so
an output folder shared with it trains nothing twice), measured as
:mod:`.reproduce_competition` measures Chan's mix: head scores and circuits over training,
the evaluation-time cut, and the four forks from the ICL peak to step 6,316
(:data:`~.reproduce_competition.HORIZON`).
"""

from __future__ import annotations

from pathlib import Path

from icl_circuits.papers.singh2023.competition import EFFECT
from icl_circuits.papers.singh2023.competition_claims import claims, cut_claims
from icl_circuits.papers.singh2023.forks import train_forks
from icl_circuits.papers.singh2023.reproduce_competition import (
    HORIZON,
    _specs,
    causal_tables,
    measure_runs,
    plan_for,
    plot,
    train_sweeps,
)
from icl_circuits.reproduce.common import Reproduction
from icl_circuits.reproduce.plan import Plan

CONDITIONS = ("threshold",)


def plan(scale: str) -> Plan:
    return plan_for(scale, CONDITIONS)


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    specs = _specs(scale, CONDITIONS)
    train_sweeps(out, specs, workers, progress)
    tables, causal_plan = measure_runs(out, scale, CONDITIONS)
    train_forks([f for *_, forks in causal_plan for f in forks], workers)
    tables |= causal_tables(causal_plan)
    figures = [plot(tables["curves"], tables["head_scores"], out / "competition.png")]
    return Reproduction(
        name="singh2023-competition-threshold",
        scale=scale,
        settings={
            "conditions": {c: list(specs[c].overrides) for c in CONDITIONS},
            "horizon": {c: HORIZON[c] for c in CONDITIONS},
            "effect": EFFECT,
        },
        claims=[*claims(tables["verdict"], tables["shared"]), *cut_claims(tables["path_cut"])],
        tables=tables,
        figures=figures,
    )
