"""Paper figures of a run folder as PNG or SVG.

Usage::

    python scripts/figures.py checkpoints/demo --out figures/demo --format svg
    python scripts/figures.py checkpoints/demo --out figures --steps 0 300 3000 --format png

Writes into ``--out``:

* ``attention_L{l}H{h}_step{s}``: the top induction head (task-induction score at the last
  checkpoint) on one ICL-split sequence at each chosen checkpoint, and
  ``attention_L{l}H{h}_over_training``: the same panels side by side;
* ``heads_grid_step{s}``: every head at the last checkpoint;
* ``competition``: ICL / IWL (/ CIWL) accuracy over training, emergence, peak and transience marked;
* ``ablations``: every split's accuracy over training, clean and with each subcircuit ablated;
* ``heads_task_induction`` / ``heads_prev_token``: per-head scores over training.

The probe suite behind the last four is cached in ``RUN/analysis/`` (as by ``icl-circuits
analyze``); ``--no-analysis`` skips it and writes the attention figures only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from icl_circuits.data import build_source
from icl_circuits.errors import ICLError
from icl_circuits.runs.read import load_config, load_model, read_metrics
from icl_circuits.runs.store import list_checkpoints
from probes import figures, viz
from probes.competition import competition_table, summarize
from probes.over_training import analyze_run


def spread(steps: list[int], k: int) -> list[int]:
    """``k`` checkpoints spread evenly over the list (log-spaced if the checkpoints are)."""
    return sorted({steps[i] for i in np.linspace(0, len(steps) - 1, min(k, len(steps))).round().astype(int)})


def pick_sequence(batch) -> int:
    """The first sequence whose context holds the query's class (else 0)."""
    has = batch.query_in_context().any(1)
    return int(has.float().argmax()) if bool(has.any()) else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="figures.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--format", choices=["png", "svg", "pdf"], default="png")
    p.add_argument("--steps", type=int, nargs="+", help="checkpoints for the attention figures (default: 4 spread)")
    p.add_argument(
        "--index", type=int, help="sequence of the ICL evaluation batch to show (default: first with a match)"
    )
    p.add_argument("--eval-size", type=int, default=512, help="sequences per split for the analysis")
    p.add_argument("--no-analysis", action="store_true", help="attention figures only")
    return p.parse_args(argv)


def write_figures(args: argparse.Namespace) -> list[Path]:
    run, out, ext = args.run, args.out, args.format
    cfg = load_config(run)
    available = list_checkpoints(run)
    if not available:
        raise ICLError(f"{run}: no checkpoints")
    steps = args.steps or spread(available, 4)
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ICLError(f"--steps: no checkpoint at step {missing[0]} in {run} (have {available})")
    source = build_source(cfg.data, cfg.seed, "cpu")
    batch = source.eval_batch(source.icl_split, 256)
    index = pick_sequence(batch) if args.index is None else args.index
    if not 0 <= index < len(batch):
        raise ICLError(f"--index: expected 0..{len(batch) - 1}, got {index}")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / f"{name}.{ext}"
        figures.save(fig, path)
        written.append(path)

    last = available[-1]
    model = load_model(run, last)
    layer, head = viz.top_induction_head(model, batch)
    for step in steps:
        save(viz.attention_figure(run, batch, index, layer, head, step=step), f"attention_L{layer}H{head}_step{step}")
    save(
        viz.head_over_checkpoints_figure(run, steps, layer, head, batch, index),
        f"attention_L{layer}H{head}_over_training",
    )
    save(viz.heads_grid_figure(model, batch, index, step=last), f"heads_grid_step{last}")
    if args.no_analysis:
        return written

    df = analyze_run(run, eval_size=args.eval_size)
    train = read_metrics(run)
    train = train[train.split == "train"].assign(condition="clean", layer=pd.NA, head_index=pd.NA)
    table = competition_table(
        pd.concat([df, train[df.columns]], ignore_index=True), source.icl_split, source.iwl_split, source.ciwl_split
    )
    save(figures.competition_figure(table, summarize(table)), "competition")
    save(figures.ablation_figure(df, list(source.splits)), "ablations")
    for metric in ("task_induction", "prev_token"):
        save(figures.head_heatmap(df, metric), f"heads_{metric}")
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = write_figures(args)
    except ICLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
