"""The training forward of S same-shaped models at once, on their stacked parameters, without vmap.

The vectorised seeds (:class:`icl_circuits.training.ensemble.VmapEnsemble`) hold each
parameter of S models as one tensor with a leading seed dimension (``params[name]`` is
``[S, *shape]``, the names the model's state-dict keys). :func:`stacked_query_logits` runs
the query-only training forward of :mod:`.fast` on all of them: every linear is one
``torch.baddbmm`` over the seeds, causal attention runs on the seeds and batches merged
(``[S * batch, head_index, pos, d_head]``), a norm normalises without affine and its
per-seed gain and bias fold into the next linear's weights, and the label embedding looks up
each seed's own table. The last layer projects the query at its position only and attends
with elementwise products (one query against ``pos`` keys). Unlike ``torch.func.vmap`` of
the single-model forward, no biased linear is split into a matmul and an add and no batching
copies are made. Gradients land on the stacked tensors themselves.

It pays most on small models: a model whose single step already runs its matmuls near the
CPU's rate (``demo``) gains little, since its elementwise ops and attention cost as much per
seed stacked as alone (``benchmarks/RESULTS.md``, "Seed replicates: vectorised against
separate runs, and the rule", which states that CPU bound).

:func:`supports_stacked` says whether a model's architecture is covered; the ensemble falls
back to ``vmap`` otherwise. ``tests/test_stacked_forward.py`` checks logits and gradients
against :func:`icl_circuits.models.build.query_logits` per seed under every option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.model_bridge.sources.native.model import (
    NativeLayerNormPre,
    NativeMLP,
    NativeRMSNorm,
    NativeRMSNormPre,
)

from icl_circuits.data.batch import unpack_tokens
from icl_circuits.models.embed import ExemplarEmbed, MLPReadout
from icl_circuits.models.fast import supports_fast_path

#: Norm modules without parameters: applied as they are, they act on the last dimension only.
_PARAM_FREE_NORMS = (NativeLayerNormPre, NativeRMSNormPre, nn.Identity)


def _norm_supported(norm: nn.Module) -> bool:
    if isinstance(norm, nn.LayerNorm):
        return norm.elementwise_affine and norm.bias is not None and len(norm.normalized_shape) == 1
    return isinstance(norm, (NativeRMSNorm, *_PARAM_FREE_NORMS))


def supports_stacked(model: nn.Module) -> bool:
    """Whether :func:`stacked_query_logits` computes exactly ``model``'s training forward.

    Covered: linear and identity encoders, both layouts, every positional scheme (learned,
    fixed tables, rotary), label init and bias, ``input_norm``, LN / LNPre / RMS / no norm,
    attention-only or MLP blocks, the Nguyen & Reddy attention options (they are parameter
    values) and linear or MLP readouts (``binary_logit`` included). Not covered (vmap then):
    the CNN encoder, non-causal or soft-capped attention, gated or SoLU-LN MLPs, logit
    soft caps and any module this file does not know.
    """
    native = getattr(model, "_orig_mod", model)
    embed = getattr(native, "tok_embed", None)
    if not isinstance(embed, ExemplarEmbed) or embed.sparse_encoder or type(embed.encoder) is not nn.Linear:
        return False
    if embed.norm is not None and not _norm_supported(embed.norm):
        return False
    if not hasattr(native, "layers") or not supports_fast_path(native):
        return False
    if float(getattr(native, "output_logits_soft_cap", 0.0)) > 0:
        return False
    for block in native.layers:
        if not _norm_supported(block.ln1) or type(block.attn.o) is not nn.Linear:
            return False
        if not block.cfg.attn_only and (
            not _norm_supported(block.ln2) or type(block.mlp) is not NativeMLP or block.mlp.ln is not None
        ):
            return False
    head = native.head
    head_ok = type(head) is nn.Linear or (
        type(head) is MLPReadout and all(type(m) in (nn.Linear, nn.ReLU) for m in head.mlp)
    )
    return head_ok and _norm_supported(native.ln_out)


def _seedwise(v: Tensor, ndim: int) -> Tensor:
    """``v`` ``[S, d]`` viewed as ``[S, 1, ..., 1, d]`` to broadcast against an ``ndim``-dim activation."""
    return v.view(v.shape[0], *([1] * (ndim - 2)), v.shape[-1])


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Each seed's ``F.linear``: ``x`` ``[S, ..., d_in]``, ``weight`` ``[S, d_out, d_in]``, ``bias`` ``[S, d_out]``."""
    lead = x.shape[:-1]
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # [S, n, d_in]
    if bias is None:
        out = torch.bmm(flat, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.view(*lead, weight.shape[1])


#: A norm's per-seed affine ``(gain [S, d_model] or None, bias [S, d_model] or None)``.
Affine = tuple[Tensor | None, Tensor | None]


def _normalise(norm: nn.Module, params: dict[str, Tensor], name: str, x: Tensor) -> tuple[Tensor, Affine]:
    """``norm(x)`` before its affine, and each seed's affine (folded into the next linear by :func:`_fold`)."""
    if isinstance(norm, _PARAM_FREE_NORMS):
        return norm(x), (None, None)
    gain = params[f"{name}.weight"]
    if isinstance(norm, NativeRMSNorm):
        x32 = x.to(torch.float32)
        rms_inv = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + norm.eps)
        return (x32 * rms_inv).to(x.dtype), (gain, None)
    return F.layer_norm(x, norm.normalized_shape, eps=norm.eps), (gain, params[f"{name}.bias"])


def _norm(norm: nn.Module, params: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """Each seed's ``norm(x)``: normalise without affine, then that seed's gain (and bias)."""
    x, (gain, bias) = _normalise(norm, params, name, x)
    if gain is not None:
        x = _seedwise(gain, x.ndim) * x
    return x if bias is None else x + _seedwise(bias, x.ndim)


def _fold(weight: Tensor, bias: Tensor | None, affine: Affine) -> tuple[Tensor, Tensor | None]:
    """A linear after a norm's affine as one linear on the normalised input.

    ``W (g * x + b) + c = (W diag(g)) x + (W b + c)``: the affine then costs ``[S, d_out,
    d_model]`` operations instead of two passes over the activation (and its backward).
    """
    gain, shift = affine
    if gain is None:
        return weight, bias
    folded = weight * gain.unsqueeze(1)  # [S, d_out, d_model]
    if shift is None:
        return folded, bias
    extra = torch.bmm(weight, shift.unsqueeze(-1)).squeeze(-1)  # [S, d_out]
    return folded, extra if bias is None else bias + extra


def _fold_if_cheaper(x: Tensor, affine: Affine, d_out: int) -> tuple[Tensor, Affine]:
    """Keep a norm's affine for :func:`_fold` into the next linears (``d_out`` outputs in all)
    only where that costs less: folding touches ``d_out x d_model`` weights per seed (and its
    backward twice that), the affine itself ``rows x d_model`` activations. With fewer rows per
    seed than ``d_out`` (chan2024-stylized: 96 rows against QKV's 192 and the MLP's 256) the
    affine is applied to ``x`` here and ``(None, None)`` returned."""
    gain, shift = affine
    if (gain is None and shift is None) or x[0].numel() // x.shape[-1] >= d_out:
        return x, affine
    if gain is not None:
        x = _seedwise(gain, x.ndim) * x
    return (x if shift is None else x + _seedwise(shift, x.ndim)), (None, None)


def _readout_width(head: nn.Module) -> int:
    """Outputs of the readout's first linear (what a folded ``ln_out`` affine multiplies)."""
    if isinstance(head, nn.Linear):
        return head.out_features
    return next((m.out_features for m in head.mlp if isinstance(m, nn.Linear)), head.out.out_features)


def _embed(embed: ExemplarEmbed, params: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """:class:`ExemplarEmbed` per seed: ``tokens`` ``[S, batch, pos, d_in + 1]`` -> ``[S, batch, pos, d_model]``."""
    x, label = unpack_tokens(tokens, embed.d_in)  # [S, batch, pos, d_in], [S, batch, pos]
    n_seeds = tokens.shape[0]
    table = params["tok_embed.weight"]  # [S, n_labels, d_model]
    n_labels = table.shape[1]
    is_label = (label >= 0).unsqueeze(-1)  # [S, batch, pos, 1]
    # Seed s's label y is row s * n_labels + y of the seeds' tables laid end to end.
    offset = torch.arange(n_seeds, device=tokens.device).view(n_seeds, 1, 1) * n_labels
    lab_emb = F.embedding(label.clamp(min=0).long() + offset, table.reshape(-1, table.shape[-1]))
    if embed.label_bias is not None:
        lab_emb = lab_emb + _seedwise(params["tok_embed.label_bias"], lab_emb.ndim)
    enc = _linear(x, params["tok_embed.encoder.weight"], params["tok_embed.encoder.bias"])
    if embed.packed:
        out = enc + lab_emb * is_label.to(lab_emb.dtype)
    else:
        out = torch.where(is_label, lab_emb, enc)
    return out if embed.norm is None else _norm(embed.norm, params, "tok_embed.norm", out)


def _rope(rotary: nn.Module, x: Tensor, positions: slice) -> Tensor:
    """``NativeRotary`` on ``x`` ``[..., pos, head_index, d_head]`` at ``positions`` (one per ``pos``)."""
    rd = rotary.rotary_dim
    cos = rotary.cos_cached[positions].to(x.dtype).unsqueeze(-2)  # [pos, 1, rotary_dim]
    sin = rotary.sin_cached[positions].to(x.dtype).unsqueeze(-2)
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x_rot = x_rot * cos + rotary._rotate_half(x_rot) * sin
    return torch.cat([x_rot, x_pass], dim=-1) if x_pass.shape[-1] else x_rot


def _attention(attn: nn.Module, params: dict[str, Tensor], name: str, x: Tensor, affine: Affine, kernel: str) -> Tensor:
    """Each seed's causal attention output ``[S, batch, pos, d_model]`` from the normalised
    ``x`` ``[S, batch, pos, d_model]`` and the norm's ``affine``."""
    n_seeds, batch, seq, _ = x.shape
    n_heads, n_kv, d_head = attn.n_heads, attn.n_kv_heads, attn.d_head
    weight = torch.cat([params[f"{name}.{p}.weight"] for p in "qkv"], dim=1)  # [S, d_qkv, d_model]
    bias = torch.cat([params[f"{name}.{p}.bias"] for p in "qkv"], dim=1)  # [S, d_qkv]
    qkv = _linear(x, *_fold(weight, bias, affine)).view(n_seeds * batch, seq, n_heads + 2 * n_kv, d_head)
    if attn.rotary is not None:
        q, k, v = qkv.split([n_heads, n_kv, n_kv], dim=2)
        qkv = torch.cat([_rope(attn.rotary, q, slice(0, seq)), _rope(attn.rotary, k, slice(0, seq)), v], dim=2)
    # [S * batch, head_index, pos, d_head]: seeds and batch merged, one attention call.
    q, k, v = qkv.transpose(1, 2).split([n_heads, n_kv, n_kv], dim=1)
    if attn.kv_repeats > 1:
        k = k.repeat_interleave(attn.kv_repeats, dim=1)
        v = v.repeat_interleave(attn.kv_repeats, dim=1)
    scale = 1.0 / attn.scale
    if kernel == "math":
        scores = (q @ k.transpose(-1, -2)) * scale
        mask = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
        z = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
    else:
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    z = z.transpose(1, 2).reshape(n_seeds, batch, seq, n_heads * d_head)  # [S, batch, pos, d_heads]
    return _linear(z, params[f"{name}.o.weight"], params[f"{name}.o.bias"])


def _query_attention(attn: nn.Module, params: dict[str, Tensor], name: str, x: Tensor, affine: Affine) -> Tensor:
    """Each seed's attention output at the last position only, ``[S, batch, 1, d_model]``.

    The query is projected at that position alone, and its attention (one query against
    ``pos`` keys) is elementwise products and sums, cheaper than tiny matmuls per sequence.
    """
    n_seeds, batch, seq, _ = x.shape
    n_heads, n_kv, d_head = attn.n_heads, attn.n_kv_heads, attn.d_head
    weight = torch.cat([params[f"{name}.{p}.weight"] for p in "kv"], dim=1)  # [S, 2 * d_kv, d_model]
    bias = torch.cat([params[f"{name}.{p}.bias"] for p in "kv"], dim=1)
    kv = _linear(x, *_fold(weight, bias, affine))  # [S, batch, pos, 2 * d_kv]
    k, v = kv.view(n_seeds * batch, seq, 2, n_kv, d_head).unbind(2)  # [S * batch, pos, kv, d_head]
    q_weight, q_bias = _fold(params[f"{name}.q.weight"], params[f"{name}.q.bias"], affine)
    q = _linear(x[:, :, -1], q_weight, q_bias).view(n_seeds * batch, n_heads, d_head)
    if attn.rotary is not None:
        q = _rope(attn.rotary, q.unsqueeze(1), slice(seq - 1, seq)).squeeze(1)
        k = _rope(attn.rotary, k, slice(0, seq))
    if attn.kv_repeats > 1:
        k = k.repeat_interleave(attn.kv_repeats, dim=2)
        v = v.repeat_interleave(attn.kv_repeats, dim=2)
    scores = (k * q.unsqueeze(1)).sum(-1) * (1.0 / attn.scale)  # [S * batch, pos, head_index]
    z = (scores.softmax(1).unsqueeze(-1) * v).sum(1)  # [S * batch, head_index, d_head]
    z = z.view(n_seeds, batch, 1, n_heads * d_head)
    return _linear(z, params[f"{name}.o.weight"], params[f"{name}.o.bias"])


def _readout(head: nn.Module, params: dict[str, Tensor], x: Tensor, affine: Affine) -> Tensor:
    """Each seed's readout: the normalised ``x`` ``[S, batch, d_model]`` -> ``[S, batch, d_vocab_out]``."""
    if isinstance(head, nn.Linear):
        return _linear(x, *_fold(params["head.weight"], params.get("head.bias"), affine))
    for i, layer in enumerate(head.mlp):
        if isinstance(layer, nn.Linear):
            x = _linear(x, *_fold(params[f"head.mlp.{i}.weight"], params[f"head.mlp.{i}.bias"], affine))
            affine = (None, None)
        else:
            x = torch.relu(x)
    z = _linear(x, *_fold(params["head.out.weight"], params["head.out.bias"], affine))
    return torch.cat([torch.zeros_like(z), z], dim=-1) if head.binary_logit else z


#: Bytes of one residual-stream activation ``[seeds, batch, pos, d_model]`` per chunk of seeds.
#: Rule: chunks stay within a core's L2 cache (1 MiB here); reason: past it, bigger chunks ran
#: slower per seed (``benchmarks/RESULTS.md``, "Seeds per chunk of the stacked forward").
CHUNK_BYTES = 2**20


def seeds_per_chunk(n_seeds: int, batch: int, seq: int, d_model: int) -> int:
    """Seeds computed together: as few equal chunks as keep one activation within :data:`CHUNK_BYTES`."""
    per_seed = batch * seq * d_model * 4
    n_chunks = max(1, -(-n_seeds * per_seed // CHUNK_BYTES))
    return -(-n_seeds // n_chunks)


def stacked_query_logits(
    model: nn.Module, params: dict[str, Tensor], tokens: Tensor, kernel: str = "math", chunk: int | None = None
) -> Tensor:
    """Query logits of S models that share ``model``'s architecture, from their stacked parameters.

    Equals ``torch.stack([query_logits(model_s, tokens[s]) for s in range(S)])`` where
    ``model_s`` carries ``{k: v[s] for k, v in params.items()}`` (float tolerance).

    Args:
        model: any one of the models (:func:`supports_stacked`): its architecture, attention
            scales, rotary tables and activation are read, never its parameters.
        params: every parameter of the model (frozen ones too) stacked on a leading seed
            dimension: ``{name: [S, *shape]}`` with the model's state-dict names.
        tokens: ``[S, batch, pos, d_in + 1]`` int32 tokens of :meth:`icl_circuits.data.Batch.tokens`,
            seed ``s``'s batch at index ``s``.
        kernel: the causal layers' attention as ``math`` (matmuls and a softmax; the faster on
            small chunks, ``benchmarks/RESULTS.md``, "Seeds per chunk of the stacked forward") or
            ``sdpa`` (``scaled_dot_product_attention``).
        chunk: seeds computed together (one graph per chunk); ``None``: :func:`seeds_per_chunk`.

    Returns:
        ``[S, batch, d_vocab_out]`` logits at the last (query) position.
    """
    native = getattr(model, "_orig_mod", model)
    n_seeds, batch, seq = tokens.shape[:3]
    if seq > native.cfg.n_ctx:
        raise ValueError(f"input length {seq} exceeds n_ctx={native.cfg.n_ctx}")
    if chunk is None:
        chunk = seeds_per_chunk(n_seeds, batch, seq, native.cfg.d_model)
    if chunk >= n_seeds:
        return _forward(native, params, tokens, kernel)
    parts = {k: v.split(chunk) for k, v in params.items()}
    return torch.cat(
        [
            _forward(native, {k: v[i] for k, v in parts.items()}, part, kernel)
            for i, part in enumerate(tokens.split(chunk))
        ]
    )


def _forward(native: nn.Module, params: dict[str, Tensor], tokens: Tensor, kernel: str) -> Tensor:
    """:func:`stacked_query_logits` on one chunk of seeds."""
    seq = tokens.shape[2]
    hidden = _embed(native.tok_embed, params, tokens)  # [S, batch, pos, d_model]
    if native.pos is not None:
        hidden = hidden + params["pos.weight"][:, None, :seq]  # [S, 1, pos, d_model]
    last = len(native.layers) - 1
    for i, block in enumerate(native.layers):
        name = f"layers.{i}"
        attn = block.attn
        normed, affine = _normalise(block.ln1, params, f"{name}.ln1", hidden)
        normed, affine = _fold_if_cheaper(normed, affine, (attn.n_heads + 2 * attn.n_kv_heads) * attn.d_head)
        if i == last:  # the query's row only
            hidden = hidden[:, :, -1:] + _query_attention(attn, params, f"{name}.attn", normed, affine)
        else:
            hidden = hidden + _attention(attn, params, f"{name}.attn", normed, affine, kernel)
        if not block.cfg.attn_only:
            fc_in = _pair(params, f"{name}.mlp.fc_in")
            normed, affine = _normalise(block.ln2, params, f"{name}.ln2", hidden)
            normed, affine = _fold_if_cheaper(normed, affine, fc_in[0].shape[1])
            mid = _linear(normed, *_fold(*fc_in, affine))
            hidden = hidden + _linear(block.mlp.act(mid), *_pair(params, f"{name}.mlp.fc_out"))
    final, affine = _normalise(native.ln_out, params, "ln_out", hidden[:, :, -1])  # [S, batch, d_model]
    final, affine = _fold_if_cheaper(final, affine, _readout_width(native.head))
    return _readout(native.head, params, final, affine)


def _pair(params: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
    return params[f"{name}.weight"], params[f"{name}.bias"]
