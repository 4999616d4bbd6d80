"""Chan 2024's p_relevant 0.9 grid at the paper's scale, most informative N first.

The ``transformer`` sweep of ``reproduce chan2024 --full``: N = 2^6, 2^8, ..., 2^20, 5 seeds,
50,000 steps, 51 checkpoints evaluated on 256 sequences per split, and the checkpoint each run
is read at (lowest training loss) on the paper's 3,000. It trains into the same sweep folder
(``OUT/sweeps/transformer``) with the same configs, so ``reproduce chan2024 --full --out OUT``
later finds these runs finished. Here each N's 5 seeds are one vectorised job and the jobs run
in :data:`ORDER`: the N around the cpu scale's peak of rare-class ICL first, so that a partial
grid answers the open question (how high the peak is at 50,000 steps) before the ends are in.
Rerunning resumes every run from its last checkpoint.

Usage (in the background)::

    nohup nice -n 5 python -m icl_circuits.papers.chan2024.paper_scale --out reproductions/chan2024-full \\
        > chan2024-full.log 2>&1 &
    python -m icl_circuits.papers.chan2024.paper_scale --out reproductions/chan2024-full --summary

``--summary`` writes ``OUT/paper_scale.csv`` (every run at its chosen checkpoint so far,
re-evaluated on 3,000 sequences per split) and ``OUT/paper_scale.png`` (rare-class ICL, IBD and
rare-class IWL against N, next to the authors' code from ``reference_code.csv``), and prints the
seed means by N, plus each unfinished run's progress and the time the rest needs at the rate
measured so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from icl_circuits.papers.chan2024.reproduce import PRESET, grids, settings
from icl_circuits.reproduce.common import SWEEPS, final, rescore
from icl_circuits.runs.layout import checkpoint_dir
from icl_circuits.runs.read import read_metrics
from icl_circuits.runs.store import list_checkpoints
from icl_circuits.sweeps.backends import Job, LocalBackend
from icl_circuits.sweeps.spec import Point, SweepSpec
from icl_circuits.sweeps.sweep import prepare_sweep, run_path

NAME = "transformer"
#: log2 N in training order: the cpu scale's peak (2^10) and its two sides, then the ends.
ORDER = (10, 12, 8, 14, 16, 20, 18, 6)
SUMMARY_CSV = "paper_scale.csv"
SUMMARY_PNG = "paper_scale.png"
#: The figure's panels: split -> title (accuracy at each run's chosen checkpoint).
PANELS = {"OOBD-low": "rare-class ICL (OOBD-low)", "IBD": "IBD", "IBD-irr-low": "rare-class IWL (IBD-irr-low)"}
COLUMNS = ["N", "seed", "last_step", "step", "split", "metric", "value"]


def spec(scale: str = "full") -> SweepSpec:
    """The p_relevant 0.9 sweep exactly as ``reproduce chan2024`` builds it at ``scale``."""
    s = settings(scale)
    grid = grids(s)[NAME]
    return SweepSpec(base=PRESET, overrides=tuple(s["overrides"]), grid={k: list(v) for k, v in grid.items()})


def jobs_by_priority(points: list[Point], out: Path, order: tuple[int, ...] = ORDER) -> list[Job]:
    """One job per N (its seeds vectorised), in ``order`` (log2 N; N not named go last)."""
    by_n: dict[int, list[Point]] = {}
    for p in points:
        by_n.setdefault(int(p.values["data.n_train"]), []).append(p)
    rank = {2**k: i for i, k in enumerate(order)}
    jobs = []
    for n in sorted(by_n, key=lambda n: (rank.get(n, len(rank)), n)):
        members = [Job(p.name, json.dumps(p.config.to_dict()), str(run_path(out, p))) for p in by_n[n]]
        jobs.append(
            dataclasses.replace(members[0], replicates=tuple((j.point, j.config_json, j.run) for j in members[1:]))
        )
    return jobs


def train_grid(
    out: Path, workers: int = 2, scale: str = "full", order: tuple[int, ...] = ORDER, only: bool = False, log=print
) -> None:
    """Train (or resume) the grid into ``out/sweeps/transformer``, one N per job, in ``order``
    (log2 N); with ``only``, just the N of ``order``. Another process may train other N of the
    same folder at the same time (each run folder is locked while it trains)."""
    sweep = Path(out) / SWEEPS / NAME
    points = prepare_sweep(spec(scale), sweep)
    jobs = jobs_by_priority(points, sweep, order)
    if only:
        jobs = jobs[: len({2**k for k in order} & {int(p.values["data.n_train"]) for p in points})]
    log(f"{time.strftime('%H:%M:%S')} {len(points)} runs in {len(jobs)} jobs on {workers} workers: {sweep}")

    def done(outcome) -> None:
        log(
            f"{time.strftime('%H:%M:%S')} {outcome.point}: {'done' if outcome.ok else outcome.error} ({outcome.seconds:.0f} s)"
        )

    LocalBackend(workers).run(jobs, done)


def summary(out: Path, scale: str = "full", n_eval: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run at its chosen checkpoint (re-evaluated) and every run's progress.

    An unfinished run is read at the checkpoint the rule chooses among those it has so far.

    Returns:
        ``(table, progress)``: ``table`` has ``N, seed, last_step, step, split, metric, value``
        for every run past step 0 (``last_step``: its latest checkpoint); ``progress`` has
        ``N, seed, last_step, steps, seconds`` (the wall seconds between its first and last
        checkpoint, from the checkpoint folders' times).
    """
    s = settings(scale)
    sweep = Path(out) / SWEEPS / NAME
    points = prepare_sweep(spec(scale), sweep)
    n_eval = n_eval or s["final_eval_size"] or 0
    rows, progress = [], []
    for p in points:
        run = run_path(sweep, p)
        steps = list_checkpoints(run)
        n, seed = int(p.values["data.n_train"]), int(p.values["seed"])
        seconds = 0.0
        if len(steps) > 1:  # wall time from the first checkpoint to the last (their folders' times)
            first, last = (checkpoint_dir(run, k).stat().st_mtime for k in (steps[0], steps[-1]))
            seconds = last - first
        last_step = steps[-1] if steps else 0
        progress.append(
            {"N": n, "seed": seed, "last_step": last_step, "steps": p.config.train.steps, "seconds": seconds}
        )
        if last_step == 0:
            continue
        res = read_metrics(run).assign(kind="metrics", point=p.name)
        res = res[res["step"] <= last_step]
        chosen = pd.concat([final(res, m, s["checkpoint"]) for m in ("acc", "loss")])
        if n_eval:
            chosen = rescore(chosen, sweep, n_eval)
        rows.append(chosen.assign(N=n, seed=seed, last_step=last_step)[COLUMNS])
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=COLUMNS)
    return table, pd.DataFrame(progress)


def figure(table: pd.DataFrame, path: Path, steps: int = 50_000) -> Path:
    """The grid's seed means (seeds' range shaded) against N, one panel per :data:`PANELS` split,
    next to the authors' code (``reference_code.csv``) at 10,000 steps and at ``steps``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icl_circuits.papers.chan2024.figures import _line, _log2_axis
    from icl_circuits.papers.chan2024.reference import reference_table
    from probes.figures import save

    ours = table[table["metric"] == "acc"].assign(p_relevant=0.9)
    # The reference's σ 0.2 rows only: its table also holds the noise sweep's σ 0 and 0.4.
    refs = {f"authors' code, {k:,} steps": reference_table(k).query("abs(sigma - 0.2) < 1e-9") for k in (10_000, steps)}
    ns = sorted(ours["N"].unique())
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (split, title) in zip(axes, PANELS.items(), strict=True):
        _line(ax, ours, split, "acc", 0.9, color="C0", label=f"ours, {steps:,} steps, 5 seeds")
        for (label, ref), style in zip(refs.items(), (("C1", "--"), ("C3", ":")), strict=True):
            _line(ax, ref, split, "acc", 0.9, color=style[0], ls=style[1], label=label)
        _log2_axis(ax, ns)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training-set size N")
    axes[0].set_ylabel("accuracy (3,000 sequences)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Chan et al. 2024 at the paper's scale: p_relevant 0.9, σ 0.2", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m icl_circuits.papers.chan2024.paper_scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="the reproduction folder (as reproduce chan2024 --full --out)")
    parser.add_argument("--workers", type=int, default=2, help="parallel jobs (one N each)")
    parser.add_argument("--scale", default="full", choices=["smoke", "cpu", "full"], help="for tests: a smaller grid")
    parser.add_argument("--summary", action="store_true", help="tabulate what has finished; train nothing")
    parser.add_argument("--log2-n", type=int, nargs="+", help="train only these N (log2), in this order")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.summary:
        import torch

        torch.set_num_threads(1)
        if args.log2_n:
            train_grid(out, args.workers, args.scale, tuple(args.log2_n), only=True)
        else:
            train_grid(out, args.workers, args.scale)
    table, progress = summary(out, args.scale)
    table.to_csv(out / SUMMARY_CSV, index=False)
    if len(table):
        figure(table, out / SUMMARY_PNG)
    acc = table[table["metric"] == "acc"].pivot_table(
        index="split", columns=["N", "last_step"], values="value", aggfunc="mean"
    )
    print(acc.round(3).to_string() if len(acc) else "no run is past step 0")
    by_n = progress.groupby("N").agg(last_step=("last_step", "min"), steps=("steps", "max"), seconds=("seconds", "max"))
    rate = by_n["seconds"] / by_n["last_step"].clip(lower=1)  # wall seconds per step of an N's job
    by_n["rest_s"] = (rate * (by_n["steps"] - by_n["last_step"])).where(by_n["last_step"] > 0)
    print(by_n.round(0).to_string())


if __name__ == "__main__":
    main()
