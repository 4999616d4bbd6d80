"""The embedding stage: exemplar encoders and label embeddings behind one module.

:class:`ExemplarEmbed` sits in the native model's token-embedding slot, so the bridge wraps
it as ``embed`` and its output is ``hook_embed``. It reads the bit-cast int32 tokens of
:meth:`icl_circuits.data.Batch.tokens`, encodes exemplar positions with the configured
encoder and looks up label positions in ``weight`` (so ``model.W_E`` is the label
embedding table, ``[n_labels, d_model]``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from icl_circuits.data.batch import unpack_tokens


class SmallCNN(nn.Module):
    """Four stride-2 conv layers and a linear map: a laptop-sized image encoder."""

    def __init__(self, side: int, d_model: int, channels: tuple[int, ...] = (16, 32, 32, 64)) -> None:
        super().__init__()
        self.side = side
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, d_model)

    def forward(self, x: Tensor) -> Tensor:
        # x: [n, side * side] -> [n, d_model]
        h = self.convs(x.view(-1, 1, self.side, self.side))
        return self.proj(h.mean(dim=(2, 3)))


def make_encoder(kind: str, d_in: int, d_model: int) -> nn.Module:
    """The exemplar encoder ``kind`` (``linear``, ``identity`` or ``cnn``)."""
    if kind == "linear":
        return nn.Linear(d_in, d_model)
    if kind == "identity":
        # Chan et al. 2024: a dense layer initialised to the identity and frozen.
        lin = nn.Linear(d_in, d_model)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(d_model, d_in))
            lin.bias.zero_()
        lin.requires_grad_(False)
        return lin
    if kind == "cnn":
        return SmallCNN(int(round(math.sqrt(d_in))), d_model)
    raise ValueError(f"model.encoder: expected linear, identity or cnn, got {kind!r}")


class ExemplarEmbed(nn.Module):
    """Token embedding for interleaved (exemplar, label) sequences.

    Args:
        d_in: exemplar dimension.
        n_labels: label vocabulary size.
        d_model: residual width.
        encoder: ``linear``, ``identity`` (frozen, needs ``d_in == d_model``) or ``cnn``
            (square images flattened to ``d_in``).
    """

    def __init__(self, d_in: int, n_labels: int, d_model: int, encoder: str = "linear") -> None:
        super().__init__()
        self.d_in = d_in
        self.encoder = make_encoder(encoder, d_in, d_model)
        self.sparse_encoder = encoder == "cnn"
        self.weight = nn.Parameter(torch.randn(n_labels, d_model) * 0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: [batch, pos, d_in + 1] int32 -> [batch, pos, d_model]
        x, label = unpack_tokens(tokens, self.d_in)
        is_label = label >= 0
        lab_emb = self.weight[label.clamp(min=0).long()]
        if self.sparse_encoder:
            # Costly encoders only see exemplar positions.
            out = lab_emb.clone()
            out[~is_label] = self.encoder(x[~is_label])
            return out
        return torch.where(is_label[..., None], lab_emb, self.encoder(x))


class MLPReadout(nn.Module):
    """ReLU MLP from the residual stream to label logits (Reddy 2023's readout).

    ``weight`` is the last layer's weight, so the bridge can wrap this module as ``unembed``;
    note that ``W_U`` is then not a linear readout of the residual stream.
    """

    def __init__(self, d_model: int, hidden: tuple[int, ...], n_labels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = d_model
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(d, n_labels)

    @property
    def weight(self) -> Tensor:
        return self.out.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.mlp(x))


def sinusoidal_table(n_ctx: int, d_model: int, max_time: float = 30.0) -> Tensor:
    """``[n_ctx, d_model]`` sinusoidal position codes (Chan et al.'s ``max_time`` = 30)."""
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    i = torch.arange(0, d_model, 2, dtype=torch.float32)
    freq = max_time ** (-i / d_model)
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table
