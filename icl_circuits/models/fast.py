"""The training-only forward: fused QKV, ``scaled_dot_product_attention``, query-only last layer.

Training needs the query's logits and their gradients, nothing else: no attention pattern
is kept, no hook fires, and the last block runs its attention query, its MLP and the readout
at the query position only. It reads the very parameters of TransformerLens's native
blocks (same state-dict keys), so a model trains here and is analysed through the bridge.
``tests/test_fast_path.py`` checks logits and gradients against the native forward and
the bridge (to 1e-5) under every architecture option and both layouts.

``kernel="math"`` computes the same attention as explicit matmuls and a softmax: under
``torch.func.vmap`` (the vectorised seeds) ``scaled_dot_product_attention`` has no batching
rule on the CPU and falls back to a Python loop over the seeds, while matmuls batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supports_fast_path(model: torch.nn.Module) -> bool:
    """Whether every block's attention is plain causal attention this path reproduces exactly."""
    for block in model.layers:
        attn = block.attn
        if not attn.causal or float(attn.attn_scores_soft_cap) > 0:
            return False
    return True


def _fused_qkv(attn: torch.nn.Module) -> tuple[Tensor, Tensor]:
    weight = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight])
    bias = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])
    return weight, bias


#: Attention kernels of :func:`attention`.
KERNELS = ("sdpa", "math")


def _math_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> Tensor:
    """``scaled_dot_product_attention`` as matmuls (batches under ``vmap``)."""
    scores = (q @ k.transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    return scores.softmax(-1) @ v


def attention(attn: torch.nn.Module, x: Tensor, position_ids: Tensor, query_only: bool, kernel: str = "sdpa") -> Tensor:
    """One native attention module's output ``[batch, pos, d_model]`` (``pos`` = 1 if ``query_only``).

    Args:
        attn: a ``NativeAttention`` (q, k, v, o linears; ``scale``; optional ``rotary``).
        x: ``[batch, pos, d_model]`` normalised residual stream.
        position_ids: ``[batch, pos]`` (rotary positions).
        query_only: compute the last position's output only (it attends to every position).
        kernel: ``sdpa`` (``scaled_dot_product_attention``) or ``math`` (matmuls; for ``vmap``).
    """
    batch, seq, _ = x.shape
    n_heads, n_kv, d_head = attn.n_heads, attn.n_kv_heads, attn.d_head
    weight, bias = _fused_qkv(attn)
    q, k, v = F.linear(x, weight, bias).split([n_heads * d_head, n_kv * d_head, n_kv * d_head], dim=-1)
    q = q.view(batch, seq, n_heads, d_head).transpose(1, 2)
    k = k.view(batch, seq, n_kv, d_head).transpose(1, 2)
    v = v.view(batch, seq, n_kv, d_head).transpose(1, 2)
    if attn.rotary is not None:
        q, k = attn.rotary.apply_rope(q, k, position_ids=position_ids)
    if attn.kv_repeats > 1:
        k = k.repeat_interleave(attn.kv_repeats, dim=1)
        v = v.repeat_interleave(attn.kv_repeats, dim=1)
    if query_only:
        q = q[:, :, -1:]  # the last position sees every position: no mask
    if kernel == "math":
        z = _math_attention(q, k, v, 1.0 / attn.scale, causal=not query_only)
    else:
        z = F.scaled_dot_product_attention(q, k, v, is_causal=not query_only, scale=1.0 / attn.scale)
    z = z.transpose(1, 2).reshape(batch, z.shape[2], n_heads * d_head)
    return attn.o(z)


def query_forward(model: torch.nn.Module, hidden: Tensor, position_ids: Tensor, kernel: str = "sdpa") -> Tensor:
    """``[batch, d_vocab_out]`` logits at the query from the embedded input ``hidden`` ``[batch, pos, d_model]``."""
    last = len(model.layers) - 1
    for i, block in enumerate(model.layers):
        query_only = i == last
        out = attention(block.attn, block.ln1(hidden), position_ids, query_only, kernel)
        hidden = (hidden[:, -1:] if query_only else hidden) + out
        if not block.cfg.attn_only:
            hidden = hidden + block.mlp(block.ln2(hidden))
    return model.head(model.ln_out(hidden[:, -1]))
