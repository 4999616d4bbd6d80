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
