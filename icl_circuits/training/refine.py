"""Denser checkpoints inside a finished run, by exact replay (``icl-circuits refine``).

A run trained with one torch thread is bitwise reproducible from any checkpoint: its
weights, optimiser state and RNG are saved, and a training batch is a pure function of
(seed, step). :func:`refine` resumes from the checkpoint at or before ``start``, trains
again up to ``end`` and saves checkpoints at ``n`` new steps spread evenly over the steps of
``(start, end]`` that have none (:func:`new_steps`), with their metrics
appended to ``metrics.jsonl`` as training would have written them. Existing checkpoints are
never touched; at every original checkpoint it passes, the replayed weights are compared
with the saved ones bitwise, and any difference stops the replay with an error (for example
a run trained as a vectorised ensemble, whose floating-point order differs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from icl_circuits.data import build_source
from icl_circuits.errors import ICLError, RunFolderError
from icl_circuits.metrics import eval_sets
from icl_circuits.models.build import build_native
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, model_shape
from icl_circuits.runs.store import list_checkpoints, load_checkpoint, run_end, run_lock, unflatten_optimizer
from icl_circuits.training.runfolder import checkpoint, resolve_device, torch_threads
from icl_circuits.training.schedule import lr_at
from icl_circuits.training.trainer import Member, SingleModel


def new_steps(existing: list[int], start: int, end: int, n: int) -> list[int]:
    """``n`` steps spread evenly over the steps of ``(start, end]`` that have no checkpoint (fewer if fewer are free)."""
    have = set(existing)
    free = [s for s in range(start + 1, end + 1) if s not in have]
    if n >= len(free):
        return free
    if n == 1:
        return [free[len(free) // 2]]
    return [free[i] for i in np.unique(np.round(np.linspace(0, len(free) - 1, n)).astype(int))]


def plan(run: Path, start: int, end: int, n: int) -> tuple[int, list[int]]:
    """``(resume step, new checkpoint steps)``, or one line naming what is wrong."""
    cfg = load_config(run)
    tc = cfg.train
    if tc.threads != 1:
        raise ICLError(
            f"refine: {run} was trained with train.threads={tc.threads}; only a 1-thread run replays "
            "bitwise, so it is not refined"
        )
    if resolve_device(tc.device).type != "cpu":
        raise ICLError(f"refine: {run} was trained on {tc.device}; only a CPU run replays bitwise")
    steps = list_checkpoints(run)
    last = run_end(run, tc.steps)
    if last is None:
        have = steps[-1] if steps else "none"
        raise ICLError(
            f"refine: {run} is unfinished (last checkpoint {have} of {tc.steps} steps); finish training first"
        )
    if n < 1:
        raise ICLError(f"--checkpoints: expected at least 1, got {n}")
    if not 0 <= start < end <= last:
        raise ICLError(f"--between: expected 0 <= A < B <= {last} (the run's last step), got {start} {end}")
    resume = max(s for s in steps if s <= start)
    todo = new_steps(steps, start, end, n)
    if not todo:
        raise ICLError(f"--between {start} {end}: every step there already has a checkpoint")
    return resume, todo


def refine(run: Path | str, start: int, end: int, n: int, progress: bool = True) -> list[int]:
    """Add up to ``n`` checkpoints in ``(start, end]`` to the finished run ``run`` by exact replay.

    Returns:
        The new checkpoints' steps.

    Raises:
        ICLError: bad steps, an unfinished run, a run not trained with one thread on the CPU,
            or a replay that does not reproduce the run's own checkpoints bitwise.
    """
    run = Path(run)
    if not (run / layout.CONFIG).exists():
        raise RunFolderError(f"{run}: not a run folder (no {layout.CONFIG})")
    resume, todo = plan(run, start, end, n)
    cfg = load_config(run)
    tc = cfg.train
    device = torch.device("cpu")
    originals = [s for s in list_checkpoints(run) if resume < s <= max(todo)]
    with torch_threads(1), run_lock(run):
        source = build_source(cfg.data, cfg.seed, device)
        model = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg, source)).to(device)
        backend = SingleModel([Member(cfg, run, source, model)])
        ckpt = load_checkpoint(run, resume)
        model.load_state_dict(ckpt["model"])
        backend.restore([unflatten_optimizer(ckpt["optim"], ckpt["state"]["optim"])])
        torch.set_rng_state(ckpt["rng"]["cpu"])
        backend.start()
        evals = eval_sets(source, tc.eval_size)
        loss_sum, n_since, pending = 0.0, 0, list(todo)
        for step in tqdm(range(resume, max(todo)), disable=not progress, desc=f"refine {cfg.name}", unit="step"):
            batch = source.train_batch(step, tc.batch_size)
            loss_sum += float(backend.step(lr_at(tc, step), backend.prepare([batch]), step)[0])
            n_since += 1
            done = step + 1
            if originals and done == originals[0]:
                originals.pop(0)
                saved = load_checkpoint(run, done)["model"]
                if any(not torch.equal(v, saved[k]) for k, v in model.state_dict().items()):
                    raise ICLError(
                        f"refine: the replay of {run} differs from its checkpoint at step {done}; "
                        f"the {len(todo) - len(pending)} checkpoint(s) added before it stay"
                    )
                loss_sum, n_since = 0.0, 0
            if pending and done == pending[0]:
                pending.pop(0)
                checkpoint(run, done, model, backend.states()[0], evals, source.n_labels, loss_sum / n_since, device)
                loss_sum, n_since = 0.0, 0
    return todo
