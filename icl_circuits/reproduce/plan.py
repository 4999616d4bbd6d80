"""What a reproduction would run, without running it: ``icl-circuits reproduce NAME --dry-run``.

Each reproduction module has ``plan(scale) -> Plan``: its sweeps, in the stages its ``run``
trains them (the sweeps of one stage share one pool of jobs, as
:func:`icl_circuits.reproduce.common.run_grids` runs them), and its work outside the sweeps
(:class:`Task`: a gating model, probes, a fine-tuned language model), each with a timed probe.

:func:`describe` builds and validates every run's config (a bad one fails in one line before
anything is timed), groups each stage's runs into jobs as the sweep does
(:func:`icl_circuits.sweeps.sweep.group_jobs`: seeds vectorised where the measured rule says it
pays), times a few training steps and one evaluation of each distinct job shape on this
machine (:func:`icl_circuits.training.plan.estimate_group_seconds`), and adds up:

* **time**: per job ``steps x step + checkpoints x evaluation + setup``; jobs are dealt to the
  workers in order, each to the first free one, so the stage's wall time is its last worker's;
  the stages and tasks run one after another;
* **disk**: per run, its checkpoints (weights and optimiser state, ``4 x 3`` bytes per
  parameter for Adam, ``4 x 2`` for SGD, plus the step's metrics) times their number.

The probe runs on the machine as loaded now: on a busy machine the estimate is high by the load.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from icl_circuits.config import RunConfig
from icl_circuits.errors import ConfigError
from icl_circuits.training.plan import duration

#: Training steps each probe times (after one warm-up step).
PROBE_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Task:
    """Work of a reproduction outside its sweeps.

    Attributes:
        name: what it is, one line.
        probe: times a small piece of it here and returns the whole task's estimated seconds.
        disk: bytes it writes.
    """

    name: str
    probe: Callable[[], float]
    disk: int = 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """A reproduction's runs: ``stages`` of sweeps (name -> SweepSpec), then ``tasks``."""

    stages: tuple[dict, ...]
    tasks: tuple[Task, ...] = ()
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One job's estimate: its runs, seconds and the probe's per-step and per-evaluation times."""

    sweep: str
    runs: int
    steps: int
    seconds: float
    step: float
    eval: float


def linear_seconds(run: Callable[[int], object], sizes: list[int], small: tuple[int, int] = (4, 12)) -> float:
    """Estimated seconds of ``run(n)`` for every ``n`` in ``sizes``, from timing two small ``n``.

    ``run(n)`` is taken to cost ``fixed + n x per``: ``run(small[0])`` and ``run(small[1])``
    are timed (after one warm-up call) and give both.
    """
    run(small[0])
    times = []
    for n in small:
        t0 = time.perf_counter()
        run(n)
        times.append(time.perf_counter() - t0)
    per = max(0.0, (times[1] - times[0]) / (small[1] - small[0]))
    fixed = max(0.0, times[0] - small[0] * per)
    return sum(fixed + n * per for n in sizes)


def checkpoint_bytes(cfg: RunConfig) -> int:
    """Bytes of one checkpoint of ``cfg``: float32 weights and the optimiser's state."""
    from icl_circuits.models.build import build_native

    model = build_native(cfg.model, seed=0, **cfg.data.model_shape())
    n = sum(p.numel() for p in model.parameters())
    per = 2 if cfg.train.optimizer == "sgd" else 3
    return 4 * per * n + 8192


def _shape_key(cfg: RunConfig, members: int) -> str:
    train = {k: v for k, v in cfg.train.to_dict().items() if k not in ("steps", "n_checkpoints", "checkpoint_every")}
    shape = {"model": cfg.model.to_dict(), "train": train, "data": cfg.data.model_shape(), "family": cfg.data.family}
    return json.dumps({**shape, "members": members}, sort_keys=True, default=str)


def _wall(durations: list[float], workers: int) -> float:
    free = [0.0] * max(1, workers)
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free)


def estimate_stage(stage: dict, workers: int) -> tuple[list[Estimate], float, int]:
    """Jobs of one stage (name -> SweepSpec): their estimates, the stage's wall seconds and disk bytes."""
    from icl_circuits.sweeps.backends import Job
    from icl_circuits.sweeps.spec import build_points
    from icl_circuits.sweeps.sweep import group_jobs
    from icl_circuits.training.plan import estimate_group_seconds
    from icl_circuits.training.schedule import checkpoint_steps

    points, jobs, sweep_of = {}, [], {}
    for name, spec in stage.items():
        for p in build_points(spec):  # builds and validates every config
            label = f"{name}:{p.name}"
            points[label], sweep_of[label] = p, name
            jobs.append(Job(label, json.dumps(p.config.to_dict()), label))
    jobs = group_jobs(jobs, points, workers)
    probes: dict[str, dict[str, float]] = {}
    estimates, disk = [], 0
    for job in jobs:
        cfgs = [points[label].config for label in job.points]
        tc = cfgs[0].train
        key = _shape_key(cfgs[0], len(cfgs))
        if key not in probes:
            with _quiet_rng():
                probes[key] = estimate_group_seconds(cfgs, PROBE_STEPS)
        t = probes[key]
        n_ckpt = len(checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every))
        seconds = tc.steps * t["step"] + n_ckpt * t["eval"] + t["setup"]
        estimates.append(Estimate(sweep_of[job.point], len(cfgs), tc.steps, seconds, t["step"], t["eval"]))
        disk += sum(n_ckpt * checkpoint_bytes(c) for c in cfgs)
    return estimates, _wall([e.seconds for e in estimates], workers), disk


def _quiet_rng():
    import torch

    return torch.random.fork_rng(devices=[])


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def describe(name: str, scale: str, out: Path, workers: int | None = None) -> str:
    """The dry run's text for reproduction ``name`` at ``scale``: runs, configs, time and disk."""
    import torch

    from icl_circuits.registry import reproductions
    from icl_circuits.reproduce.common import check_scale
    from icl_circuits.sweeps.backends import default_workers
    from icl_circuits.sweeps.spec import build_points

    known = reproductions()
    if name not in known:
        raise ConfigError(f"reproduce: expected one of {', '.join(sorted(known))}, got {name!r}")
    module = known[name].load()
    if not hasattr(module, "plan"):
        raise ConfigError(f"reproduce {name}: has no plan() to dry-run")
    plan: Plan = module.plan(check_scale(scale))
    workers = workers or default_workers()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the sweep's workers train
    t0 = time.monotonic()
    lines = [f"dry run: {name} at scale {scale}, into {out}; nothing is written"]
    total, disk = 0.0, 0
    try:
        for i, stage in enumerate(plan.stages, 1):
            for sweep, spec in stage.items():
                points = build_points(spec)
                cfg = points[0].config
                axes = ", ".join(f"{k} {list(v)}" for k, v in spec.grid.items())
                lines.append(
                    f"stage {i}, sweep {sweep}: {len(points)} runs of {spec.base} ({axes}); "
                    f"{cfg.train.steps:,} steps, batch {cfg.train.batch_size}, "
                    f"{cfg.train.n_checkpoints} checkpoints, eval_size {cfg.train.eval_size}"
                )
                lines.append(f"  overrides: {' '.join(spec.overrides) or '(none)'}")
            estimates, wall, stage_disk = estimate_stage(stage, workers)
            total, disk = total + wall, disk + stage_disk
            n_vec = sum(e.runs for e in estimates if e.runs > 1)
            lines.append(
                f"  stage {i}: {sum(e.runs for e in estimates)} runs, all configs valid, in {len(estimates)} jobs "
                f"({n_vec} runs vectorised) on {workers} workers: {duration(wall)}, {_size(stage_disk)}"
            )
            kinds: dict[tuple, list[Estimate]] = {}
            for e in estimates:
                kinds.setdefault((e.runs, e.steps, round(e.step, 6), round(e.eval, 6)), []).append(e)
            for same in kinds.values():
                e = same[0]
                lines.append(
                    f"    {len(same)} job(s) of {e.runs} run(s), {e.steps:,} steps: {e.step * 1e3:.1f} ms per step, "
                    f"{e.eval:.2f} s per evaluation -> {duration(e.seconds)} each"
                )
        for task in plan.tasks:
            with _quiet_rng():
                seconds = task.probe()
            total, disk = total + seconds, disk + task.disk
            lines.append(f"task: {task.name}: {duration(seconds)}")
    finally:
        torch.set_num_threads(threads)
    lines += [f"note: {n}" for n in plan.notes]
    load = _load()
    lines.append(
        f"estimated wall time: {duration(total)} on {workers} workers; disk: {_size(disk)} "
        f"(timed here in {time.monotonic() - t0:.0f} s, one thread per worker{load})"
    )
    return "\n".join(lines)


def _load() -> str:
    import os

    try:
        return f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except OSError:
        return ""
