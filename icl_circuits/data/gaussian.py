"""Gaussian-mixture classes (Reddy 2023; binary-label variant of Nguyen & Reddy 2024).

Each of K classes has a mean ``mu_k ~ N(0, I/D)``; an exemplar of class k is
``x = (mu_k + eps * eta) / sqrt(1 + eps**2)`` with fresh ``eta ~ N(0, I/D)``. The label of
class k is ``k mod L`` (``label_mode="mod"``) or a balanced random 0/1 table
(``label_mode="binary"``, the ±1 labels of Nguyen & Reddy as ids 0 and 1).

A bursty sequence (probability ``p_B``) holds ``N / B`` classes drawn from Zipf(alpha), each
repeated B times in shuffled order, and the query is one of them. Otherwise every context
class and the query class are i.i.d. Zipf(alpha). ``K = -1`` draws fresh classes for every
sequence (no class is ever seen twice, so nothing can be memorised).

Worked example (K = 1024, L = 32, N = 8, B = 4, bursty). Two classes, 37 and 912, each
appear four times; the query is class 912, so the target is 912 mod 32 = 16::

    x(912) 16  x(37) 5  x(37) 5  x(912) 16  x(912) 16  x(37) 5  x(912) 16  x(37) 5  x(912) -> 16

Evaluation splits:
    ``IC``: novel classes (fresh means, random labels), bursty: only in-context learning helps.
    ``IC2``: trained classes, bursty, every label shifted to ``(label + 1) mod L``
        (flipped when binary): in-weight recall is now wrong, copying is right.
    ``IW``: trained classes i.i.d. Zipf, query class absent from the context: only
        in-weight learning helps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from icl_circuits.configbase import FrozenConfig, require
from icl_circuits.data.batch import Batch
from icl_circuits.data.sampling import (
    resample_excluding,
    sample_categorical,
    shuffle_rows,
    zipf_probs,
)
from icl_circuits.data.source import DataSource


@dataclasses.dataclass(frozen=True)
class GaussianConfig(FrozenConfig):
    """Parameters of the Gaussian-mixture family (names as in Reddy 2023).

    Attributes:
        K: number of classes (task diversity); -1 for fresh classes every sequence.
        L: number of labels (``label_mode="mod"``); must be 2 for ``"binary"``.
        D: exemplar dimension.
        N: context pairs.
        B: burstiness (copies of each class in a bursty context); 0 = never bursty.
        p_B: fraction of bursty training sequences.
        alpha: Zipf exponent of the class distribution.
        eps: within-class noise.
        label_mode: ``"mod"`` (label = k mod L) or ``"binary"`` (balanced 0/1 table).
    """

    family: Literal["gaussian"] = "gaussian"
    K: int = 1024
    L: int = 32
    D: int = 63
    N: int = 8
    B: int = 4
    p_B: float = 1.0
    alpha: float = 0.0
    eps: float = 0.1
    label_mode: Literal["mod", "binary"] = "mod"

    def validate(self) -> None:
        require(self.K == -1 or self.K >= 1, "data.K", "a positive integer or -1 (infinite)", self.K)
        require(self.L >= 2, "data.L", "at least 2 labels", self.L)
        require(self.D >= 1, "data.D", "a positive dimension", self.D)
        require(self.N >= 1, "data.N", "at least 1 context pair", self.N)
        require(self.B >= 0, "data.B", "a non-negative burstiness", self.B)
        if self.B > 0:
            require(self.N % self.B == 0, "data.B", f"a divisor of N={self.N}", self.B)
        require(0.0 <= self.p_B <= 1.0, "data.p_B", "a probability in [0, 1]", self.p_B)
        require(self.alpha >= 0.0, "data.alpha", "a non-negative Zipf exponent", self.alpha)
        require(self.eps >= 0.0, "data.eps", "a non-negative noise level", self.eps)
        if self.label_mode == "binary":
            require(self.L == 2, "data.L", "2 when label_mode is 'binary'", self.L)
            require(self.K == -1 or self.K % 2 == 0, "data.K", "even for a balanced binary table", self.K)

    @property
    def n_pairs(self) -> int:
        return self.N


class GaussianSource(DataSource):
    """Seeded sampler for :class:`GaussianConfig`; see the module docstring."""

    splits = ("IC", "IC2", "IW")
    icl_split = "IC"
    iwl_split = "IW"

    def __init__(self, cfg: GaussianConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.n_labels = cfg.L
        self.d_in = cfg.D
        self.n_pairs = cfg.N
        self.infinite = cfg.K == -1
        gen = self.generator("world", 0)
        if not self.infinite:
            self.means = torch.randn(cfg.K, cfg.D, generator=gen, device=self.device) / math.sqrt(cfg.D)
            self.class_probs = zipf_probs(cfg.K, cfg.alpha, self.device)
            if cfg.label_mode == "binary":
                table = torch.arange(cfg.K, device=self.device) % 2
                self.label_table = table[torch.randperm(cfg.K, generator=gen, device=self.device)]
            else:
                self.label_table = torch.arange(cfg.K, device=self.device) % cfg.L

    # ------------------------------------------------------------------ pieces
    def _exemplars(self, means: Tensor, gen: torch.Generator) -> Tensor:
        eta = torch.randn(means.shape, generator=gen, device=self.device) / math.sqrt(self.cfg.D)
        return (means + self.cfg.eps * eta) / math.sqrt(1.0 + self.cfg.eps**2)

    def _bursty_classes(self, b: int, gen: torch.Generator, B: int | None = None) -> Tensor:
        """``[b, N + 1]`` class indices in ``[0, K)`` of bursty sequences (query last)."""
        B = B or self.cfg.B
        n_cls = self.cfg.N // B
        cls = sample_categorical(self.class_probs, (b, n_cls), gen)
        ctx = shuffle_rows(cls.repeat_interleave(B, dim=1), gen)
        pick = torch.randint(0, n_cls, (b, 1), generator=gen, device=self.device)
        return torch.cat([ctx, torch.gather(cls, 1, pick)], dim=1)

    def _iid_classes(self, b: int, gen: torch.Generator) -> Tensor:
        return sample_categorical(self.class_probs, (b, self.cfg.N + 1), gen)

    def _novel(self, b: int, gen: torch.Generator, bursty: bool) -> Batch:
        """Sequences over classes nobody has seen: fresh means, uniformly random labels."""
        n_cls = self.cfg.N // self.cfg.B if bursty and self.cfg.B > 0 else self.cfg.N + 1
        means = torch.randn(b, n_cls, self.cfg.D, generator=gen, device=self.device) / math.sqrt(self.cfg.D)
        labels = torch.randint(0, self.cfg.L, (b, n_cls), generator=gen, device=self.device)
        if bursty and self.cfg.B > 0:
            slot = shuffle_rows(
                torch.arange(n_cls, device=self.device).repeat_interleave(self.cfg.B).expand(b, -1), gen
            )
            pick = torch.randint(0, n_cls, (b, 1), generator=gen, device=self.device)
            slot = torch.cat([slot, pick], dim=1)
        else:
            slot = torch.arange(n_cls, device=self.device).expand(b, -1)
        x = self._exemplars(torch.gather(means, 1, slot[..., None].expand(-1, -1, self.cfg.D)), gen)
        lab = torch.gather(labels, 1, slot)
        # Offset ids past every trained class so novel classes never compare equal to them.
        base = max(self.cfg.K, 0) + torch.arange(b, device=self.device)[:, None] * n_cls
        return Batch(x, lab[:, :-1].contiguous(), base + slot, lab[:, -1].contiguous())

    def _from_classes(self, cls: Tensor, gen: torch.Generator, label_shift: int = 0) -> Batch:
        x = self._exemplars(self.means[cls], gen)
        lab = self.label_table[cls]
        if label_shift:
            lab = (lab + label_shift) % self.cfg.L
        return Batch(x, lab[:, :-1].contiguous(), cls, lab[:, -1].contiguous())

    # ------------------------------------------------------------------ API
    def train_batch(self, step: int, batch_size: int) -> Batch:
        gen = self.generator("train", step)
        cfg = self.cfg
        if self.infinite:
            bursty = torch.rand(batch_size, generator=gen, device=self.device) < cfg.p_B
            return _select(bursty, self._novel(batch_size, gen, True), self._novel(batch_size, gen, False))
        iid = self._iid_classes(batch_size, gen)
        if cfg.B > 0 and cfg.p_B > 0:
            bursty = torch.rand(batch_size, generator=gen, device=self.device) < cfg.p_B
            cls = torch.where(bursty[:, None], self._bursty_classes(batch_size, gen), iid)
        else:
            cls = iid
        return self._from_classes(cls, gen)

    def eval_batch(self, split: str, n: int) -> Batch:
        self.check_split(split)
        gen = self.generator("eval:" + split, 0)
        if split == "IC":
            return self._novel(n, gen, bursty=True)
        if self.infinite:
            # With K = -1 there are no trained classes: IC2/IW fall back to fresh classes.
            return self._novel(n, gen, bursty=split == "IC2")
        if split == "IC2":
            # B = 0 training has no bursty layout; evaluate IC2 with B = 1 then.
            cls = self._bursty_classes(n, gen, self.cfg.B or 1)
            return self._from_classes(cls, gen, label_shift=1)
        query = sample_categorical(self.class_probs, (n,), gen)
        ctx = resample_excluding(self.class_probs, query, self.cfg.N, gen)
        return self._from_classes(torch.cat([ctx, query[:, None]], dim=1), gen)


def _select(mask: Tensor, a: Batch, b: Batch) -> Batch:
    """Row-wise ``a if mask else b``."""
    m2 = mask[:, None]
    return Batch(
        torch.where(mask[:, None, None], a.exemplars, b.exemplars),
        torch.where(m2, a.context_labels, b.context_labels),
        torch.where(m2, a.classes, b.classes),
        torch.where(mask, a.target, b.target),
    )
