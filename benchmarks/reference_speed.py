"""Training speed side by side with the authors' code (``chanb/simple_icl``, Chan et al. 2024).

Both train the same model (2 blocks, 1 head, d 64, L = 1) with batch 32 on the same data
(5 + 5 classes, p_high 0.9, p_relevant 0.9, sigma 0.2, N = 1024) on this CPU, one thread each:

* **ours:** ``chan2024-stylized`` through ``train()`` (one seed), and the seeds of a grid
  vectorised as ``reproduce chan2024`` trains them (one ``train_group`` job of ``--members``
  runs: its per-run throughput);
* **theirs:** the reference's jit-compiled step fed by its own generator, built as
  ``scripts/reference_chan2024.py`` builds it (in the reference's virtualenv), one run at a
  time as the reference's sweeps run.

Times are CPU seconds of the process (all its threads), which a loaded machine inflates far
less than wall time. Our time per step is the difference between a long and a short ``train()`` run divided by the
difference in steps, so set-up and the evaluations at both ends cancel; theirs is timed over
as many steps after 20 warm-up steps (jit compilation). The
rounds interleave ours and theirs, so both see the same machine load; the median is reported.
The grid row compares per-run throughput: ours vectorised against theirs one run at a time.

Setup of the reference (outside the project's dependencies): ``scripts/reference_chan2024.py``.

Usage::

    python -m benchmarks.reference_speed --simple-icl /tmp/simple_icl --python /tmp/refenv/bin/python
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Goal
from icl_circuits.config import apply_overrides
from icl_circuits.presets import get_preset
from icl_circuits.training import train
from icl_circuits.training.replicates import train_group

ROOT = Path(__file__).resolve().parents[1]
#: This section's markers in benchmarks/RESULTS.md (``python -m benchmarks.run --section reference-speed``).
BEGIN, END = "<!-- reference-speed:begin -->", "<!-- reference-speed:end -->"
BATCH = 32
N = 1024
#: One thread for XLA, as torch gets one.
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _ours(steps: int, members: int, root: Path) -> float:
    """CPU seconds of ``train`` (one member) or one vectorised job of ``members`` runs."""
    over = [
        f"train.steps={steps}",
        "train.n_checkpoints=2",
        "train.eval_size=64",
        "train.device=cpu",
        f"data.n_train={N}",
    ]
    cfg = apply_overrides(get_preset("chan2024-stylized"), over)
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.process_time()
    if members == 1:
        train(cfg, root / "run", progress=False)
    else:
        train_group(
            [cfg.replace(seed=s) for s in range(members)], [root / f"s{s}" for s in range(members)], False, True
        )
    return time.process_time() - t0


def _theirs(steps: int, python: str, simple_icl: Path) -> float:
    """CPU seconds per step of the reference's jit-compiled step fed by its generator (after a warm-up)."""
    # ``scripts/reference_chan2024.py --time-steps`` in the reference's own venv: the model, optimiser,
    # step and generator the side-by-side runs use.
    env = {**os.environ, "XLA_FLAGS": XLA_ONE_THREAD, "JAX_PLATFORMS": "cpu"}
    script = ROOT / "scripts" / "reference_chan2024.py"
    cmd = [python, str(script), "--simple-icl", str(simple_icl), "--n", str(N), "--time-steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def per_step(short: float, long: float, steps: tuple[int, int]) -> float:
    return (long - short) / (steps[1] - steps[0])


def measure(python: str, simple_icl: Path, steps: tuple[int, int], rounds: int, members: int) -> dict[str, list[float]]:
    """Seconds per step of each side, one value per interleaved round."""
    torch.set_num_threads(1)
    out: dict[str, list[float]] = {"ours": [], "ours_vectorised": [], "theirs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for _ in range(rounds):
            t = {k: [] for k in out}
            for n in steps:
                t["ours"].append(_ours(n, 1, root / "one"))
                t["ours_vectorised"].append(_ours(n, members, root / "group"))
            out["theirs"].append(_theirs(steps[1] - steps[0], python, simple_icl))
            for k in ("ours", "ours_vectorised"):
                out[k].append(per_step(*t[k], steps))
    return out


def ratios(times: dict[str, list[float]], members: int) -> tuple[float, float]:
    """Sequences per CPU second, ours over theirs, from the medians: one run, and the vectorised job."""
    med = {k: statistics.median(v) for k, v in times.items()}
    return med["theirs"] / med["ours"], members * med["theirs"] / med["ours_vectorised"]


def rows(times: dict[str, list[float]], members: int, load: str) -> list[str]:
    """Markdown rows for ``benchmarks/RESULTS.md``."""
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, theirs = BATCH / med["ours"], BATCH / med["theirs"]
    vec = members * BATCH / med["ours_vectorised"]  # sequences per second over all runs
    one, grid = ratios(times, members)
    rng = {
        k: f"{min(BATCH * (members if k == 'ours_vectorised' else 1) / x for x in v):.0f}–"
        f"{max(BATCH * (members if k == 'ours_vectorised' else 1) / x for x in v):.0f}"
        for k, v in times.items()
    }
    return [
        "| comparison | ours (sequences/s) | chanb/simple_icl (sequences/s) | ratio | goal |",
        "| --- | --- | --- | --- | --- |",
        f"| one run: `train()` vs their jit-compiled step | {ours:.0f} ({rng['ours']}) | {theirs:.0f} ({rng['theirs']}) "
        f"| **{one:.2f}x** | ≥ 1.0x: {'met' if one >= 1.0 else 'missed'} |",
        f"| cpu grid: {members} runs vectorised vs theirs run by run | {vec:.0f} ({rng['ours_vectorised']}) "
        f"| {theirs:.0f} ({rng['theirs']}) | **{grid:.2f}x** | ≥ 3x: {'met' if grid >= 3.0 else 'missed'} |",
        f"({len(times['ours'])} interleaved rounds, median (range); CPU time, one thread each; {load})",
    ]


#: The summary table's rows for this benchmark (``benchmarks.run.update_goals`` matches them by name).
GOAL_ONE = "Chan 2024, one run: ours / chanb/simple_icl's jit-compiled step, sequences per CPU second ≥ 1.0x"
GOAL_GRID = "Chan 2024, the cpu grid: ours vectorised ({members} runs) / chanb/simple_icl run by run ≥ 3x"


def goals(times: dict[str, list[float]], members: int) -> list[Goal]:
    """The two ratios of the summary table (:func:`ratios`)."""
    one, grid = ratios(times, members)
    return [
        Goal(GOAL_ONE, f"{one:.2f}x", one >= 1.0),
        Goal(GOAL_GRID.format(members=members), f"{grid:.2f}x", grid >= 3.0),
    ]


def section(python: str, simple_icl: Path, steps: tuple[int, int], rounds: int, members: int) -> tuple[str, list[Goal]]:
    """This benchmark's section of ``benchmarks/RESULTS.md`` and its summary goals, measured now."""
    before = os.getloadavg()[0]
    times = measure(python, simple_icl, steps, rounds, members)
    load = f"load average {before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    head = [
        BEGIN,
        "## Training speed against the authors' code (chanb/simple_icl, jit-compiled JAX)",
        "",
        "`python -m benchmarks.run --section reference-speed --simple-icl PATH`: the same model (2 blocks, 1 head, "
        f"d 64, L = 1), batch {BATCH} and data (N = {N}) on both sides; CPU seconds of each process, one thread each, "
        "rounds interleaved (module docstring).",
        "",
    ]
    return "\n".join([*head, *rows(times, members, load), END]) + "\n", goals(times, members)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simple-icl", type=Path, required=True, help="checkout of chanb/simple_icl, branch iclr_2025")
    ap.add_argument("--python", default="/tmp/refenv/bin/python", help="the reference's virtualenv's python")
    ap.add_argument("--steps", type=int, nargs=2, default=[100, 500], help="short and long run lengths")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--members", type=int, default=17, help="runs per vectorised job (the cpu grid: 34 runs, 2 workers)"
    )
    args = ap.parse_args(argv)
    print(section(args.python, args.simple_icl, tuple(args.steps), args.rounds, args.members)[0], end="")


if __name__ == "__main__":
    main()
