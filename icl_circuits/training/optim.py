"""Optimisers with per-group weight decay, and the explicit L2 penalty."""

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


def split_params(model: nn.Module, decay_on: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters, in ``named_parameters`` order."""
    dec, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (dec if decays(name, p, decay_on) else rest).append(p)
    return dec, rest


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` with two groups: decayed and not decayed."""
    dec, rest = split_params(model, cfg.decay_on)
    groups = [
        {"params": dec, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def l2_penalty(params: list[nn.Parameter]) -> torch.Tensor:
    """``sum ||W||^2`` over ``params`` (multiply by ``train.l2`` outside)."""
    return torch.stack([p.pow(2).sum() for p in params]).sum()
