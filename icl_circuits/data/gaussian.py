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
from typing import ClassVar, Literal

import torch
from torch import Tensor

from icl_circuits.configbase import require
from icl_circuits.data.batch import Batch
from icl_circuits.data.family import DataConfigBase, MemoryTerms, register_family
from icl_circuits.data.sampling import (
    resample_excluding,
    sample_categorical,
    shuffle_rows,
    zipf_probs,
)
from icl_circuits.data.source import DataSource


@dataclasses.dataclass(frozen=True)
class GaussianConfig(DataConfigBase):
    """Parameters of the Gaussian-mixture family (Reddy 2023's letters in brackets).

    Attributes:
        n_classes: [K] number of classes (task diversity); -1 for fresh classes every sequence.
        n_labels: [L] number of labels (``label_mode="mod"``); must be 2 for ``"binary"``.
        d: [D] exemplar dimension.
        n_pairs: [N] context pairs.
        burst: [B] burstiness (copies of each class in a bursty context); 0 = never bursty.
        p_bursty: [p_B] fraction of bursty training sequences.
        zipf_alpha: [alpha] Zipf exponent of the class distribution.
        noise: [eps] within-class noise.
        label_mode: ``"mod"`` (label = k mod L) or ``"binary"`` (balanced 0/1 table).
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "K": "n_classes",
        "L": "n_labels",
        "D": "d",
        "N": "n_pairs",
        "B": "burst",
        "p_B": "p_bursty",
        "alpha": "zipf_alpha",
        "eps": "noise",
    }

    family: Literal["gaussian"] = "gaussian"
    n_classes: int = 1024
    n_labels: int = 32
    d: int = 63
    n_pairs: int = 8
    burst: int = 4
    p_bursty: float = 1.0
    zipf_alpha: float = 0.0
    noise: float = 0.1
    label_mode: Literal["mod", "binary"] = "mod"

    def validate(self) -> None:
        require(
            self.n_classes == -1 or self.n_classes >= 1,
            "data.n_classes",
            "a positive integer or -1 (infinite)",
            self.n_classes,
        )
        require(self.n_labels >= 2, "data.n_labels", "at least 2 labels", self.n_labels)
        require(self.d >= 1, "data.d", "a positive dimension", self.d)
        require(self.n_pairs >= 1, "data.n_pairs", "at least 1 context pair", self.n_pairs)
        require(self.burst >= 0, "data.burst", "a non-negative burstiness", self.burst)
        if self.burst > 0:
            require(self.n_pairs % self.burst == 0, "data.burst", f"a divisor of n_pairs={self.n_pairs}", self.burst)
        require(0.0 <= self.p_bursty <= 1.0, "data.p_bursty", "a probability in [0, 1]", self.p_bursty)
        require(self.zipf_alpha >= 0.0, "data.zipf_alpha", "a non-negative Zipf exponent", self.zipf_alpha)
        require(self.noise >= 0.0, "data.noise", "a non-negative noise level", self.noise)
        if self.label_mode == "binary":
            require(self.n_labels == 2, "data.n_labels", "2 when label_mode is 'binary'", self.n_labels)
            require(
                self.n_classes == -1 or self.n_classes % 2 == 0,
                "data.n_classes",
                "even for a balanced binary table",
                self.n_classes,
            )

    @property
    def d_in(self) -> int:
        return self.d

    @property
    def vocab_size(self) -> int:
        return self.n_labels

    def memory_terms(self) -> MemoryTerms:
        world = {"data.n_classes": max(self.n_classes, 0), "data.d": self.d}
        return MemoryTerms(world, ("data.d", self.d), ("data.n_pairs", self.n_pairs), self.n_labels, 3)


class GaussianSource(DataSource):
    """Seeded sampler for :class:`GaussianConfig`; see the module docstring."""

    splits = ("IC", "IC2", "IW")
    icl_split = "IC"
    iwl_split = "IW"

    def __init__(self, cfg: GaussianConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.n_labels = cfg.n_labels
        self.d_in = cfg.d
        self.n_pairs = cfg.n_pairs
        self.infinite = cfg.n_classes == -1
        gen = self.generator("world", 0)
        if not self.infinite:
            self.means = torch.randn(cfg.n_classes, cfg.d, generator=gen, device=self.device) / math.sqrt(cfg.d)
            self.class_probs = zipf_probs(cfg.n_classes, cfg.zipf_alpha, self.device)
            if cfg.label_mode == "binary":
                table = torch.arange(cfg.n_classes, device=self.device) % 2
                self.label_table = table[torch.randperm(cfg.n_classes, generator=gen, device=self.device)]
            else:
                self.label_table = torch.arange(cfg.n_classes, device=self.device) % cfg.n_labels

    # ------------------------------------------------------------------ pieces
    def _exemplars(self, means: Tensor, gen: torch.Generator) -> Tensor:
        """``(means + noise * eta) / sqrt(1 + noise**2)``, in place on ``eta`` (same values, bit
        for bit: each operation is the formula's, in its order). The noise is the last draw of
        every caller, so with ``noise = 0`` it is not drawn and ``means`` is returned as it is."""
        if self.cfg.noise == 0:
            return means
        eta = torch.randn(means.shape, generator=gen, device=self.device).div_(math.sqrt(self.cfg.d))
        return eta.mul_(self.cfg.noise).add_(means).div_(math.sqrt(1.0 + self.cfg.noise**2))

    def _bursty_classes(self, b: int, gen: torch.Generator, B: int | None = None) -> Tensor:
        """``[b, N + 1]`` class indices in ``[0, K)`` of bursty sequences (query last)."""
        B = B or self.cfg.burst
        n_cls = self.cfg.n_pairs // B
        cls = sample_categorical(self.class_probs, (b, n_cls), gen)
        ctx = shuffle_rows(cls.repeat_interleave(B, dim=1), gen)
        pick = torch.randint(0, n_cls, (b, 1), generator=gen, device=self.device)
        return torch.cat([ctx, torch.gather(cls, 1, pick)], dim=1)

    def _iid_classes(self, b: int, gen: torch.Generator) -> Tensor:
        return sample_categorical(self.class_probs, (b, self.cfg.n_pairs + 1), gen)

    def _novel(self, b: int, gen: torch.Generator, bursty: bool) -> Batch:
        """Sequences over classes nobody has seen: fresh means, uniformly random labels."""
        n_cls = self.cfg.n_pairs // self.cfg.burst if bursty and self.cfg.burst > 0 else self.cfg.n_pairs + 1
        means = torch.randn(b, n_cls, self.cfg.d, generator=gen, device=self.device) / math.sqrt(self.cfg.d)
        labels = torch.randint(0, self.cfg.n_labels, (b, n_cls), generator=gen, device=self.device)
        if bursty and self.cfg.burst > 0:
            slot = shuffle_rows(
                torch.arange(n_cls, device=self.device).repeat_interleave(self.cfg.burst).expand(b, -1), gen
            )
            pick = torch.randint(0, n_cls, (b, 1), generator=gen, device=self.device)
            slot = torch.cat([slot, pick], dim=1)
        else:
            slot = torch.arange(n_cls, device=self.device).expand(b, -1)
        x = self._exemplars(torch.gather(means, 1, slot[..., None].expand(-1, -1, self.cfg.d)), gen)
        lab = torch.gather(labels, 1, slot)
        # Offset ids past every trained class so novel classes never compare equal to them.
        base = max(self.cfg.n_classes, 0) + torch.arange(b, device=self.device)[:, None] * n_cls
        return Batch(x, lab[:, :-1].contiguous(), base + slot, lab[:, -1].contiguous())

    def _from_classes(self, cls: Tensor, gen: torch.Generator, label_shift: int = 0) -> Batch:
        x = self._exemplars(self.means[cls], gen)
        lab = self.label_table[cls]
        if label_shift:
            lab = (lab + label_shift) % self.cfg.n_labels
        return Batch(x, lab[:, :-1].contiguous(), cls, lab[:, -1].contiguous())

    # ------------------------------------------------------------------ API
    def train_batch(self, step: int, batch_size: int) -> Batch:
        gen = self.generator("train", step)
        cfg = self.cfg
        if self.infinite:
            bursty = torch.rand(batch_size, generator=gen, device=self.device) < cfg.p_bursty
            return _select(bursty, self._novel(batch_size, gen, True), self._novel(batch_size, gen, False))
        iid = self._iid_classes(batch_size, gen)
        if cfg.burst > 0 and cfg.p_bursty > 0:
            bursty = torch.rand(batch_size, generator=gen, device=self.device) < cfg.p_bursty
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
            cls = self._bursty_classes(n, gen, self.cfg.burst or 1)
            return self._from_classes(cls, gen, label_shift=1)
        query = sample_categorical(self.class_probs, (n,), gen)
        ctx = resample_excluding(self.class_probs, query, self.cfg.n_pairs, gen)
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


register_family(GaussianConfig, GaussianSource)
