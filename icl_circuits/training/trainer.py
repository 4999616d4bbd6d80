"""The training loop: frequent checkpoints, evaluations at each, exact resume.

A run is a pure function of its config: the training batch of step ``t`` depends only on
``(seed, t)``, the optimiser state is checkpointed, and the learning rate is a function of
the step. Re-running ``train`` on a stopped run therefore continues from its latest good
checkpoint and ends with the same metrics and weights as an uninterrupted run.

There is one loop, :func:`train_loop`, over one or more *members* (a config, its run
folder, data source and model); :func:`icl_circuits.training.train` is the public entry
that runs it. How a step's loss is computed and the optimiser stepped is its
:class:`Backend`: :class:`SingleModel` here (one run), or the vectorised seeds of
:class:`icl_circuits.training.ensemble.VmapEnsemble`. Everything else
(folder preparation, resume, evaluation, checkpoints, divergence checks, progress,
experiment tracking, threads) is the loop's, through :mod:`icl_circuits.training.runfolder`.

Data off the critical path: the inputs of the next steps (every member's batch, laid out by
the backend's ``prepare``) are made ahead, in bursts of up to 32 steps on the loop's thread
(a batch costs several times less in a run of batches than alone between two steps), or in
one background thread while step ``t`` computes when a batch costs over 5% of a step even in
bursts (:class:`Prefetch`). Batches are a pure function of ``(seed, step)`` and each has its
own generator, so a run is bitwise the same whichever way its batches are made (tested).

Early stop (``train.stop_above``, off by default): a member ends at the first checkpoint after
step 0 whose ICL (or IWL) accuracy exceeds the threshold; the check happens only at
checkpoints. That checkpoint's ``state.json`` records ``stopped``, so resuming the run does
nothing, and :func:`icl_circuits.runs.store.run_end` gives its last step. In an ensemble the
other members go on (the stopped one is still computed, but its folder is no longer written)
and a later resume trains only the members not yet over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.data.batch import Batch
from icl_circuits.data.source import DataSource
from icl_circuits.errors import ConfigError
from icl_circuits.limits import check_memory
from icl_circuits.metrics import eval_sets, evaluate
from icl_circuits.models.build import build_native, query_logits
from icl_circuits.runs.read import model_shape
from icl_circuits.runs.store import load_checkpoint, run_end, run_lock, unflatten_optimizer
from icl_circuits.training.interventions import Interventions
from icl_circuits.training.optim import build_optimizer, l2_penalty, set_lr, split_params
from icl_circuits.training.prefetch import Prefetch
from icl_circuits.training.runfolder import (
    checkpoint,
    diverged,
    headline,
    prepare_folder,
    resolve_device,
    resume_step,
    stop_record,
    stop_rule,
    torch_threads,
)
from icl_circuits.training.schedule import checkpoint_steps, lr_at
from icl_circuits.training.tracking import check_logger, open_logger


@dataclasses.dataclass
class Member:
    """One model the loop trains: its config (seed included), run folder, data and weights."""

    cfg: RunConfig
    run: Path
    source: DataSource
    model: torch.nn.Module


class Backend(Protocol):
    """How the loop's members take a training step (one model, or several vectorised).

    The loop calls, in order: ``fresh_optim_state`` (for each member's step-0 checkpoint)
    or ``restore`` (resuming), then ``start`` once, then ``step`` for each step and
    ``states`` then ``evaluate`` at each checkpoint (``evaluate`` also at step 0, before
    ``start``). ``prepare`` runs in the loop's data thread, one step ahead.
    """

    def fresh_optim_state(self) -> dict:
        """A member's optimiser ``state_dict()`` before the first step."""
        ...

    def restore(self, optim_states: list[dict]) -> None:
        """Load each member's optimiser state (the members' weights are already loaded)."""
        ...

    def start(self) -> None:
        """Prepare the first step (compile, stack parameters, ...)."""
        ...

    def prepare(self, batches: list[Batch]) -> Any:
        """The step's input from the members' batches (batch ``i`` for member ``i``): tokens
        laid out, stacked, ... Called in a background thread: no model or optimiser state."""
        ...

    def step(self, lr: float, inputs: Any, step: int) -> Tensor:
        """Optimiser step ``step`` at learning rate ``lr`` on ``inputs`` (from :meth:`prepare`).

        Returns:
            Each member's training loss of this step (detached), shape ``[n_members]``.
        """
        ...

    def states(self) -> list[dict]:
        """Each member's optimiser ``state_dict()``, after bringing its model up to date."""
        ...

    def evaluate(self, evals: list[dict[str, Batch]], n_labels: int) -> list[list[dict]]:
        """Each member's evaluation rows on its own sets ``evals[i]``, exactly as
        :func:`icl_circuits.metrics.evaluate` makes them for that member's model alone."""
        ...


class SingleModel:
    """One model, one optimiser: the backend of :func:`train`."""

    def __init__(self, members: Sequence[Member]) -> None:
        if len(members) != 1:
            raise ValueError("SingleModel trains exactly one member")
        self.model = members[0].model
        self.tc = members[0].cfg.train
        self.optimizer = build_optimizer(self.model, self.tc)
        self.decayed, _ = split_params(self.model, self.tc.decay_on)
        self.step_model: torch.nn.Module = self.model
        # train.interventions: None (no hook anywhere) when there are none.
        self.interventions = Interventions(self.model, self.tc.interventions) if self.tc.interventions else None
        self.last_step = 0

    def fresh_optim_state(self) -> dict:
        return self.optimizer.state_dict()

    def restore(self, optim_states: list[dict]) -> None:
        self.optimizer.load_state_dict(optim_states[0])

    def start(self) -> None:
        self.step_model = torch.compile(self.model) if self.tc.compile else self.model
        self.model.train()

    def prepare(self, batches: list[Batch]) -> tuple:
        (batch,) = batches
        return (batch.tokens(), batch.target) if self.interventions is None else (batch.tokens(), batch.target, batch)

    def step(self, lr: float, inputs: tuple, step: int) -> Tensor:
        tc, (tokens, target), iv = self.tc, inputs[:2], self.interventions
        set_lr(self.optimizer, lr)
        logits = (
            query_logits(self.step_model, tokens) if iv is None else iv.logits(self.step_model, tokens, inputs[2], step)
        )
        loss = F.cross_entropy(logits, target)
        total = loss + tc.l2 * l2_penalty(self.decayed) if tc.l2 > 0 and self.decayed else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        with contextlib.nullcontext() if iv is None else iv.frozen(step):
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.optimizer.step()
        self.last_step = step
        return loss.detach().reshape(1)

    def states(self) -> list[dict]:
        return [self.optimizer.state_dict()]

    def evaluate(self, evals: list[dict[str, Batch]], n_labels: int) -> list[list[dict]]:
        if self.interventions is not None:  # as the model was trained at its last step
            return [self.interventions.evaluate(evals[0], n_labels, self.last_step)]
        return [evaluate(self.model, evals[0], n_labels)]


def train_loop(
    cfgs: Sequence[RunConfig],
    runs: Sequence[Path | str],
    backend: Callable[[Sequence[Member]], Backend],
    *,
    progress: bool = True,
    stop_after: int | None = None,
    prefetch: bool | None = None,
) -> list[Path]:
    """The one training loop: train each config into its run folder with ``backend``; resumes.

    The public entry is :func:`icl_circuits.training.train` (one run, seed replicates, a group);
    this is what it runs. Every folder ends as if its config were trained alone by
    :class:`SingleModel`, up to the backend's floating-point differences. Runs with
    ``cfg.train.threads`` torch threads (1 by default: bitwise reproducible).

    Args:
        cfgs: one config per member; several share ``model``, ``train`` and the data's shape
            (seeds and data settings such as ``data.n_train`` may differ: each member draws from
            its own source). ConfigError otherwise.
        runs: one run folder per member (created if missing).
        backend: builds the backend from the members (their models freshly initialised):
            :class:`SingleModel` for one, :class:`~icl_circuits.training.ensemble.VmapEnsemble`.
        progress: a tqdm bar (mean live loss and ICL/IWL accuracy over the members).
        stop_after: stop (cleanly, as a crash would) once this step is checkpointed; for tests
            and for splitting a run across jobs.
        prefetch: make the next step's batches in a background thread: None (default) when they
            cost over 5% of a step (:class:`Prefetch`), True always, False never (bursts on the
            loop's thread); same result, bitwise.

    Returns:
        The run folders.

    Raises:
        DivergedError: the loss became NaN or infinite; checkpoints before it are kept.
    """
    cfgs, runs = list(cfgs), [Path(r) for r in runs]
    cfg = cfgs[0]
    for c in cfgs[1:]:
        if c.model != cfg.model or c.train != cfg.train or c.data.model_shape() != cfg.data.model_shape():
            raise ConfigError(
                "train: vectorised members must share model, train and the data's shape; "
                f"{c.name} (seed {c.seed}) differs from {cfg.name} (seed {cfg.seed})"
            )
    with torch_threads(cfg.train.threads):
        return _train_members(cfgs, runs, backend, progress, stop_after, prefetch)


def train(
    cfg: RunConfig,
    run: Path | str,
    progress: bool = True,
    stop_after: int | None = None,
    prefetch: bool | None = None,
) -> Path:
    """One run with :class:`SingleModel` (:func:`train_loop`); returns the run folder.

    :func:`icl_circuits.training.train` does the same and returns a
    :class:`~icl_circuits.runs.handle.Run`.
    """
    return train_loop([cfg], [run], SingleModel, progress=progress, stop_after=stop_after, prefetch=prefetch)[0]


def train_members(
    cfg: RunConfig,
    seeds: Sequence[int],
    runs: Sequence[Path],
    backend: Callable[[Sequence[Member]], Backend],
    progress: bool = True,
    stop_after: int | None = None,
    prefetch: bool | None = None,
) -> list[Path]:
    """:func:`train_loop` on ``cfg`` once per seed (its ``seed`` replaced), one folder each."""
    cfgs = [cfg.replace(seed=int(s)) for s in seeds]
    return train_loop(cfgs, runs, backend, progress=progress, stop_after=stop_after, prefetch=prefetch)


def train_configs(
    cfgs: Sequence[RunConfig],
    runs: Sequence[Path],
    backend: Callable[[Sequence[Member]], Backend],
    progress: bool = True,
    stop_after: int | None = None,
    prefetch: bool | None = None,
) -> list[Path]:
    """:func:`train_loop` with its options given by position."""
    return train_loop(cfgs, runs, backend, progress=progress, stop_after=stop_after, prefetch=prefetch)


def _train_members(cfgs, runs, make_backend, progress, stop_after, prefetch) -> list[Path]:
    cfg = cfgs[0]
    tc = cfg.train
    device = resolve_device(tc.device)
    # Everything that can fail on bad input happens before a folder is touched.
    members = []
    for c, run in zip(cfgs, runs, strict=True):
        check_memory(c, device)
        source = build_source(c.data, c.seed, device)
        model = build_native(c.model, seed=c.seed, **model_shape(c, source)).to(device)
        members.append(Member(c, run, source, model))
    backend = make_backend(members)
    schedule = checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every)
    check_logger(cfg)
    for m in members:
        prepare_folder(m.cfg, m.run, device)
    # A run is over at its last step, or at the checkpoint that stopped it early (train.stop_above).
    active = [m for m in members if run_end(m.run, tc.steps) is None]
    if not active:
        return runs  # nothing to train: no lock, no write (a finished run may be read-only)
    if len(active) < len(members):
        members, backend = active, make_backend(active)
    rule = stop_rule(cfg, members[0].source.icl_split, members[0].source.iwl_split)
    stopped = [False] * len(members)

    n_labels = members[0].source.n_labels
    with contextlib.ExitStack() as stack:
        for m in members:
            stack.enter_context(run_lock(m.run))
        start = resume_step([m.run for m in members])
        evals = [eval_sets(m.source, tc.eval_size) for m in members]
        fresh = start is None
        if start is None:
            rows = []
            evaluated = backend.evaluate(evals, n_labels)
            for m, ev, ev_rows in zip(members, evals, evaluated, strict=True):
                with torch.no_grad():
                    b0 = m.source.train_batch(0, tc.batch_size)
                    loss0 = F.cross_entropy(query_logits(m.model, b0.tokens()), b0.target).item()
                optim = backend.fresh_optim_state()
                rows.append(checkpoint(m.run, 0, m.model, optim, ev, n_labels, loss0, device, evaluated=ev_rows))
            start = 0
        else:
            ckpts = [load_checkpoint(m.run, start) for m in members]
            for m, ckpt in zip(members, ckpts, strict=True):
                m.model.load_state_dict(ckpt["model"])
            backend.restore([unflatten_optimizer(c["optim"], c["state"]["optim"]) for c in ckpts])
            torch.set_rng_state(ckpts[0]["rng"]["cpu"])
            rows = [c["state"].get("metrics", []) for c in ckpts]
        backend.start()
        last_metrics = _postfix(rows, members)
        marks = [s for s in schedule if s > start]
        desc = cfg.name if len(members) == 1 else f"{cfg.name} x{len(members)}"
        bar = tqdm(total=tc.steps, initial=start, disable=not progress, desc=desc, unit="step", dynamic_ncols=True)
        stack.callback(bar.close)
        loss_sum = torch.zeros(len(members), device=device)
        n_since = 0
        trackers = [open_logger(m.cfg, m.run) for m in members]
        for tracker in trackers:
            stack.callback(tracker.close)
        if fresh:
            for tracker, r in zip(trackers, rows, strict=True):
                tracker.log(0, r)

        def make_inputs(step: int, backend=backend) -> Any:
            return backend.prepare([m.source.train_batch(step, tc.batch_size) for m in members])

        data = stack.enter_context(Prefetch(make_inputs, start, tc.steps, prefetch))
        for step in range(start, tc.steps):
            lr = lr_at(tc, step)
            losses = backend.step(lr, data.get(step), step)
            loss_sum += losses
            n_since += 1
            done = step + 1
            bar.update(1)
            if marks and done == marks[0]:
                marks.pop(0)
                train_losses = (loss_sum / n_since).tolist()
                _check_finite(train_losses, done, members)
                states = backend.states()
                # Every member's evaluation at once (one stacked forward in an ensemble).
                evaluated = backend.evaluate(evals, n_labels)
                for i, (m, ev, tracker) in enumerate(zip(members, evals, trackers, strict=True)):
                    if stopped[i]:
                        continue  # an ensemble member that stopped early: its folder is final
                    rows[i] = checkpoint(
                        m.run, done, m.model, states[i], ev, n_labels, train_losses[i], device, rule, evaluated[i]
                    )
                    tracker.log(done, rows[i])
                    stopped[i] = stop_record(rows[i], rule) is not None
                last_metrics = _postfix(rows, members)
                loss_sum.zero_()
                n_since = 0
                bar.set_postfix(last_metrics, refresh=False)
                if all(stopped) or (stop_after is not None and done >= stop_after):
                    break
            elif done % 50 == 0:
                values = losses.tolist()
                _check_finite(values, done, members)
                bar.set_postfix({"loss": f"{sum(values) / len(values):.3f}", **last_metrics}, refresh=False)
    return runs


def _check_finite(losses: list[float], step: int, members: Sequence[Member]) -> None:
    for value, m in zip(losses, members, strict=True):
        if not math.isfinite(value):
            raise diverged("the training loss", value, step, m.run)


def _postfix(rows: list[list[dict]], members: Sequence[Member]) -> dict[str, str]:
    """The bar's loss and ICL / IWL accuracy: means over the members."""
    heads = [headline(r, m.source.icl_split, m.source.iwl_split) for r, m in zip(rows, members, strict=True)]
    mean = {k: sum(h[k] for h in heads) / len(heads) for k in heads[0]}
    return {"loss": f"{mean['loss']:.3f}", "ICL": f"{mean['ICL']:.2f}", "IWL": f"{mean['IWL']:.2f}"}
