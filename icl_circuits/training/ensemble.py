"""Vectorised seeds: train S independent models of one config in one process.

The S models' parameters are stacked along a new leading dimension
(``torch.func.stack_module_state``) and one ``torch.func.vmap`` of ``functional_call`` runs
all of them on ``[S, batch, ...]`` inputs, each seed's batch drawn from its own data source
(its own world). The per-seed losses are summed and backpropagated once: seeds share no
parameters, so each seed's gradient is exactly its own loss's gradient. Adam, AdamW and SGD
are elementwise, so one optimiser over the stacked tensors equals S separate ones; gradient
clipping is done per seed here because ``clip_grad_norm_`` would take one global norm.

Every seed keeps an ordinary run folder: its checkpoints hold its own unstacked weights and
its slice of the optimiser state in the single-model format, so ``train()`` resumes any seed
alone, and every reader and probe works on it unchanged.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.errors import RunFolderError
from icl_circuits.models.build import build_native, query_logits
from icl_circuits.runs import layout
from icl_circuits.runs.read import model_shape
from icl_circuits.runs.store import (
    latest_good_checkpoint,
    list_checkpoints,
    load_checkpoint,
    run_lock,
    unflatten_optimizer,
)
from icl_circuits.training.evaluate import eval_sets
from icl_circuits.training.optim import build_optimizer, l2_penalty, split_params
from icl_circuits.training.schedule import checkpoint_steps, lr_at
from icl_circuits.training.trainer import _checkpoint, _prepare_folder, resolve_device


def train_ensemble(
    cfg: RunConfig,
    seeds: list[int],
    runs: list[Path | str],
    progress: bool = True,
    stop_after: int | None = None,
) -> list[Path]:
    """Train ``cfg`` once per seed, all seeds batched in one process, into one folder each.

    Each folder ends as ``train(cfg.replace(seed=seed), run)`` would leave it, up to
    floating-point differences from the batched kernels (about 1e-7 on the weights after
    20 Adam steps). Parameters whose gradient is analytically zero (attention key biases)
    are the exception: Adam normalises their rounding noise into updates of either sign,
    alone or batched, so they drift apart by up to ``lr`` per step without changing the
    function. ``train.compile`` compiles the vmapped loss.

    Args:
        cfg: the run config; its ``seed`` is replaced by each of ``seeds``.
        seeds: distinct seeds, one model each.
        runs: one run folder per seed (created if missing).
        progress: show a tqdm bar with the mean live loss.
        stop_after: stop once this step is checkpointed (as in ``train``).

    Returns:
        The run folders, in the order of ``seeds``.

    Raises:
        RunFolderError: on mismatched arguments, on a folder holding another config, or when
            the folders' latest good checkpoints differ (resume each with ``train()`` then).
    """
    runs = [Path(r) for r in runs]
    if not seeds or len(seeds) != len(runs):
        raise RunFolderError(
            f"train_ensemble: expected one run folder per seed, got {len(seeds)} seeds, {len(runs)} runs"
        )
    if len(set(seeds)) != len(seeds) or len({r.resolve() for r in runs}) != len(runs):
        raise RunFolderError("train_ensemble: seeds and run folders must be distinct")
    device = resolve_device(cfg.train.device)
    tc = cfg.train
    cfgs = [cfg.replace(seed=int(s)) for s in seeds]
    sources = [build_source(c.data, c.seed, device) for c in cfgs]
    models = [
        build_native(c.model, seed=c.seed, **model_shape(c, src)).to(device)
        for c, src in zip(cfgs, sources, strict=True)
    ]
    n_labels = sources[0].n_labels
    # The single-model optimiser gives the class, hyper-parameters and the decay groups
    # (decided on per-seed shapes: "matrices" tests ndim, which stacking would change).
    single_opt = build_optimizer(models[0], tc)
    names = {id(p): n for n, p in models[0].named_parameters()}
    order = [names[id(p)] for g in single_opt.param_groups for p in g["params"]]
    decayed_names = [names[id(p)] for p in split_params(models[0], tc.decay_on)[0]]
    schedule = checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every)
    for c, run in zip(cfgs, runs, strict=True):
        _prepare_folder(c, run, device)

    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(run_lock(run))
        start = _common_start(runs)
        evals = [eval_sets(src, tc.eval_size) for src in sources]
        if start is None:
            for run, src, model, ev in zip(runs, sources, models, evals, strict=True):
                with torch.no_grad():
                    b0 = src.train_batch(0, tc.batch_size)
                    loss0 = F.cross_entropy(query_logits(model, b0.tokens()), b0.target).item()
                _checkpoint(run, 0, model, single_opt.state_dict(), ev, n_labels, loss0, device)
            start = 0
            ckpts = None
        else:
            ckpts = [load_checkpoint(run, start) for run in runs]
            for model, ckpt in zip(models, ckpts, strict=True):
                model.load_state_dict(ckpt["model"])
            torch.set_rng_state(ckpts[0]["rng"]["cpu"])

        params, buffers = stack_module_state(models)
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [params[names[id(p)]] for p in g["params"]]}
            for g in single_opt.param_groups
        ]
        # Each group already carries every hyper-parameter, so no constructor defaults apply.
        optimizer = type(single_opt)(groups)
        shapes = [models[0].get_parameter(n).shape for n in order]
        if ckpts is not None:
            per_seed = [unflatten_optimizer(c["optim"], c["state"]["optim"]) for c in ckpts]
            optimizer.load_state_dict(_stack_optim_states(per_seed, shapes))
        decayed = [params[n] for n in decayed_names]
        trainable = [params[n] for n in order]

        base = _QueryLogits(copy.deepcopy(models[0]))
        # The wrapper's names are the model's with a "model." prefix; same tensors, so the
        # gradients land on the stacked parameters.
        wrapped = ({f"model.{k}": v for k, v in params.items()}, {f"model.{k}": v for k, v in buffers.items()})

        def seed_loss(p: dict, b: dict, tokens: Tensor, target: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(base, (p, b), (tokens,)), target)

        losses_of = vmap(seed_loss)
        if tc.compile:
            losses_of = torch.compile(losses_of)
        marks = [s for s in schedule if s > start]
        bar = tqdm(total=tc.steps, initial=start, disable=not progress, desc=f"{cfg.name} x{len(seeds)}", unit="step")
        loss_sum = torch.zeros(len(seeds), device=device)
        n_since = 0
        try:
            for step in range(start, tc.steps):
                lr = lr_at(tc, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batches = [src.train_batch(step, tc.batch_size) for src in sources]
                tokens = torch.stack([b.tokens() for b in batches])
                target = torch.stack([b.target for b in batches])
                losses = losses_of(*wrapped, tokens, target)
                total = losses.sum()
                if tc.l2 > 0 and decayed:
                    # The sum over stacked tensors is the sum of the per-seed penalties.
                    total = total + tc.l2 * l2_penalty(decayed)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if tc.grad_clip > 0:
                    _clip_per_seed(trainable, tc.grad_clip)
                optimizer.step()
                loss_sum += losses.detach()
                n_since += 1
                done = step + 1
                bar.update(1)
                if marks and done == marks[0]:
                    marks.pop(0)
                    train_losses = (loss_sum / n_since).tolist()
                    full = optimizer.state_dict()
                    for s, (run, model, ev) in enumerate(zip(runs, models, evals, strict=True)):
                        _load_slice(model, params, s)
                        state = _optim_slice(full, s, shapes)
                        _checkpoint(run, done, model, state, ev, n_labels, train_losses[s], device)
                    loss_sum.zero_()
                    n_since = 0
                    bar.set_postfix({"loss": f"{sum(train_losses) / len(train_losses):.3f}"}, refresh=False)
                    if stop_after is not None and done >= stop_after:
                        break
        finally:
            bar.close()
    return runs


class _QueryLogits(torch.nn.Module):
    """:func:`query_logits` of ``model`` as a module, so ``functional_call`` can swap its weights.

    The ensemble thereby runs exactly the forward ``train()`` runs (including any query-only
    fast path of the model).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return query_logits(self.model, tokens)


def _common_start(runs: list[Path]) -> int | None:
    """The latest good checkpoint every folder shares, or None for fresh folders."""
    starts = []
    for run in runs:
        start = latest_good_checkpoint(run)
        bad = [s for s in list_checkpoints(run) if start is None or s > start]
        if bad:
            raise RunFolderError(
                f"{layout.checkpoint_dir(run, bad[0])}: corrupt checkpoint after the last good one "
                f"(step {start}); move it aside to resume from step {start}"
            )
        starts.append(start)
    if len(set(starts)) > 1:
        found = ", ".join(f"{run}: {s}" for run, s in zip(runs, starts, strict=True))
        raise RunFolderError(
            f"train_ensemble: the run folders stop at different checkpoints ({found}); resume each with train() instead"
        )
    return starts[0]


def _clip_per_seed(params: list[Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` for each seed separately: norms over all but the seed dimension."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    # Same arithmetic as clip_grad_norm_: a norm per tensor, then the norm of those norms.
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, 2, dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))


@torch.no_grad()
def _load_slice(model: torch.nn.Module, params: dict[str, Tensor], s: int) -> None:
    """Copy seed ``s``'s slice of the stacked parameters into its own model."""
    for name, p in model.named_parameters():
        p.copy_(params[name][s])


def _optim_slice(full: dict[str, Any], s: int, shapes: list[torch.Size]) -> dict[str, Any]:
    """Seed ``s``'s part of the stacked optimiser's ``state_dict()``, in single-model form.

    Tensors shaped like a stacked parameter (moments, momentum buffers) are sliced; shared
    ones (Adam's scalar ``step``) and non-tensors are the same for every seed.
    """
    state = {}
    for idx, per_param in full["state"].items():
        shape = shapes[idx]
        state[idx] = {
            k: v[s].clone() if isinstance(v, Tensor) and v.shape[1:] == shape and v.ndim == len(shape) + 1 else v
            for k, v in per_param.items()
        }
    return {"state": state, "param_groups": full["param_groups"]}


def _stack_optim_states(per_seed: list[dict[str, Any]], shapes: list[torch.Size]) -> dict[str, Any]:
    """Inverse of :func:`_optim_slice`: stack single-model optimiser states of every seed."""
    first = per_seed[0]
    state = {}
    for idx, per_param in first["state"].items():
        state[idx] = {}
        for k, v in per_param.items():
            if isinstance(v, Tensor) and v.shape == shapes[idx] and v.ndim > 0:
                state[idx][k] = torch.stack([sd["state"][idx][k] for sd in per_seed])
            else:
                state[idx][k] = v
    return {"state": state, "param_groups": first["param_groups"]}
