"""Benchmark: circuit discovery at every checkpoint of a demo run (``probes.circuits_over_training``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.common import Goal, Scale, clock
from benchmarks.scaling import _analysis_run
from icl_circuits.runs.store import list_checkpoints

#: Goal: ICL and IWL circuits at 100 demo checkpoints within this many seconds.
GOAL_S = 120.0


def bench_circuits(root: Path, scale: Scale) -> tuple[list[Goal], list[str]]:
    """Time the discovered ICL and IWL circuits (EAP-IG, pruning) at every checkpoint of a demo run."""
    from probes.circuits_over_training import CircuitParams, discover_run

    n_ckpt = scale.analysis_ckpts[-1]
    run = _analysis_run(
        root, "circuits-demo", [f"train.n_checkpoints={n_ckpt}", f"train.steps={scale.analysis_train_steps}"]
    )
    n_all = len(list_checkpoints(run))
    params = CircuitParams()
    cache = root / "circuits-cache"
    shutil.rmtree(cache, ignore_errors=True)
    t_all = clock(lambda: discover_run(run, params=params, cache=cache))
    cached = clock(lambda: discover_run(run, params=params, cache=cache))
    per100 = t_all / n_all * 100
    lines = [
        "## Circuit discovery over training (`probes.circuits_over_training`)",
        "",
        f"Demo run ({scale.analysis_train_steps} steps, {n_all} checkpoints), ICL (IC) and IWL (IW) circuits at "
        f"every checkpoint ({params.method}, {params.steps} steps, {params.n} sequences per split, faithfulness "
        f"target {params.target:g}): **{t_all:.1f} s for {n_all} checkpoints** ({t_all / n_all:.2f} s each); "
        f"cached second call {cached:.2f} s.",
        "",
    ]
    goals = [
        Goal(
            f"circuits: 100 demo checkpoints <= {GOAL_S:.0f} s",
            f"{per100:.0f} s per 100" + ("" if n_all >= 100 else f" (extrapolated from {n_all})"),
            per100 <= GOAL_S,
            ""
            if per100 <= GOAL_S
            else f"{t_all / n_all:.2f} s per checkpoint here. Next lever: fewer EAP-IG steps or sequences, "
            "or one batched pass for the bisection's candidate circuits.",
        )
    ]
    return goals, lines
