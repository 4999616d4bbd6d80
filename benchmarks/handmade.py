"""Hand-written reference models: the eager limit for our architecture, and Nguyen & Reddy's loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import DEV
from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.models import build_native
from icl_circuits.models.build import query_logits
from icl_circuits.runs.read import model_shape


class HandModel(nn.Module):
    """Our native architecture written the way one would by hand, with the native model's weights.

    Fused QKV, ``scaled_dot_product_attention``, exemplars and labels embedded separately (no
    bit-cast unpacking) and the readout applied at the query only. Supports the options of
    the benchmarked presets: LayerNorm, linear or identity encoder, learned, sinusoidal or
    no positions, GELU/ReLU MLPs, linear or MLP readout.
    """

    def __init__(self, native: nn.Module) -> None:
        super().__init__()
        cfg = native.cfg
        if cfg.positional_embedding_type != "standard" or cfg.normalization_type != "LN":
            raise ValueError("HandModel: only LayerNorm models with learned/fixed positions")
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.enc = _clone(native.tok_embed.encoder)
        self.lab = nn.Parameter(native.tok_embed.weight.detach().clone())
        pos = native.pos.weight
        self.pos = nn.Parameter(pos.detach().clone(), requires_grad=pos.requires_grad)
        self.act = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}[cfg.act_fn]
        self.blocks = nn.ModuleList()
        for layer in native.layers:
            blk = nn.Module()
            blk.ln1 = _clone(layer.ln1)
            a = layer.attn
            blk.qkv = nn.Linear(cfg.d_model, 3 * cfg.n_heads * cfg.d_head)
            with torch.no_grad():
                blk.qkv.weight.copy_(torch.cat([a.q.weight, a.k.weight, a.v.weight]))
                blk.qkv.bias.copy_(torch.cat([a.q.bias, a.k.bias, a.v.bias]))
            blk.o = _clone(a.o)
            blk.mlp = None
            if not cfg.attn_only:
                blk.ln2 = _clone(layer.ln2)
                blk.mlp = nn.Sequential(_clone(layer.mlp.fc_in), _Act(self.act), _clone(layer.mlp.fc_out))
            self.blocks.append(blk)
        self.ln_out = _clone(native.ln_out)
        self.head = _clone(native.head)

    def forward(self, exemplars: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[batch, n_labels]`` query logits from exemplars ``[B, N+1, d_in]`` and labels ``[B, N]``."""
        e = self.enc(exemplars)
        h = torch.cat([torch.stack([e[:, :-1], self.lab[labels]], 2).flatten(1, 2), e[:, -1:]], 1)
        b, t, d = h.shape
        h = h + self.pos[:t]
        for blk in self.blocks:
            qkv = blk.qkv(blk.ln1(h)).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
            z = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
            h = h + blk.o(z.transpose(1, 2).reshape(b, t, d))
            if blk.mlp is not None:
                h = h + blk.mlp(blk.ln2(h))
        return self.head(self.ln_out(h[:, -1]))


class _Act(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _clone(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def readout_positions(model: nn.Module, tokens: torch.Tensor) -> int:
    """On how many positions ``query_logits`` runs the model's readout (1: the query only)."""
    shapes = []
    hook = model.head.register_forward_hook(lambda module, args, out: shapes.append(args[0].shape))
    try:
        with torch.no_grad():
            query_logits(model, tokens)
    finally:
        hook.remove()
    return 1 if len(shapes[0]) == 2 else shapes[0][1]


def full_sequence_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Query logits from TransformerLens's plain native forward: norm and readout at every position."""
    return model(input_ids=tokens)[:, -1]


class NguyenReddyRef(nn.Module):
    """Nguyen & Reddy 2024's reference model: tokens ``x ⊕ onehot(label)``, one causal head.

    LayerNorm(65); single-head attention with one bias-free Linear 65 -> 195 for Q, K, V,
    attention scale 1, no positional encoding; ReLU MLP 512-512 -> 1 on the query token plus
    its attention output. Loss ``-logsigmoid(±logit)``.
    """

    def __init__(self, d: int = 65, hidden: int = 512) -> None:
        super().__init__()
        self.d = d
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.ln(tokens)
        q, k, v = self.qkv(h).split(self.d, -1)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
        return self.mlp(h[:, -1] + z[:, -1])[:, 0]


def nr_tokens(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the reference's ``[B, N+1, D+2]`` tokens (query label zeroed) and ±1 targets."""
    onehot = F.one_hot(batch.context_labels, 2).float()
    onehot = torch.cat([onehot, onehot.new_zeros(len(batch), 1, 2)], 1)
    return torch.cat([batch.exemplars, onehot], -1), batch.target.float() * 2 - 1


def loops(cfg: RunConfig, steps: int) -> dict:
    """The models and pre-generated inputs of the bare loops for ``cfg`` (on the device)."""
    source = build_source(cfg.data, cfg.seed, DEV)
    native = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg, source)).to(DEV)
    hand = HandModel(native).to(DEV)
    batches = [source.train_batch(s, cfg.train.batch_size) for s in range(steps)]
    return {
        "source": source,
        "native": native,
        "hand": hand,
        "native_in": [(b.tokens(), b.target) for b in batches],
        "hand_in": [(b.exemplars, b.context_labels, b.target) for b in batches],
    }


def check_hand_model(cfg: RunConfig) -> float:
    """Max |logit difference| between HandModel and the native model on one batch."""
    lp = loops(cfg, 1)
    tok, _ = lp["native_in"][0]
    ex, lab, _ = lp["hand_in"][0]
    with torch.no_grad():
        return (lp["hand"](ex, lab) - query_logits(lp["native"], tok)).abs().max().item()
