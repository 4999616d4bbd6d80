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


#: Flax's ``truncated_normal`` divides by this so that the truncated law keeps the asked std.
_TRUNC_STD = 0.87962566103423978


def lecun_normal_(weight: Tensor, fan_in: int | None = None, gain: float = 1.0) -> Tensor:
    """Fill ``weight`` in place as Flax's ``lecun_normal`` (its default Dense init) and return it.

    A normal truncated at two standard deviations, rescaled so its std is
    ``gain / sqrt(fan_in)``; ``fan_in`` defaults to ``weight.shape[1] * prod(kernel)`` (a
    torch ``[out, in, ...]`` weight).
    """
    if fan_in is None:
        fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    std = gain / math.sqrt(fan_in) / _TRUNC_STD
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


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
        label_init: ``normal`` (std ``label_scale``) or ``lecun_normal`` (std
            ``label_scale / sqrt(n_labels)``, truncated at two std, as Flax's Dense on a
            one-hot label).
        label_scale: std or gain of ``label_init``.
        label_bias: a learned ``[d_model]`` bias (zero at init) added to label tokens.
    """

    def __init__(
        self,
        d_in: int,
        n_labels: int,
        d_model: int,
        encoder: str = "linear",
        label_init: str = "normal",
        label_scale: float = 0.02,
        label_bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_in = d_in
        self.encoder = make_encoder(encoder, d_in, d_model)
        self.sparse_encoder = encoder == "cnn"
        if label_init == "normal":
            weight = torch.randn(n_labels, d_model) * label_scale
        elif label_init == "lecun_normal":
            weight = lecun_normal_(torch.empty(n_labels, d_model), fan_in=n_labels, gain=label_scale)
        else:
            raise ValueError(f"model.label_init: expected normal or lecun_normal, got {label_init!r}")
        self.weight = nn.Parameter(weight)
        self.label_bias = nn.Parameter(torch.zeros(d_model)) if label_bias else None

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: [batch, pos, d_in + 1] int32 -> [batch, pos, d_model]
        x, label = unpack_tokens(tokens, self.d_in)
        is_label = label >= 0
        lab_emb = self.weight[label.clamp(min=0).long()]
        if self.label_bias is not None:
            lab_emb = lab_emb + self.label_bias
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


def sinusoidal_table(n_ctx: int, d_model: int, max_time: float = 30.0, shared: bool = False) -> Tensor:
    """``[n_ctx, d_model]`` sinusoidal position codes (Chan et al.'s ``max_time`` = 30).

    With ``shared``, token t gets the code of index ``t // 2``: in ``x_1 y_1 ... x_L y_L x_q``
    an exemplar and its label share an index and the query gets ``L`` (``chanb/simple_icl``).
    """
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    if shared:
        pos = pos // 2
    i = torch.arange(0, d_model, 2, dtype=torch.float32)
    freq = max_time ** (-i / d_model)
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table
