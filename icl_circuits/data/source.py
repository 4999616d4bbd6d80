"""The interface every data family implements, and its seeding rule.

Seeding rule: a batch is a pure function of ``(seed, stream, step)``. The training batch at
step ``t`` is drawn from its own generator seeded by ``(seed, "train", t)``, so a resumed
run sees exactly the batches an uninterrupted one would, whatever happened before.
Evaluation sets use the ``"eval"`` stream and the world (class means, label tables) the
``"world"`` stream, so evaluation sequences are never training sequences.
"""

from __future__ import annotations

import abc
import functools
import zlib

import numpy as np
import torch

from icl_circuits.data.batch import Batch


def make_generator(seed: int, stream: str, index: int, device: torch.device | str) -> torch.Generator:
    """A torch generator on ``device`` seeded from ``(seed, stream, index)``."""
    words = [seed & 0xFFFFFFFF, seed >> 32, zlib.crc32(stream.encode()), index & 0xFFFFFFFF, index >> 32]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(state[0] >> 1))
    return gen


def _laid_out(method):
    @functools.wraps(method)
    def wrapper(self: DataSource, *args, **kwargs) -> Batch:
        return method(self, *args, **kwargs).with_layout(self.layout)

    wrapper._lays_out = True  # type: ignore[attr-defined]
    return wrapper


class DataSource(abc.ABC):
    """A seeded bursty-sequence distribution with named evaluation splits.

    Attributes:
        n_labels: size of the label vocabulary (the model's output size).
        d_in: exemplar dimension (flattened).
        n_pairs: context pairs per sequence.
        splits: names of the evaluation splits, in display order.
        icl_split: the split that measures in-context learning.
        iwl_split: the split that measures in-weight learning.
        ciwl_split: the split where copying the query's own label is possible, or None.
    """

    n_labels: int
    d_in: int
    n_pairs: int
    splits: tuple[str, ...]
    icl_split: str
    iwl_split: str
    ciwl_split: str | None = None

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.seed = int(seed)
        self.device = torch.device(device)

    def __init_subclass__(cls, **kwargs) -> None:
        """Lay out every batch a family's ``train_batch`` / ``eval_batch`` returns as its config's
        ``layout``: a family samples sequences only and never handles the layout itself."""
        super().__init_subclass__(**kwargs)
        for name in ("train_batch", "eval_batch"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_lays_out", False):
                setattr(cls, name, _laid_out(method))

    @property
    def layout(self) -> str:
        """The token layout of this source's batches (``data.layout``)."""
        cfg = getattr(self, "cfg", None)
        return getattr(cfg, "layout", "interleaved")

    def generator(self, stream: str, index: int) -> torch.Generator:
        return make_generator(self.seed, stream, index, self.device)

    @abc.abstractmethod
    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The training batch of ``step``: a pure function of (seed, step, batch_size)."""

    @abc.abstractmethod
    def eval_batch(self, split: str, n: int) -> Batch:
        """``n`` fresh evaluation sequences of ``split`` (deterministic given the seed)."""

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"split: expected one of {list(self.splits)}, got {split!r}")
