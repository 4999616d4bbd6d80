"""Model configuration."""

from __future__ import annotations

import dataclasses
from typing import Literal

from icl_circuits.configbase import FrozenConfig, require


@dataclasses.dataclass(frozen=True)
class ModelConfig(FrozenConfig):
    """A small TransformerLens-native transformer with a continuous-exemplar embedding.

    Attributes:
        n_layers: transformer blocks.
        n_heads: attention heads per block.
        d_model: residual width.
        d_head: head width; 0 means ``d_model // n_heads``.
        attn_only: drop the per-block MLPs.
        d_mlp: MLP width; 0 means ``4 * d_model``.
        act_fn: MLP activation (``gelu``, ``relu``, ``gelu_new``, ``silu``).
        positional: ``standard`` (learned), ``sinusoidal`` (fixed table), ``rotary`` or
            ``none`` (a frozen zero table, so ``hook_pos_embed`` still fires).
        normalization: ``LN``, ``LNPre``, ``RMS`` or ``none``.
        encoder: exemplar encoder: ``linear``, ``identity`` (frozen) or ``cnn``.
        readout: ``linear`` (the unembedding) or ``mlp`` (ReLU layers ``readout_hidden``).
        readout_hidden: hidden widths of the MLP readout.
        init_mode: init of every trainable weight matrix: TransformerLens's native schemes
            (``gpt2``: normal with std ``init_range``, output projections smaller;
            ``xavier_uniform``, ``xavier_normal``, ``kaiming_*`` with gain ``init_range``) or
            ``lecun_normal`` (Flax's default for Dense: truncated normal with std
            ``init_range / sqrt(fan_in)``, biases zero), which the JAX reference codes use,
            or ``torch`` (PyTorch's ``nn.Linear`` default, weights and biases uniform in
            ``±1/sqrt(fan_in)``; ``init_range`` unused), which the PyTorch reference codes use.
        init_range: std (``gpt2``) or gain (the others) of that init.
        label_init: init of the label embedding ``W_E [n_labels, d_model]``: ``normal``
            (std ``label_scale``; TransformerLens's token-embedding scale 0.02 by default) or
            ``lecun_normal`` (a Dense layer on the one-hot label, std
            ``label_scale / sqrt(n_labels)``, as in ``chanb/simple_icl``) or ``onehot``
            (frozen: label y is the unit vector of coordinate ``d_in + y``, so a packed token
            with the identity encoder is ``x ⊕ onehot(y)``, Nguyen & Reddy 2024).
        label_scale: std (``normal``) or gain (``lecun_normal``) of the label embedding.
        label_bias: add a learned bias (zero at init) to every label token, as a Dense layer
            on the one-hot label has.
        positions: ``consecutive`` (token t gets position t) or ``shared`` (an exemplar and its
            label share one index, the query gets the next: ``x_i, y_i -> i - 1``, query
            ``-> n_pairs``, as in ``chanb/simple_icl``); ``shared`` needs a fixed table
            (``positional`` ``sinusoidal`` or ``none``).
        input_norm: a LayerNorm (learned gain and bias) on the input tokens, inside the
            embedding stage (``hook_embed`` is the normalised token; Nguyen & Reddy 2024).
        attn_bias: learned Q/K/V/O biases; ``False`` fixes them at zero (frozen).
        attn_out_proj: a learned output projection ``W_O``; ``False`` fixes it to the
            identity (frozen; needs ``n_heads * d_head == d_model``), so a head writes its
            value vectors straight into the residual stream.
        attn_scale: attention scores are divided by this; 0 means ``sqrt(d_head)``.
        binary_logit: the MLP readout ends in one logit ``z`` returned as label logits
            ``[0, z]`` (2-label data only): cross-entropy on them is the logistic loss on
            ±1 labels (:class:`icl_circuits.models.embed.MLPReadout`).
    """

    n_layers: int = 2
    n_heads: int = 1
    d_model: int = 64
    d_head: int = 0
    attn_only: bool = True
    d_mlp: int = 0
    act_fn: Literal["gelu", "gelu_new", "relu", "silu"] = "gelu"
    positional: Literal["standard", "sinusoidal", "rotary", "none"] = "standard"
    normalization: Literal["LN", "LNPre", "RMS", "none"] = "LN"
    encoder: Literal["linear", "identity", "cnn"] = "linear"
    readout: Literal["linear", "mlp"] = "linear"
    readout_hidden: tuple[int, ...] = (128, 128, 128)
    init_mode: Literal[
        "gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "lecun_normal", "torch"
    ] = "gpt2"
    init_range: float = 0.02
    label_init: Literal["normal", "lecun_normal", "onehot"] = "normal"
    label_scale: float = 0.02
    label_bias: bool = False
    positions: Literal["consecutive", "shared"] = "consecutive"
    input_norm: bool = False
    attn_bias: bool = True
    attn_out_proj: bool = True
    attn_scale: float = 0.0
    binary_logit: bool = False

    def validate(self) -> None:
        require(self.n_layers >= 1, "model.n_layers", "at least 1", self.n_layers)
        require(self.n_heads >= 1, "model.n_heads", "at least 1", self.n_heads)
        require(self.d_model >= 1, "model.d_model", "a positive width", self.d_model)
        require(self.d_head >= 0, "model.d_head", "a positive width (0 = d_model // n_heads)", self.d_head)
        if self.d_head == 0:
            require(
                self.d_model % self.n_heads == 0,
                "model.n_heads",
                f"a divisor of d_model={self.d_model} (or set model.d_head)",
                self.n_heads,
            )
        if self.positional == "rotary":
            require(self.head_dim % 2 == 0, "model.d_head", "even for rotary positions", self.head_dim)
        require(self.d_mlp >= 0, "model.d_mlp", "a positive width (0 = 4 * d_model)", self.d_mlp)
        require(
            all(h >= 1 for h in self.readout_hidden), "model.readout_hidden", "positive widths", self.readout_hidden
        )
        require(self.init_range > 0, "model.init_range", "a positive number", self.init_range)
        require(self.label_scale > 0, "model.label_scale", "a positive number", self.label_scale)
        require(
            self.positions == "consecutive" or self.positional in ("sinusoidal", "none"),
            "model.positions",
            f"consecutive with positional={self.positional!r} (shared needs sinusoidal or none)",
            self.positions,
        )
        require(self.attn_scale >= 0, "model.attn_scale", "a positive divisor (0 = sqrt(d_head))", self.attn_scale)
        if not self.attn_out_proj:
            require(
                self.n_heads * self.head_dim == self.d_model,
                "model.attn_out_proj",
                f"true unless n_heads * d_head == d_model={self.d_model} (identity W_O)",
                self.attn_out_proj,
            )
        require(
            not self.binary_logit or self.readout == "mlp",
            "model.binary_logit",
            "false unless model.readout is 'mlp'",
            self.binary_logit,
        )

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads
