"""The batch format every generator produces and every model and probe consumes.

A sequence of ``n_pairs`` (exemplar, label) pairs and a query exemplar is laid out as
``2 * n_pairs + 1`` tokens::

    pos:   0    1    2    3   ...  2N-2  2N-1   2N
    token: x_1  y_1  x_2  y_2 ...  x_N   y_N    x_q

Exemplars are continuous vectors and labels are ids, yet the TransformerLens bridge only
runs the embedding stage (and so fires ``hook_embed``) for integer inputs; a float input is
treated as ``inputs_embeds`` and skips it. :meth:`Batch.tokens` therefore packs every
position into a float32 feature row ``[exemplar (d_in) | label id or -1]`` and bit-casts it
to int32. The model's embedding module bit-casts it back (lossless), encodes exemplars and
looks up label embeddings, so ``hook_embed`` and ``hook_pos_embed`` fire as usual.

The packed layout (``data.layout = "packed"``) puts each context item in one token and the
query last, ``n_pairs + 1`` tokens::

    pos:   0          1          ...  N-1        N
    token: (x_1,y_1)  (x_2,y_2)  ...  (x_N,y_N)  (x_q, -)

The feature row is the same ``[exemplar | label id or -1]``, with both parts filled at a
context item and the label part empty (-1) at the query. ``layout`` is an attribute of the
batch (the sources set it from their config), so one batch type serves both layouts and
every caller of :meth:`Batch.tokens` gets its model's token format.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

#: Value of the label channel at exemplar positions (and at the packed query).
NO_LABEL = -1.0

#: The token layouts (``data.layout``).
LAYOUTS = ("interleaved", "packed")


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of bursty sequences.

    Attributes:
        exemplars: ``[batch, n_pairs + 1, d_in]`` float32; the context exemplars, then the query.
        context_labels: ``[batch, n_pairs]`` int64 label ids of the context pairs.
        classes: ``[batch, n_pairs + 1]`` int64 class id of every exemplar (query last). Ids
            are only compared within a sequence: novel classes get ids no trained class has.
        target: ``[batch]`` int64 label id the model must predict at the query.
        layout: ``interleaved`` or ``packed``: only how :meth:`tokens` lays the sequence out.
    """

    exemplars: Tensor
    context_labels: Tensor
    classes: Tensor
    target: Tensor
    layout: str = "interleaved"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {list(LAYOUTS)}, got {self.layout!r}")
        b, n1, _ = self.exemplars.shape
        if self.context_labels.shape != (b, n1 - 1):
            raise ValueError(f"context_labels: expected shape {(b, n1 - 1)}, got {tuple(self.context_labels.shape)}")
        if self.classes.shape != (b, n1):
            raise ValueError(f"classes: expected shape {(b, n1)}, got {tuple(self.classes.shape)}")
        if self.target.shape != (b,):
            raise ValueError(f"target: expected shape {(b,)}, got {tuple(self.target.shape)}")

    # ----------------------------------------------------------------- shape helpers
    def __len__(self) -> int:
        return self.exemplars.shape[0]

    @property
    def n_pairs(self) -> int:
        return self.context_labels.shape[1]

    @property
    def d_in(self) -> int:
        return self.exemplars.shape[2]

    @property
    def packed(self) -> bool:
        return self.layout == "packed"

    @property
    def seq_len(self) -> int:
        return self.n_pairs + 1 if self.packed else 2 * self.n_pairs + 1

    @property
    def query_pos(self) -> int:
        return self.seq_len - 1

    def item_pos(self) -> Tensor:
        """``[n_pairs + 1]`` position of each exemplar (context items, then the query)."""
        step = 1 if self.packed else 2
        return torch.arange(0, step * self.n_pairs + 1, step, device=self.device)

    def with_layout(self, layout: str) -> Batch:
        """The same sequences laid out as ``layout`` (no tensor is copied)."""
        return self if layout == self.layout else Batch(*self.tensors(), layout=layout)

    @property
    def device(self) -> torch.device:
        return self.exemplars.device

    # ----------------------------------------------------------------- derived views
    def with_tokens(self, tokens: Tensor) -> Batch:
        """This batch carrying ``tokens`` as its precomputed :meth:`tokens`.

        For sources that hold a finite training set: they lay out the whole set once and
        gather token rows per batch, so no step rebuilds them. ``tokens`` must be exactly what
        :meth:`tokens` computes (the sources' tests check it bitwise); only its shape and dtype
        are checked here.
        """
        expected = (len(self), self.seq_len, self.d_in + 1)
        if tokens.dtype != torch.int32 or tuple(tokens.shape) != expected:
            raise ValueError(f"tokens: expected int32 {expected}, got {tokens.dtype} {tuple(tokens.shape)}")
        out = Batch(*self.tensors(), layout=self.layout)
        object.__setattr__(out, "_tokens", tokens)
        return out

    def tokens(self) -> Tensor:
        """Model input: ``[batch, pos, d_in + 1]`` int32 (bit-cast float32 features)."""
        cached = self.__dict__.get("_tokens")
        if cached is not None:
            return cached
        b, n = len(self), self.n_pairs
        if self.packed:
            labels = torch.cat(
                [self.context_labels.to(self.exemplars.dtype), self.exemplars.new_full((b, 1), NO_LABEL)], 1
            )
            return torch.cat([self.exemplars, labels[..., None]], dim=-1).contiguous().view(torch.int32)
        feats = self.exemplars.new_zeros(b, 2 * n + 1, self.d_in + 1)
        feats[:, 0::2, : self.d_in] = self.exemplars
        feats[:, 0::2, self.d_in] = NO_LABEL
        feats[:, 1::2, self.d_in] = self.context_labels.to(feats.dtype)
        return feats.view(torch.int32)

    def pos_classes(self) -> Tensor:
        """``[batch, pos]`` class id at every position; a label token gets its exemplar's class."""
        if self.packed:
            return self.classes
        b, n = len(self), self.n_pairs
        out = self.classes.new_empty(b, 2 * n + 1)
        out[:, 0::2] = self.classes
        out[:, 1::2] = self.classes[:, :n]
        return out

    def query_in_context(self) -> Tensor:
        """``[batch, n_pairs]`` bool: context item i has the query's class."""
        return self.classes[:, :-1] == self.classes[:, -1:]

    def labels_in_context(self, n_labels: int) -> Tensor:
        """``[batch, n_labels]`` bool: label l appears somewhere in the context."""
        present = torch.zeros(len(self), n_labels, dtype=torch.bool, device=self.device)
        return present.scatter_(1, self.context_labels, True)

    # ----------------------------------------------------------------- transforms
    def tensors(self) -> tuple[Tensor, ...]:
        """The tensor fields in order, not copied (``dataclasses.astuple`` would deep-copy every tensor)."""
        return (self.exemplars, self.context_labels, self.classes, self.target)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in self.tensors()), layout=self.layout)

    def __getitem__(self, idx: slice | Tensor) -> Batch:
        return Batch(*(t[idx] for t in self.tensors()), layout=self.layout)

    def rows(self, index: Tensor) -> Batch:
        """Rows ``index`` (``[n]`` integer ids in ``[0, len(self))``): ``self[index]`` at half its
        cost (``index_select``), for gathering training batches from a materialised set."""
        return Batch(*(t.index_select(0, index) for t in self.tensors()), layout=self.layout)

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        layouts = {b.layout for b in batches}
        if len(layouts) > 1:
            raise ValueError(f"layout: cannot concatenate batches of layouts {sorted(layouts)}")
        fields = zip(*(b.tensors() for b in batches), strict=True)
        return Batch(*(torch.cat(list(ts)) for ts in fields), layout=layouts.pop() if layouts else "interleaved")


def unpack_tokens(tokens: Tensor, d_in: int) -> tuple[Tensor, Tensor]:
    """Invert :meth:`Batch.tokens`.

    Args:
        tokens: ``[batch, pos, d_in + 1]`` int32.
        d_in: exemplar dimension.

    Returns:
        ``(features [batch, pos, d_in] float32, label [batch, pos] float32; -1 at exemplars)``.
    """
    if tokens.dtype != torch.int32 or tokens.shape[-1] != d_in + 1:
        raise ValueError(
            f"tokens: expected int32 [batch, pos, {d_in + 1}] from Batch.tokens(), "
            f"got {tokens.dtype} {tuple(tokens.shape)}"
        )
    feats = tokens.view(torch.float32)
    return feats[..., :d_in], feats[..., d_in]
