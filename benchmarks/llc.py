"""The LLC's speed and memory goals on a trained demo run (``python -m benchmarks.llc RUN``).

Rows: the whole-model LLC at every checkpoint (goal: 60 demo checkpoints <= 10 min), the
weight-refined LLC of every head, MLP, the readout and both circuits at 20 checkpoints
(goal <= 15 min), and the peak RSS of this process (goal <= 2 GiB). The default sampler
settings (:data:`probes.llc_over_training.DEFAULT`), one torch thread. The load average is
printed beside, as the machine may be shared. ``--cache`` keeps the tables (e.g. the run's
own ``analysis`` folder, for ``analyze --with llc`` to reuse); by default a fresh
temporary folder, so every checkpoint is computed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from icl_circuits.runs.store import list_checkpoints
from probes import llc_over_training as lot

GOALS = {"model": 600.0, "components": 900.0}
#: This section's markers in benchmarks/RESULTS.md (``python -m benchmarks.run --section llc --run RUN``).
BEGIN, END = "<!-- llc:begin -->", "<!-- llc:end -->"
GIB = 2**30


def peak_rss() -> float:
    """Peak resident memory of this process, bytes."""
    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(raw) if sys.platform == "darwin" else float(raw) * 1024


def spread(steps: list[int], n: int) -> list[int]:
    """``n`` checkpoint steps spread evenly over ``steps`` (first and last included)."""
    idx = np.unique(np.linspace(0, len(steps) - 1, min(n, len(steps))).round().astype(int))
    return [steps[i] for i in idx]


def measure(run: Path, cache: Path, n_model: int = 60, n_components: int = 20) -> list[tuple[str, str, str]]:
    """``(goal, measured, status)`` rows."""
    steps = list_checkpoints(run)
    rows = []
    for part, n in (("model", n_model), ("components", n_components)):
        chosen = spread(steps, n)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        df = lot.llc_over_training(run, chosen, (part,), lot.DEFAULT, cache=cache, progress=False)
        took = time.perf_counter() - t0
        load1 = os.getloadavg()[0]
        healthy = df[df.metric == "llc_healthy"].value.mean()
        goal = f"LLC {part} at {len(chosen)} demo checkpoints <= {GOALS[part] / 60:.0f} min"
        got = f"{took / 60:.1f} min ({took / len(chosen):.1f} s per checkpoint; {100 * healthy:.0f}% healthy; load {load0:.1f} -> {load1:.1f})"
        rows.append((goal, got, "met" if took <= GOALS[part] else "**missed**"))
    rss = peak_rss()
    rows.append(("LLC peak RSS <= 2 GiB", f"{rss / 2**20:.0f} MiB", "met" if rss <= 2 * GIB else "**missed**"))
    return rows


def section(rows: list[tuple[str, str, str]]) -> str:
    """This benchmark's section of ``benchmarks/RESULTS.md``."""
    head = [
        BEGIN,
        "## Local learning coefficient (devinterp 1.x) on the demo run",
        "",
        "`python -m benchmarks.run --section llc --run checkpoints/demo`: the default sampler settings, one torch "
        "thread, every checkpoint computed afresh (module docstring of `benchmarks/llc.py`).",
        "",
        "| goal | measured | status |",
        "| --- | --- | --- |",
    ]
    return "\n".join([*head, *("| " + " | ".join(row) + " |" for row in rows), END]) + "\n"


def run_section(run: Path, n_model: int = 60, n_components: int = 20) -> str:
    """Measure and return the section (a fresh cache, one torch thread)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        return section(measure(run, Path(tmp), n_model, n_components))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a trained demo run folder (make demo: checkpoints/demo)")
    ap.add_argument("--cache", help="where the LLC tables go (default: a temporary folder)")
    ap.add_argument("--model-checkpoints", type=int, default=60)
    ap.add_argument("--component-checkpoints", type=int, default=20)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp)
        rows = measure(Path(args.run), cache, args.model_checkpoints, args.component_checkpoints)
    print("| goal | measured | status |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
