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

from icl_circuits.papers.singh2023.reproduce_competition import plan_for, run_competition
from icl_circuits.reproduce.common import Reproduction
from icl_circuits.reproduce.plan import Plan

CONDITIONS = ("threshold",)


def plan(scale: str) -> Plan:
    return plan_for(scale, CONDITIONS)


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    return run_competition(
        out, scale, workers, progress, "singh2023-competition-threshold", CONDITIONS, nguyen_reddy=False
    )
