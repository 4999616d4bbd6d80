"""What a run would do, without doing it: ``icl-circuits train --dry-run``.

The estimate times a few real optimiser steps and one evaluation of every split on a
throwaway model (nothing is written), then scales: ``steps * step_time + checkpoints *
eval_time``. The first step of each kind is a warm-up and not counted.

How shrinking a run scales the rest: ``train.n_checkpoints`` and ``train.eval_size`` are
kept as given. At most ``steps + 1`` checkpoints are distinct (steps 0..steps), so a run of
10 steps with ``n_checkpoints=50`` checkpoints every step; ``eval_size`` sets the cost of each
checkpoint's evaluation independently of ``steps``. For a quick run lower both, e.g.
``train.steps=300 train.n_checkpoints=10 train.eval_size=256``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.metrics import eval_sets, evaluate
from icl_circuits.models.build import build_native, query_logits
from icl_circuits.runs.read import model_shape
from icl_circuits.training.optim import build_optimizer
from icl_circuits.training.schedule import checkpoint_steps


def _clock(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def estimate_seconds(cfg: RunConfig, n_steps: int = 3) -> dict[str, float]:
    """Timed estimate of a run on this machine (CPU, or ``train.device``).

    Returns:
        ``{"step": s, "eval": s, "total": s}``: seconds per optimiser step, per checkpoint
        evaluation, and for the whole run.
    """
    from icl_circuits.training.runfolder import resolve_device

    tc = cfg.train
    device = resolve_device(tc.device)
    source = build_source(cfg.data, cfg.seed, device)
    model = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg, source)).to(device)
    optimizer = build_optimizer(model, tc)
    batches = [source.train_batch(i, tc.batch_size) for i in range(n_steps + 1)]
    it = iter(range(10**9))

    def step() -> None:
        batch = batches[next(it) % len(batches)]
        loss = F.cross_entropy(query_logits(model, batch.tokens()), batch.target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_step = _clock(step, n_steps)
    evals = eval_sets(source, tc.eval_size)
    t_eval = _clock(lambda: evaluate(model, evals, source.n_labels), 1)
    n_ckpt = len(checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every))
    return {"step": t_step, "eval": t_eval, "total": tc.steps * t_step + n_ckpt * t_eval}


def estimate_group_seconds(cfgs: list[RunConfig], n_steps: int = 3, eval_members: int = 4) -> dict[str, float]:
    """Timed estimate of configs trained together, as a sweep's vectorised job trains them.

    The loop's own backend takes the steps (:class:`~icl_circuits.training.ensemble.VmapEnsemble`
    for several configs, ``SingleModel`` for one) on throwaway models. On the CPU, where the
    ensemble evaluates its members one after another, the evaluation sets of ``eval_members``
    members are built and evaluated once each (no warm-up: long enough) and scaled to the group.

    Returns:
        ``{"step", "eval", "setup"}``: seconds per step of the whole group, per checkpoint
        evaluation of the whole group, and to build the members' evaluation sets.
    """
    from icl_circuits.training.ensemble import VmapEnsemble
    from icl_circuits.training.runfolder import resolve_device
    from icl_circuits.training.trainer import Member, SingleModel

    tc = cfgs[0].train
    device = resolve_device(tc.device)
    members = []
    for c in cfgs:
        source = build_source(c.data, c.seed, device)
        model = build_native(c.model, seed=c.seed, **model_shape(c, source)).to(device)
        members.append(Member(c, Path(), source, model))
    backend = (VmapEnsemble if len(members) > 1 else SingleModel)(members)
    n_labels = members[0].source.n_labels
    sample = members if device.type != "cpu" else members[:eval_members]
    t0 = time.perf_counter()
    evals = [eval_sets(m.source, tc.eval_size) for m in sample]
    t_setup = (time.perf_counter() - t0) * len(members) / len(sample)
    t0 = time.perf_counter()
    if len(sample) == len(members):
        backend.evaluate(evals, n_labels)
    else:
        for m, ev in zip(sample, evals, strict=True):
            evaluate(m.model, ev, n_labels)
    t_eval = (time.perf_counter() - t0) * len(members) / len(sample)
    backend.start()
    batches = [[m.source.train_batch(i, tc.batch_size) for m in members] for i in range(n_steps + 1)]
    it = iter(range(10**9))

    def one_step() -> None:
        k = next(it)
        backend.step(tc.lr, backend.prepare(batches[k % len(batches)]), k)

    t_step = _clock(one_step, n_steps)
    return {"step": t_step, "eval": t_eval, "setup": t_setup}


def duration(seconds: float) -> str:
    """A wall time for people: seconds under 90 s, minutes under 90 min, else hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_plan(cfg: RunConfig, out: Path, estimate: bool = True) -> str:
    """The dry run's text: resolved config, checkpoint steps, and the estimated time."""
    tc = cfg.train
    steps = checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every)
    shown = ", ".join(map(str, steps)) if len(steps) <= 24 else f"{', '.join(map(str, steps[:12]))}, …, {steps[-1]}"
    lines = ["dry run: nothing is written", f"run folder: {out}", "config:", cfg.to_json()]
    lines.append(f"checkpoints: {len(steps)} at steps {shown}")
    if tc.n_checkpoints > tc.steps + 1:
        lines.append(f"  (n_checkpoints={tc.n_checkpoints} > steps + 1: every step is a checkpoint)")
    if estimate:
        with torch.random.fork_rng(devices=[]):
            est = estimate_seconds(cfg)
        lines.append(
            f"estimated time: {duration(est['total'])} ({est['step'] * 1e3:.1f} ms per step x {tc.steps} steps, "
            f"{est['eval']:.2f} s per evaluation x {len(steps)} checkpoints; timed here on {torch.get_num_threads()} "
            "thread(s))"
        )
    return "\n".join(lines)
