"""Torch CPU threads for training: 1 against 2, side by side, speed and reproducibility.

Each run is a fresh process (as the CLI is) training a shortened ``demo`` with
``train.threads`` set; rounds alternate 1 and 2 threads so a noisy neighbour slows both.
Reproducibility: the two runs of each thread count are compared (metrics.jsonl bytes, final
weights). The section between the ``threads`` markers of ``benchmarks/RESULTS.md``:
``python -m benchmarks.run --section threads [--steps N] [--rounds R]`` measures it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BEGIN, END = "<!-- threads:begin -->", "<!-- threads:end -->"

CHILD = """
import time, json
from icl_circuits.config import apply_overrides
from icl_circuits.presets import demo
from icl_circuits.training import train
cfg = apply_overrides(demo(), {overrides!r})
t = time.perf_counter()
train(cfg, {out!r}, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""


def run_once(out: Path, threads: int, steps: int) -> float:
    """Train the shortened demo into ``out`` in a fresh process; its training seconds."""
    overrides = [f"train.steps={steps}", "train.n_checkpoints=10", "train.device=cpu", f"train.threads={threads}"]
    code = CHILD.format(overrides=overrides, out=str(out))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def weights_diff(a: Path, b: Path) -> float:
    """Largest absolute difference between the final weights of two runs."""
    from icl_circuits.runs.read import load_native

    wa, wb = load_native(a).state_dict(), load_native(b).state_dict()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def metrics_diff(a: Path, b: Path) -> tuple[int, int]:
    """(differing, total) metric values between two runs' metrics.jsonl."""
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    return sum(x != y for x, y in zip(ra, rb, strict=True)), len(ra)


def sweep_once(out: Path, workers: int, threads: int, steps: int, runs: int) -> float:
    """Wall seconds of ``icl-circuits sweep`` over ``runs`` seeds of the shortened demo."""
    argv = [sys.executable, "-m", "icl_circuits.cli", "sweep", "--base", "demo", f"seed=range({runs})"]
    argv += ["--out", str(out), "--workers", str(workers), "--no-progress", "--vectorise", "no"]
    argv += [f"--set=train.{k}" for k in (f"steps={steps}", "n_checkpoints=5", "eval_size=128", f"threads={threads}")]
    t = time.perf_counter()
    subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - t


def measure_workers(steps: int, rounds: int, runs: int = 4) -> list[str]:
    """Sweep workers: 2 processes x 1 thread against 1 process x 2 threads (rounds alternate)."""
    times: dict[tuple[int, int], list[float]] = {(2, 1): [], (1, 2): []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for key in times if r % 2 == 0 else list(times)[::-1]:
                times[key].append(sweep_once(Path(tmp) / f"s{key}-{r}", *key, steps, runs))
    med = {k: statistics.median(v) for k, v in times.items()}
    return [
        "",
        f"Sweep workers (`icl-circuits sweep --base demo seed=range({runs})`, {steps} steps, 5 checkpoints, eval "
        f"128; rounds alternating; load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}):",
        "",
        "| workers x torch threads | sweep wall time, median (each) |",
        "| --- | --- |",
        *[f"| {w} x {t} | {med[(w, t)]:.1f} s ({', '.join(f'{x:.1f}' for x in times[(w, t)])}) |" for w, t in times],
        "",
        f"One run per core with one thread each is {med[(1, 2)] / med[(2, 1)]:.2f}x as fast as one run at a time "
        "with two threads: the sweep default stays one worker per core, one thread each.",
    ]


def measure(steps: int, rounds: int) -> str:
    """The markdown section: seconds per thread count and run-to-run differences."""
    times: dict[int, list[float]] = {1: [], 2: []}
    load0 = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for r in range(rounds):
            for threads in (1, 2) if r % 2 == 0 else (2, 1):
                times[threads].append(run_once(root / f"t{threads}-{r}", threads, steps))
        rows = []
        for threads in (1, 2):
            diff, total = metrics_diff(root / f"t{threads}-0", root / f"t{threads}-1")
            wdiff = weights_diff(root / f"t{threads}-0", root / f"t{threads}-1")
            med = statistics.median(times[threads])
            runs = ", ".join(f"{t:.1f}" for t in times[threads])
            rows.append(
                f"| {threads} | {med:.1f} s ({runs}) | {diff} of {total} | {wdiff:.1e} | "
                f"{'yes' if diff == 0 and wdiff == 0 else 'no'} |"
            )
    ratio = statistics.median(times[2]) / statistics.median(times[1])
    load1 = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join(
        [
            BEGIN,
            "## Torch threads for training (`train.threads`)",
            "",
            f"`python -m benchmarks.run --section threads --steps {steps} --rounds {rounds}`: `demo` shortened to {steps} steps "
            "and 10 checkpoints, each run a fresh process, rounds alternating 1 and 2 threads; the first two "
            f"runs of each thread count are compared. {os.cpu_count()} cores; load average (1, 5, 15 min) "
            f"at start {load0}, at end {load1}: under load, 2 threads per process oversubscribe the cores.",
            "",
            "| threads | training time, median (each run) | metric values differing between two runs | "
            "max weight difference | reproducible |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"2 threads take {ratio:.2f}x the time of 1. One thread is the default (`train.threads=1`): "
            "bitwise reproducible, so a resumed run ends exactly as an uninterrupted one, and no slower "
            "for these small models. `train.threads=0` keeps torch's choice (one per core).",
            *measure_workers(steps, rounds),
            END,
        ]
    )
