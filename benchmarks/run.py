"""Benchmarks, measured in one run on one machine; writes benchmarks/RESULTS.md.

Usage: ``python benchmarks/run.py [--quick]``.

Sections:
    training: our training step rate for the demo preset against a minimal hand-written PyTorch
        loop of the same model, batch and data (the eager limit), and the data-generation share.
    analysis: the full probe suite over 100 demo checkpoints (goal: under a minute on 2 cores),
        and how the time per checkpoint grows with the number of checkpoints.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icl_circuits.config import apply_overrides  # noqa: E402
from icl_circuits.data import build_source  # noqa: E402
from icl_circuits.models import build_native  # noqa: E402
from icl_circuits.presets import demo  # noqa: E402
from icl_circuits.training import train  # noqa: E402

OUT = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def minimal_loop(cfg, steps: int) -> float:
    """Steps/s of the plainest loop over the same model and data: no eval, no checkpoints."""
    source = build_source(cfg.data, cfg.seed)
    model = build_native(cfg.model, source.d_in, source.n_labels, 2 * source.n_pairs + 1, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    batches = [source.train_batch(s, cfg.train.batch_size) for s in range(steps)]
    tokens = [(b.tokens(), b.target) for b in batches]
    start = time.perf_counter()
    for x, y in tokens:
        loss = F.cross_entropy(model(input_ids=x)[:, -1], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def data_time(cfg, steps: int) -> float:
    source = build_source(cfg.data, cfg.seed)
    start = time.perf_counter()
    for s in range(steps):
        source.train_batch(s, cfg.train.batch_size).tokens()
    return (time.perf_counter() - start) / steps


def ours(cfg, steps: int, root: Path) -> float:
    run_cfg = apply_overrides(cfg, [f"train.steps={steps}", "train.device=cpu"])
    start = time.perf_counter()
    train(run_cfg, root / f"ours-{steps}", progress=False)
    return steps / (time.perf_counter() - start)


def bench_training(root: Path, steps: int) -> list[str]:
    cfg = demo()
    ref = minimal_loop(cfg, steps)
    mine = ours(cfg, steps, root)
    mine_no_ckpt = ours(apply_overrides(cfg, ["train.n_checkpoints=2"]), steps, root / "nockpt")
    step_s = 1 / ref
    share = data_time(cfg, 200) / step_s
    return [
        "## Training (demo preset)",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| ours / minimal loop (with 60 checkpoints + evals) | **{mine / ref:.2f}x** |",
        f"| ours / minimal loop (2 checkpoints) | **{mine_no_ckpt / ref:.2f}x** |",
        f"| data generation / step time | **{share:.1%}** |",
        f"| minimal loop | {ref:.1f} steps/s |",
        f"| ours, 60 checkpoints | {mine:.1f} steps/s |",
        f"| ours, 2 checkpoints | {mine_no_ckpt:.1f} steps/s |",
        "",
        f"{steps} steps each, batch {cfg.train.batch_size}. The minimal loop pre-generates its batches.",
        "",
    ]


def bench_analysis(root: Path, n_ckpt: int) -> list[str]:
    from probes.over_training import analyze_run

    run = root / "analysis-demo"
    cfg = apply_overrides(demo(), [f"train.n_checkpoints={n_ckpt}", "train.device=cpu"])
    train(cfg, run, progress=False)
    from icl_circuits.runs.store import list_checkpoints

    steps = list_checkpoints(run)
    rows = []
    for n in (10, 25, len(steps)):
        sub = steps[:: max(len(steps) // n, 1)][:n]
        cache = run / "analysis"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        start = time.perf_counter()
        analyze_run(run, steps=sub, progress=False)
        rows.append((len(sub), time.perf_counter() - start))
    start = time.perf_counter()
    analyze_run(run, progress=False)
    cached = time.perf_counter() - start
    n_all, t_all = rows[-1]
    lines = [
        "## Analysis (full probe suite on demo checkpoints)",
        "",
        f"**{n_all} checkpoints: {t_all:.1f} s** (goal: 100 in under 60 s); cached second call: {cached:.2f} s.",
        "",
        "| checkpoints | seconds | seconds / checkpoint |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {n} | {t:.1f} | {t / n:.3f} |" for n, t in rows]
    lines += ["", "The first call also finds the ICL circuit at the last checkpoint (one extra checkpoint).", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke test)")
    args = parser.parse_args()
    steps = 100 if args.quick else 600
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lines = ["# Benchmark results", "", f"Machine: {machine()}.", "Command: `python benchmarks/run.py`.", ""]
        lines += bench_training(root, steps)
        lines += bench_analysis(root, 20 if args.quick else 100)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
