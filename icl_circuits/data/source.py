"""The interface every data family implements, and its seeding rule.

Seeding rule: a batch is a pure function of ``(seed, stream, step)``. The training batch at
step ``t`` is drawn from its own generator seeded by ``(seed, "train", t)``, so a resumed
run sees exactly the batches an uninterrupted one would, whatever happened before.
Evaluation sets use the ``"eval"`` stream and the world (class means, label tables) the
``"world"`` stream, so evaluation sequences are never training sequences.
"""

from __future__ import annotations

import abc
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
