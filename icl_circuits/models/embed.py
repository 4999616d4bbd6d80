"""The embedding stage: exemplar encoders and label embeddings behind one module.

:class:`ExemplarEmbed` sits in the native model's token-embedding slot, so the bridge wraps
it as ``embed`` and its output is ``hook_embed``. It reads the bit-cast int32 tokens of
:meth:`icl_circuits.data.Batch.tokens`, encodes exemplar positions with the configured
encoder and looks up label positions in ``weight`` (so ``model.W_E`` is the label
embedding table, ``[n_labels, d_model]``).

In the packed layout (one token per context item, :mod:`icl_circuits.data.batch`) a context
token is ``encoder(x) + W_E[y]`` and the query token ``encoder(x_q)`` (its label part zero).
We add a label *embedding* rather than concatenating a one-hot because the two are the same
function of ``x ⊕ onehot(y)`` under a linear encoder (``W [x; onehot(y)] = W_x x + W_y[:, y]``,
``W_E = W_y^T``), and the embedding form keeps ``W_E`` the TransformerLens embedding matrix for
any encoder and width. The literal token ``x ⊕ onehot(y)`` of Nguyen & Reddy 2024 is the
special case ``encoder="identity"`` (``x`` into the first ``d_in`` coordinates) with
``label_init="onehot"`` (a frozen ``[0 | I]``: ``y`` into the next ``n_labels``).
``input_norm`` adds their LayerNorm on the input token, inside this module, so
``hook_embed`` is the normalised token the attention reads.
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
    """Token embedding for interleaved or packed (exemplar, label) sequences.

    Args:
        d_in: exemplar dimension.
        n_labels: label vocabulary size.
        d_model: residual width.
        encoder: ``linear``, ``identity`` (frozen, needs ``d_in == d_model``) or ``cnn``
            (square images flattened to ``d_in``).
        label_init: ``normal`` (std ``label_scale``), ``lecun_normal`` (std
            ``label_scale / sqrt(n_labels)``, truncated at two std, as Flax's Dense on a
            one-hot label) or ``onehot`` (frozen: label ``y`` is the unit vector of
            coordinate ``d_in + y``; needs ``d_model >= d_in + n_labels``).
        label_scale: std or gain of ``label_init``.
        label_bias: a learned ``[d_model]`` bias (zero at init) added to label tokens.
        packed: tokens are packed items (``encoder(x) + W_E[y]``), not interleaved.
        input_norm: a LayerNorm (learned gain and bias) on every token, last.
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
        packed: bool = False,
        input_norm: bool = False,
    ) -> None:
        super().__init__()
        self.d_in = d_in
        self.packed = packed
        self.encoder = make_encoder(encoder, d_in, d_model)
        self.sparse_encoder = encoder == "cnn"
        if label_init == "normal":
            weight = torch.randn(n_labels, d_model) * label_scale
        elif label_init == "lecun_normal":
            weight = lecun_normal_(torch.empty(n_labels, d_model), fan_in=n_labels, gain=label_scale)
        elif label_init == "onehot":
            if d_model < d_in + n_labels:
                raise ValueError(
                    f"model.d_model: expected at least d_in + n_labels = {d_in + n_labels} for onehot labels"
                )
            weight = torch.zeros(n_labels, d_model)
            weight[:, d_in : d_in + n_labels] = torch.eye(n_labels)
        else:
            raise ValueError(f"model.label_init: expected normal, lecun_normal or onehot, got {label_init!r}")
        self.weight = nn.Parameter(weight, requires_grad=label_init != "onehot")
        self.label_bias = nn.Parameter(torch.zeros(d_model)) if label_bias else None
        self.norm = nn.LayerNorm(d_model) if input_norm else None

    def forward(self, tokens: Tensor) -> Tensor:
        # tokens: [batch, pos, d_in + 1] int32 -> [batch, pos, d_model]
        out = self._embed(tokens)
        return out if self.norm is None else self.norm(out)

    def _embed(self, tokens: Tensor) -> Tensor:
        x, label = unpack_tokens(tokens, self.d_in)
        is_label = label >= 0
        lab_emb = self.weight[label.clamp(min=0).long()]
        if self.label_bias is not None:
            lab_emb = lab_emb + self.label_bias
        if self.packed:
            # Every position holds an exemplar; context items add their label's embedding.
            return self.encoder(x) + lab_emb * is_label[..., None].to(lab_emb.dtype)
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

    With ``binary_logit`` (two labels only) the MLP ends in one logit ``z`` and returns the
    label logits ``[0, z]``: softmax cross-entropy on them is exactly the logistic loss
    ``-log sigmoid(±z)`` on labels ±1 (label 1 is +1) that Nguyen & Reddy 2024 train with,
    and the argmax is ``sign(z)``, so every metric and probe reads it as a 2-label model.
    """

    def __init__(self, d_model: int, hidden: tuple[int, ...], n_labels: int, binary_logit: bool = False) -> None:
        super().__init__()
        if binary_logit and n_labels != 2:
            raise ValueError(f"model.readout_logit: expected binary (2-label) data, got {n_labels} labels")
        self.binary_logit = binary_logit
        layers: list[nn.Module] = []
        d = d_model
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(d, 1 if binary_logit else n_labels)

    @property
    def weight(self) -> Tensor:
        return self.out.weight

    def forward(self, x: Tensor) -> Tensor:
        z = self.out(self.mlp(x))
        return torch.cat([torch.zeros_like(z), z], dim=-1) if self.binary_logit else z


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
