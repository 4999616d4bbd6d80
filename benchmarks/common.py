"""Shared benchmark helpers: scales, timers, configs, bare loops, the Goal record."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from icl_circuits.config import RunConfig, apply_overrides
from icl_circuits.presets import chan2024_stylized, demo
from icl_circuits.training import train
from icl_circuits.training.ensemble import train_ensemble

OUT = Path(__file__).with_name("RESULTS.md")


DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRESETS = {"demo": demo, "chan2024-stylized": chan2024_stylized}


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much to measure: the full run or the ``--quick`` smoke run."""

    rounds: int  # interleaved repetitions of each step-rate timing (median reported)
    steps: dict[str, int]  # timed steps per preset
    compile: bool
    ens_seeds: int
    ens_steps: int
    analysis_ckpts: tuple[int, ...]  # checkpoint counts analysed; the last is the run's total
    analysis_train_steps: int
    heads: tuple[int, ...]
    nr_steps: int
    memory_nr: bool  # also measure a nguyen-reddy2024 training run's memory


FULL = Scale(3, {"demo": 150, "chan2024-stylized": 500}, True, 16, 10, (5, 20, 100), 1000, (1, 2, 4, 8), 3, True)


QUICK = Scale(1, {"demo": 8, "chan2024-stylized": 20}, False, 4, 3, (2, 3), 20, (1, 2), 1, False)


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def clock(fn) -> float:
    """Wall seconds of ``fn()``, device work included."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    gpu = f", GPU {torch.cuda.get_device_name()}" if DEV.type == "cuda" else ", no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads; device {DEV}"
    )


def load() -> str:
    with contextlib.suppress(OSError):
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "n/a"


def fresh(root: Path, name: str) -> Path:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def bench_cfg(cfg: RunConfig, steps: int, *extra: str) -> RunConfig:
    """``cfg`` for timing the step: first and last checkpoint only, tiny evaluations."""
    return apply_overrides(
        cfg, [f"train.steps={steps}", "train.n_checkpoints=2", "train.eval_size=8", f"train.device={DEV}", *extra]
    )


@contextlib.contextmanager
def loop_timer():
    """Time the training loop between its first and last checkpoint, fixed costs excluded.

    Wraps ``checkpoint`` as the one training loop (``trainer``, every backend) calls it, and
    every backend's ``evaluate`` (called just before the checkpoints it feeds), to record when
    each call starts and ends; yields a list that receives the loop's seconds on exit.
    """
    from icl_circuits.training import ensemble, trainer

    calls: list[tuple[int, float, float]] = []
    evals: list[tuple[float, float]] = []
    original = trainer.checkpoint
    backends = [trainer.SingleModel, ensemble.VmapEnsemble]
    evaluates = [b.evaluate for b in backends]

    def timed(run, step, *args, **kwargs):
        sync()
        t0 = time.perf_counter()
        out = original(run, step, *args, **kwargs)
        calls.append((step, t0, time.perf_counter()))
        return out

    def timed_evaluate(fn):
        def evaluate(self, *args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = fn(self, *args, **kwargs)
            evals.append((t0, time.perf_counter()))
            return out

        return evaluate

    result: list[float] = []
    trainer.checkpoint = timed
    for backend, fn in zip(backends, evaluates, strict=True):
        backend.evaluate = timed_evaluate(fn)
    try:
        yield result
    finally:
        trainer.checkpoint = original
        for backend, fn in zip(backends, evaluates, strict=True):
            backend.evaluate = fn
    first, last = min(c[0] for c in calls), max(c[0] for c in calls)
    start, end = max(c[2] for c in calls if c[0] == first), min(c[1] for c in calls if c[0] == last)
    # The schedule may checkpoint in between (step 1 is log-spaced in): take those out too, and
    # every evaluation in the window (the one before the last checkpoint included).
    inside = sum(t1 - t0 for step, t0, t1 in calls if first < step < last)
    inside += sum(t1 - t0 for t0, t1 in evals if start <= t0 and t1 <= end)
    result.append(end - start - inside)


def train_step_time(cfg: RunConfig, steps: int, root: Path, *extra: str) -> float:
    """Seconds per step of ``train()``'s loop (between its first and last checkpoint)."""
    with loop_timer() as loop:
        train(bench_cfg(cfg, steps, *extra), fresh(root, "run"), progress=False)
    return loop[0] / steps


def steady_step(cfg: RunConfig, seeds: list[int], steps: int, skip: int, root: Path) -> float:
    """Median seconds between two training steps after the first ``skip`` (all seeds): ``train()``
    for one seed, ``train_ensemble`` for several. The steady state, as a long run spends its time:
    the first steps (allocator, a compiled graph's first call) and the two checkpoints left out,
    and a median, which one preempted step does not move."""
    from icl_circuits.training import ensemble, trainer

    backend = trainer.SingleModel if len(seeds) == 1 else ensemble.VmapEnsemble
    starts: list[float] = []
    original = backend.step

    def timed(self, *args, **kwargs):
        starts.append(time.perf_counter())
        return original(self, *args, **kwargs)

    backend.step = timed
    try:
        run_cfg = bench_cfg(cfg, steps)
        if len(seeds) == 1:
            train(run_cfg.replace(seed=seeds[0]), fresh(root, "run"), progress=False)
        else:
            train_ensemble(run_cfg, seeds, [fresh(root, f"seed-{s}") for s in seeds], progress=False)
    finally:
        backend.step = original
    gaps = [b - a for a, b in zip(starts[skip:], starts[skip + 1 :], strict=False)]
    return statistics.median(gaps)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
    tc = cfg.train
    params = [p for p in params if p.requires_grad]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)


def bare_loop(loss_fn, params, cfg: RunConfig, inputs: list, warmup: int = 2) -> float:
    """Seconds per step of the plainest loop: ``loss_fn(*inputs[i])``, backward, optimiser step."""
    opt = _optimizer(params, cfg)

    def step(args) -> None:
        loss = loss_fn(*args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for args in inputs[:warmup]:
        step(args)
    return clock(lambda: [step(args) for args in inputs]) / len(inputs)


@dataclasses.dataclass
class Goal:
    name: str
    measured: str
    met: bool | None  # None: reported, no goal
    why: str = ""  # measured reason and next lever when missed
