"""Singh et al. 2023's competition question on Chan's mix, and on Nguyen & Reddy's model.

``icl-circuits reproduce singh2023-competition`` measures ``mixed-none`` (Chan's mix, p_bursty
0.9, 2 x 2 heads, 5,000 steps, seeds 0 and 1: the ``singh2023`` sweep of that name, so an output
folder shared with it trains nothing twice) and Nguyen & Reddy's one-layer model where its ICL
fades (:mod:`icl_circuits.papers.singh2023.competition_nguyen_reddy`);
``singh2023-competition-threshold`` measures the 40,000-step ``threshold`` condition the same
way (:mod:`.reproduce_competition_threshold`). For each ``singh2023`` run
(:mod:`icl_circuits.papers.singh2023.competition`):

* per-head induction and previous-token scores over training next to ICL and IWL accuracy;
* the ICL and IWL circuits (``discover_run``) at :data:`CIRCUIT_STEPS` checkpoints of the run's
  schedule, the heads they share and where the heads the ICL circuit loses go;
* ICL with the query's direct path into the readout cut at evaluation only;
* four forks from the ICL peak with interventions during training (``block``: the query's
  direct path into the readout cut; ``freeze``: the ICL circuit's main heads frozen; each with
  a control of equal size), trained to :data:`HORIZON` (``mixed-none``: step 3,571, 2,300 steps
  past its peak, where the plain runs have lost 0.25 or more of their ICL; ``threshold``: step
  6,316), in parallel (:func:`~icl_circuits.papers.singh2023.forks.train_forks`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from icl_circuits.errors import ConfigError
from icl_circuits.papers.singh2023 import competition_nguyen_reddy as nr
from icl_circuits.papers.singh2023.competition import (
    EFFECT,
    accuracy_curves,
    accuracy_with_path_cut,
    causal_forks,
    causal_rows,
    circuit_heads,
    head_scores_over_training,
    peak_step,
    readout_scores,
    shared_components,
    verdict,
)
from icl_circuits.papers.singh2023.competition_claims import claims, cut_claims, nr_claims
from icl_circuits.papers.singh2023.forks import train_forks
from icl_circuits.papers.singh2023.reproduce import condition_specs, settings
from icl_circuits.reproduce.common import Reproduction, pick, run_grids
from icl_circuits.reproduce.plan import Plan, Task
from icl_circuits.runs.store import list_checkpoints
from icl_circuits.sweeps import SweepSpec, build_points
from probes.circuits_over_training import discover_run
from probes.figures import save

CONDITIONS = ("mixed-none",)
#: Fork horizon per condition at the cpu scale (None: the run's end).
HORIZON = {"threshold": 6316, "mixed-none": 3571}
#: How many checkpoints (spread over the schedule, the peak and the last always in) get circuits.
CIRCUIT_STEPS = 10
#: The sweep folder of Nguyen & Reddy's runs.
NR_SWEEP = "nguyen-reddy2024-" + nr.SWEEP
#: For the dry run's estimate of the forks only: the earliest ICL peak measured per condition
#: (seed 0 or 1, docs/reproductions/singh2023_competition.md); the run itself finds each peak.
PEAK_GUESS = {"mixed-none": 1250, "threshold": 2460, NR_SWEEP: 400}
#: ICL of Nguyen & Reddy's plain runs must reach this and lose more than ``EFFECT`` of it.
NR_PEAK = 0.9


def _run_folder(out: Path, cond: str, point: str) -> Path:
    return out / "sweeps" / cond / "runs" / point


def circuit_steps(all_steps: list[int], peak: int, n: int = CIRCUIT_STEPS) -> list[int]:
    """``n`` checkpoints spread over ``all_steps`` (index-wise), with the peak and the last."""
    late = [s for s in all_steps if s > 0]
    pick_idx = {round(i * (len(late) - 1) / max(1, n - 1)) for i in range(n)}
    return sorted({late[i] for i in pick_idx} | {peak, late[-1]})


def plot(curves: pd.DataFrame, scores: pd.DataFrame, path: Path) -> Path:
    keys = sorted({(c, s) for c, s in zip(curves["condition"], curves["seed"], strict=True)})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, (cond, seed) in zip(axes[0], keys, strict=True):
        c = curves[(curves["condition"] == cond) & (curves["seed"] == seed) & (curves["step"] > 0)]
        ax.plot(c["step"], c["ICL"], "k-", lw=2, label="ICL acc")
        ax.plot(c["step"], c["IWL"], "k--", lw=2, label="IWL acc")
        s = scores[(scores["condition"] == cond) & (scores["seed"] == seed) & (scores["step"] > 0)]
        for (metric, layer, head), g in s.groupby(["metric", "layer", "head_index"]):
            style = "-" if metric == "task_induction" else ":"
            ax.plot(g["step"], g["value"], style, lw=0.8, label=f"{metric} L{layer}H{head}")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{cond} seed {seed}", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    save(fig, path)
    return path


def _no_conditions(scale: str, missing: list[str], specs: dict) -> str:
    return (
        f"singh2023-competition at {scale} scale: singh2023 has no {', '.join(missing)} condition there "
        f"(it has {', '.join(specs)}); the competition is measured at cpu scale"
    )


def _specs(scale: str, conditions: tuple[str, ...]) -> dict[str, SweepSpec]:
    specs = condition_specs(settings(scale))
    if missing := [c for c in conditions if c not in specs]:
        raise ConfigError(_no_conditions(scale, missing, specs))
    return {c: specs[c] for c in conditions}


def fork_seconds(specs: dict[str, SweepSpec], horizon: dict[str, int | None], workers: int) -> float:
    """Estimated wall seconds of the forks: each run's three or four forks from
    :data:`PEAK_GUESS` to its horizon, at the step time of a fork's intervention (timed here)."""
    from icl_circuits.intervention_config import EMBED, InterventionConfig
    from icl_circuits.sweeps.backends import default_workers
    from icl_circuits.training.plan import estimate_group_seconds

    total = 0.0
    for name, spec in specs.items():
        for point in build_points(spec):
            cfg = point.config
            end = horizon.get(name) or cfg.train.steps
            steps = max(0, end - min(PEAK_GUESS.get(name, 0), end))
            ivs = {
                "path": InterventionConfig(kind="path", targets=(EMBED,)),
                "freeze": InterventionConfig(kind="freeze", targets=("L0H0",)),
            }
            for iv, n in ((ivs["path"], 2 if name != NR_SWEEP else 1), (ivs["freeze"], 2)):
                c = cfg.replace(train=cfg.train.replace(interventions=(iv,)))
                t = estimate_group_seconds([c], 3)
                total += n * (steps * t["step"] + t["setup"])
    return total / max(1, min(workers or default_workers(), 2 * len(specs)))


def plan_for(scale: str, conditions: tuple[str, ...], extra: dict[str, SweepSpec] | None = None) -> Plan:
    """The dry run's plan: the sweeps as ``run`` trains them (one stage), then the forks."""
    try:
        specs = _specs(scale, conditions)
    except ConfigError as err:
        return Plan(stages=(), notes=(str(err),))
    stage = {**specs, **(extra or {})}
    horizon = {c: (HORIZON[c] if scale != "smoke" else None) for c in conditions}
    task = Task(
        "the forks from each run's ICL peak (timed from the earliest measured peak, on 2 workers)",
        lambda: fork_seconds(stage, horizon, 2),
    )
    return Plan(
        stages=(stage,),
        tasks=(task,),
        notes=(
            "not timed: the circuits over training (about 1-2 s per checkpoint and split here), "
            "the head scores and the evaluation-time cuts",
        ),
    )


def plan(scale: str) -> Plan:
    return plan_for(scale, CONDITIONS, {NR_SWEEP: nr.sweep_spec(scale)})


def train_sweeps(out: Path, specs: dict[str, SweepSpec], workers: int | None, progress: bool) -> None:
    """Every sweep in one pool of jobs (:func:`~icl_circuits.reproduce.common.run_grids`)."""
    run_grids(out, {c: (s.base, s.overrides, s.grid) for c, s in specs.items()}, workers=workers, progress=progress)


def measure_runs(out: Path, scale: str, conditions: tuple[str, ...]) -> tuple[dict[str, pd.DataFrame], list]:
    """The measurements of each trained ``singh2023`` run, and its forks (not yet trained) as
    ``(tag, base, peak, ICL heads, forks)``."""
    specs = _specs(scale, conditions)
    curves, scores, heads, shared, readout, cut, causal_plan = [], [], [], [], [], [], []
    for cond in conditions:
        for point in build_points(specs[cond]):
            base = _run_folder(out, cond, point.name)
            tag = {"condition": cond, "seed": point.config.seed}
            peak = peak_step(base)
            steps = circuit_steps(list_checkpoints(base), peak, pick(scale, 3, CIRCUIT_STEPS, CIRCUIT_STEPS))
            curves.append(accuracy_curves(base).assign(**tag))
            scores.append(head_scores_over_training(base, steps, n=pick(scale, 32, 256, 512)).assign(**tag))
            found, edges = discover_run(base, steps=steps)
            h = circuit_heads(found)
            heads.append(h.assign(**tag))
            readout.append(readout_scores(edges).assign(**tag))
            cut.append(accuracy_with_path_cut(base, steps).assign(**tag))
            shared.append(shared_components(h, peak).assign(**tag))
            horizon = HORIZON[cond] if scale != "smoke" else None
            causal_plan.append((tag, base, *causal_forks(base, out / "causal" / cond / point.name, horizon)))
    tables = {
        "curves": pd.concat(curves, ignore_index=True),
        "head_scores": pd.concat(scores, ignore_index=True),
        "circuits": pd.concat(heads, ignore_index=True),
        "shared": pd.concat(shared, ignore_index=True),
        "readout": pd.concat(readout, ignore_index=True),
        "path_cut": pd.concat(cut, ignore_index=True),
    }
    return tables, causal_plan


def causal_tables(causal_plan: list) -> dict[str, pd.DataFrame]:
    """``causal`` and ``verdict`` once the forks of ``causal_plan`` are trained."""
    rows = [{**tag, **row} for tag, base, peak, ih, forks in causal_plan for row in causal_rows(base, peak, ih, forks)]
    return {"causal": pd.DataFrame(rows), "verdict": verdict(pd.DataFrame(rows))}


def measure_nguyen_reddy(out: Path, scale: str) -> tuple[dict[str, pd.DataFrame], list]:
    """Nguyen & Reddy's trained runs: their curves and evaluation-time cuts, and their forks
    (not yet trained) as ``(tag, base, peak, forks)``."""
    curves, cut, plan_ = [], [], []
    for point in build_points(nr.sweep_spec(scale)):
        base = _run_folder(out, NR_SWEEP, point.name)
        tag = {"condition": NR_SWEEP, "seed": point.config.seed}
        curves.append(accuracy_curves(base).assign(**tag))
        peak, forks = nr.forks(base, out / "causal" / NR_SWEEP / point.name)
        cut.append(accuracy_with_path_cut(base, sorted({peak, list_checkpoints(base)[-1]})).assign(**tag))
        plan_.append((tag, base, peak, forks))
    curve_t = pd.concat(curves, ignore_index=True)
    tables = {
        "nr_curves": curve_t,
        "nr_transience": nr.transient(curve_t, NR_PEAK, EFFECT),
        "nr_path_cut": pd.concat(cut, ignore_index=True),
    }
    return tables, plan_


def nr_causal_tables(plan_: list) -> dict[str, pd.DataFrame]:
    """``nr_causal`` and ``nr_verdict`` once the forks of ``plan_`` are trained."""
    causal = pd.DataFrame([{**tag, **row} for tag, base, peak, forks in plan_ for row in nr.rows(base, peak, forks)])
    return {"nr_causal": causal, "nr_verdict": verdict(causal)}


def run_competition(
    out: Path,
    scale: str,
    workers: int | None,
    progress: bool,
    name: str,
    conditions: tuple[str, ...],
    nguyen_reddy: bool,
) -> Reproduction:
    """Train the ``conditions``' sweeps (and Nguyen & Reddy's, with ``nguyen_reddy``) in one pool,
    measure every run, train all their forks in one pool, and judge them."""
    specs = _specs(scale, conditions)
    train_sweeps(out, {**specs, **({NR_SWEEP: nr.sweep_spec(scale)} if nguyen_reddy else {})}, workers, progress)
    tables, causal_plan = measure_runs(out, scale, conditions)
    nr_tables, nr_plan = measure_nguyen_reddy(out, scale) if nguyen_reddy else ({}, [])
    train_forks([f for *_, forks in causal_plan + nr_plan for f in forks], workers)
    tables |= causal_tables(causal_plan)
    settings = {
        "conditions": {c: list(specs[c].overrides) for c in conditions},
        "horizon": {c: HORIZON[c] for c in conditions},
    }
    found = [*claims(tables["verdict"], tables["shared"]), *cut_claims(tables["path_cut"])]
    if nguyen_reddy:
        tables |= nr_tables | nr_causal_tables(nr_plan)
        settings["nguyen_reddy"] = list(nr.sweep_spec(scale).overrides)
        found += nr_claims(tables["nr_transience"], tables["nr_verdict"], tables["nr_path_cut"], nr.describe(scale))
    return Reproduction(
        name=name,
        scale=scale,
        settings={**settings, "effect": EFFECT},
        claims=found,
        tables=tables,
        figures=[plot(tables["curves"], tables["head_scores"], out / "competition.png")],
    )


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    return run_competition(out, scale, workers, progress, "singh2023-competition", CONDITIONS, nguyen_reddy=True)
