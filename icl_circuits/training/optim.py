"""Optimisers with per-group weight decay and learning-rate scales, and the explicit L2 penalty."""

from __future__ import annotations

import torch
from torch import nn

from icl_circuits.config import TrainConfig


def decays(name: str, param: nn.Parameter, decay_on: str) -> bool:
    """Whether the parameter ``name`` is in the weight-decay / L2 group of ``decay_on``."""
    is_attn = ".attn." in name
    is_embed = name.startswith(("tok_embed.", "pos."))
    if decay_on == "all":
        return True
    if decay_on == "matrices":
        return param.ndim >= 2
    if decay_on == "attention":
        return is_attn
    if decay_on == "attention+embed":
        return is_attn or is_embed
    raise ValueError(f"train.decay_on: unknown group {decay_on!r}")


#: The modules ``train.lr_scale`` scales, in its order.
LR_GROUPS = ("attention", "mlp", "embed", "unembed")


def lr_group(name: str) -> str | None:
    """Which of :data:`LR_GROUPS` the parameter ``name`` belongs to (None: scale 1, e.g. block norms).

    ``attention``: the attention layers (``.attn.``); ``mlp``: the MLPs (the blocks' and the
    MLP readout's hidden layers, ``.mlp.``); ``embed``: the token embedding stage (exemplar
    encoder, label embedding, input LayerNorm) and positions; ``unembed``: the readout's output
    layer (``head.``, ``unembed.`` outside ``.mlp.``).
    """
    if ".attn." in name:
        return "attention"
    if ".mlp." in name or name.startswith("mlp."):
        return "mlp"
    if name.startswith(("tok_embed.", "pos.")):
        return "embed"
    if name.startswith(("head.", "unembed.")):
        return "unembed"
    return None


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times the group's ``lr_scale`` (1 if absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def split_params(model: nn.Module, decay_on: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters, in ``named_parameters`` order."""
    dec, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (dec if decays(name, p, decay_on) else rest).append(p)
    return dec, rest


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimiser's parameter groups: decayed and not decayed, each split by ``train.lr_scale``.

    With every scale 1 (the default) there are exactly two groups, decayed then not decayed.
    Otherwise each of the two is split by learning-rate scale (groups of equal scale merged,
    in order of first appearance), and every group carries its ``lr_scale``, which the
    optimiser's state (and so a checkpoint) keeps; :func:`set_lr` applies it at each step.
    """
    dec, rest = split_params(model, cfg.decay_on)
    if all(x == 1.0 for x in cfg.lr_scale):
        return [{"params": dec, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    scale = dict(zip(LR_GROUPS, cfg.lr_scale, strict=True))
    names = {id(p): n for n, p in model.named_parameters()}
    groups: list[dict] = []
    for params, wd in ((dec, cfg.weight_decay), (rest, 0.0)):
        by_scale: dict[float, list[nn.Parameter]] = {}
        for p in params:
            group = lr_group(names[id(p)])
            by_scale.setdefault(scale[group] if group else 1.0, []).append(p)
        groups += [{"params": ps, "weight_decay": wd, "lr_scale": s} for s, ps in by_scale.items()]
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` on :func:`param_groups`, each group at ``lr`` times its scale."""
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
    # foreach: one multi-tensor call per update instead of a Python loop over the parameters
    # (torch's default on the CPU); the same arithmetic, bitwise (tests/test_training_loop.py),
    # and a few percent of a small model's step (benchmarks/RESULTS.md).
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=True)


def l2_penalty(params: list[nn.Parameter]) -> torch.Tensor:
    """``sum_p ||p||_2`` over ``params``: each array's Euclidean (Frobenius) norm, summed.

    Not squared and without a 1/2: the penalty of ``aadityasingh/icl-dynamics``
    (``main.py``, ``compute_loss``: ``weight_decay * sum(jnp.linalg.norm(leaf))`` over every
    array of the model, added to the mean query cross-entropy), which Singh et al. 2023 used
    for their L2 runs. Multiply by ``train.l2`` outside. The gradient of a zero array is 0
    (as the reference's ``jnp.where`` guard intends), not NaN.
    """
    return torch.stack([torch.linalg.vector_norm(p) for p in params]).sum()
