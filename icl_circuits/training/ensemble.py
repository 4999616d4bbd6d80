"""Vectorised seeds: train S independent models of one config in one process.

The S models' parameters are stacked along a new leading dimension
(``torch.func.stack_module_state``) and one forward runs all of them on ``[S, batch, ...]``
inputs, each seed's batch drawn from its own data source (its own world): the stacked
training forward (:func:`icl_circuits.models.stacked.stacked_query_logits`: batched matmuls
on the stacked weights, no vmap) where :func:`~icl_circuits.models.stacked.supports_stacked`
covers the architecture, else one ``torch.func.vmap`` of ``functional_call``. The per-seed
losses are summed and backpropagated once: seeds share no parameters, so each seed's
gradient is exactly its own loss's gradient. Adam, AdamW and SGD
are elementwise, so one optimiser over the stacked tensors (torch's fused kernel, within a
float rounding of the single model's foreach one) equals S separate ones; gradient
clipping is done per seed here because ``clip_grad_norm_`` would take one global norm.

Every seed keeps an ordinary run folder: its checkpoints hold its own unstacked weights and
its slice of the optimiser state in the single-model format, so ``train()`` resumes any seed
alone, and every reader and probe works on it unchanged.

:class:`VmapEnsemble` is a backend of the one training loop
(:func:`icl_circuits.training.trainer.train_loop`): folder preparation, resume, evaluation,
checkpoints, ``train.logger`` and ``train.threads`` are the loop's, as for ``train``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from icl_circuits.config import RunConfig
from icl_circuits.data.batch import Batch
from icl_circuits.errors import ConfigError, RunFolderError
from icl_circuits.metrics import evaluate, evaluate_stacked
from icl_circuits.models.build import query_logits
from icl_circuits.models.stacked import seeds_per_chunk, stacked_query_logits, supports_stacked
from icl_circuits.training.optim import build_optimizer, l2_penalty, set_lr, split_params
from icl_circuits.training.trainer import Member, train_loop


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
    function. ``train.compile`` compiles the loss (stacked: one chunk of seeds' loss).

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
    cfgs = [cfg.replace(seed=int(s)) for s in seeds]
    return train_loop(cfgs, runs, VmapEnsemble, progress=progress, stop_after=stop_after)


class VmapEnsemble:
    """The members' parameters stacked, one forward (stacked or vmapped) and backward, one stacked optimiser."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.models = [m.model for m in members]
        self.tc = tc = members[0].cfg.train
        if tc.interventions:
            raise ConfigError(
                "train.interventions: the vectorised seeds do not apply interventions during training; "
                "train each seed alone (train, or --vectorise no)"
            )
        first = self.models[0]
        # The single-model optimiser gives the class, hyper-parameters and the decay groups
        # (decided on per-seed shapes: "matrices" tests ndim, which stacking would change).
        self.single_opt = build_optimizer(first, tc)
        self.names = {id(p): n for n, p in first.named_parameters()}
        self.order = [self.names[id(p)] for g in self.single_opt.param_groups for p in g["params"]]
        self.decayed_names = [self.names[id(p)] for p in split_params(first, tc.decay_on)[0]]
        self.shapes = [first.get_parameter(n).shape for n in self.order]
        self.restored: list[dict] | None = None
        #: One stacked forward for all members (icl_circuits.models.stacked), else vmap.
        self.stacked = supports_stacked(first)
        self.params: dict[str, Tensor] | None = None

    def fresh_optim_state(self) -> dict:
        return self.single_opt.state_dict()

    def restore(self, optim_states: list[dict]) -> None:
        self.restored = optim_states

    def start(self) -> None:
        params, buffers = stack_module_state(self.models)
        groups = [
            {
                **{k: v for k, v in g.items() if k != "params"},
                "params": [params[self.names[id(p)]] for p in g["params"]],
            }
            for g in self.single_opt.param_groups
        ]
        # Each group already carries every hyper-parameter, so no constructor defaults apply.
        # The stacked tensors are updated by the fused kernel (one pass over each tensor): about
        # 5x faster than foreach on 2M stacked parameters (16 chan2024-stylized seeds: 1.3 vs
        # 6.8 ms), within one float rounding of it; the checkpoints keep the single model's flags.
        self.optimizer = _fused(type(self.single_opt), groups)
        if self.restored is not None:
            flags = _flags(self.optimizer)  # a loaded state carries the single model's flags
            self.optimizer.load_state_dict(_stack_optim_states(self.restored, self.shapes))
            _set_flags(self.optimizer.param_groups, flags)
        self.params = params
        self.decayed = [params[n] for n in self.decayed_names]
        self.trainable = [params[n] for n in self.order]

        base, self.vmap_logits = _vmap_forward(self.models[0])
        self.wrapped = _prefixed(params, buffers)
        if self.stacked:
            # The stacked forward reads the template's architecture only, the weights from params.
            template = self.models[0]

            def chunk_losses(p: dict, tokens: Tensor, target: Tensor) -> Tensor:
                logits = stacked_query_logits(template, p, tokens, chunk=tokens.shape[0])  # [S, batch, d_vocab_out]
                flat = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
                return flat.view(target.shape).mean(1)

            # Compiled per chunk of seeds: one graph serves every chunk (a whole-ensemble graph
            # unrolls the chunks: demo S = 16 compiled in 170 s, a chunk's graph in 32 s).
            per_chunk = torch.compile(chunk_losses) if self.tc.compile else chunk_losses

            def stacked_losses(p: dict, tokens: Tensor, target: Tensor) -> Tensor:
                n = seeds_per_chunk(*tokens.shape[:3], template.cfg.d_model)
                if n >= tokens.shape[0]:  # one chunk: no split (its backward would copy every gradient)
                    return per_chunk(p, tokens, target)
                parts = {k: v.split(n) for k, v in p.items()}
                pairs = zip(tokens.split(n), target.split(n), strict=True)
                return torch.cat(
                    [per_chunk({k: v[i] for k, v in parts.items()}, t, y) for i, (t, y) in enumerate(pairs)]
                )

            self.losses_of, self.loss_args = stacked_losses, (params,)
        else:

            def seed_loss(p: dict, b: dict, tokens: Tensor, target: Tensor) -> Tensor:
                return F.cross_entropy(functional_call(base, (p, b), (tokens,)), target)

            self.losses_of = torch.compile(vmap(seed_loss)) if self.tc.compile else vmap(seed_loss)
            self.loss_args = self.wrapped

    def prepare(self, batches: list[Batch]) -> tuple[Tensor, Tensor]:
        return torch.stack([b.tokens() for b in batches]), torch.stack([b.target for b in batches])

    def step(self, lr: float, inputs: tuple[Tensor, Tensor], step: int) -> Tensor:
        tc, (tokens, target) = self.tc, inputs
        set_lr(self.optimizer, lr)
        losses = self.losses_of(*self.loss_args, tokens, target)
        total = losses.sum()
        if tc.l2 > 0 and self.decayed:
            # The penalty is each model's own (whatever its form), summed over the seeds.
            penalty = sum(l2_penalty([p[s] for p in self.decayed]) for s in range(len(self.models)))
            total = total + tc.l2 * penalty
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if tc.grad_clip > 0:
            _clip_per_seed(self.trainable, tc.grad_clip)
        self.optimizer.step()
        return losses.detach()

    @torch.no_grad()
    def logits(self, tokens: Tensor) -> Tensor:
        """Every member's query logits ``[S, batch, d_vocab_out]`` on its own ``tokens[s]``
        (``tokens`` ``[S, batch, pos, d_in + 1]``), from the current weights, without gradients.

        Before :meth:`start` the members' own models hold the weights; after it, the stacked
        parameters do (the models catch up only at :meth:`states`).
        """
        if self.params is None:
            params, buffers = stack_module_state(self.models)
            if not self.stacked:
                return _vmap_forward(self.models[0])[1](*_prefixed(params, buffers), tokens)
        else:
            params = self.params
            if not self.stacked:
                return self.vmap_logits(*self.wrapped, tokens)
        return stacked_query_logits(self.models[0], params, tokens)

    #: Evaluate the members in one stacked forward per split (True), each alone (False), or
    #: stacked off the CPU only (None). Reason: on the CPU the evaluation is compute-bound
    #: (batches of 512) and stacking lost (``benchmarks/RESULTS.md``, "Evaluating vectorised
    #: members on the CPU").
    STACKED_EVAL: bool | None = None

    def evaluate(self, evals: list[dict[str, Batch]], n_labels: int) -> list[list[dict]]:
        stacked = self.STACKED_EVAL
        if stacked is None:
            stacked = next(self.models[0].parameters()).device.type != "cpu"
        # Before start() (the step-0 checkpoint) the members' own models: each alone.
        if not stacked or self.params is None:
            return [evaluate(m, ev, n_labels) for m, ev in zip(self.models, evals, strict=True)]
        return evaluate_stacked(self.logits, evals, n_labels)

    def states(self) -> list[dict]:
        full = self.optimizer.state_dict()
        # Saved in the single model's form: its kernel flags, so that train() resumes a seed as it runs.
        _set_flags(full["param_groups"], _flags(self.single_opt))
        out = []
        for s, model in enumerate(self.models):
            _load_slice(model, self.params, s)
            out.append(_optim_slice(full, s, self.shapes))
        return out


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


def _vmap_forward(model: torch.nn.Module) -> tuple[_QueryLogits, Any]:
    """A copy of ``model`` as :class:`_QueryLogits` and its vmapped forward
    ``(params, buffers, tokens [S, ...]) -> [S, batch, d_vocab_out]`` (names from :func:`_prefixed`)."""
    base = _QueryLogits(copy.deepcopy(model))
    # scaled_dot_product_attention has no vmap batching rule on the CPU (a loop over the
    # seeds): the fast path's attention as matmuls instead, which batch.
    base.model.attention_kernel = "math"
    return base, vmap(lambda p, b, tokens: functional_call(base, (p, b), (tokens,)))


def _prefixed(params: dict[str, Tensor], buffers: dict[str, Tensor]) -> tuple[dict, dict]:
    """The stacked tensors under :class:`_QueryLogits`' names (a ``model.`` prefix); the same
    tensors, so gradients land on the stacked parameters."""
    return {f"model.{k}": v for k, v in params.items()}, {f"model.{k}": v for k, v in buffers.items()}


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


_FLAGS = ("foreach", "fused")


def _flags(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's kernel choice (``foreach``, ``fused``), as its first group holds it."""
    group = optimizer.param_groups[0]
    return {k: group[k] for k in _FLAGS if k in group}


def _set_flags(groups: list[dict], flags: dict[str, Any]) -> None:
    for group in groups:
        group.update({k: v for k, v in flags.items() if k in group})


def _fused(cls: type[torch.optim.Optimizer], groups: list[dict]) -> torch.optim.Optimizer:
    """``cls(groups)`` with the fused kernel where torch has one for these tensors, else as given."""
    try:
        optimizer = cls([{**g, "foreach": False, "fused": True} for g in groups])
    except (RuntimeError, ValueError, TypeError):
        return cls(groups)
    return optimizer


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
