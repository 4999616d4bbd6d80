"""Edge scores: exact activation patching, EAP and EAP-IG, as tidy tables.

The score of edge ``e`` is the metric it carries: ``M(all edges) - M(all edges but e)``,
``e`` patched (:mod:`probes.edge_patching`) and everything else clean. A positive score means
the edge supports the metric (e.g. the logit difference of the right label).

``exact``: one patched forward pass per edge (the ground truth; ``n_edges`` passes).

``eap`` (edge attribution patching, Syed et al. 2023): the first-order estimate
``-(patch_s - out_s) . dM/d input_r``, which is the gradient of the metric with respect to the
edge mask at ``m = 1``: one forward and one backward pass for every edge at once. The
gradients with respect to every receiver input come from zero probes added to the inputs
(:func:`probes.edge_patching.patch_edges` with ``probes``), and the scores are one product per
receiver group, so a language model's ~10^5 edges cost one forward and backward pass.

``atp*`` (AtP* of Kramár et al. 2024, its QK fix): EAP, except for the edges into queries and
keys. There the first-order estimate fails when the receiver's softmax is saturated (moving a
query changes nothing to first order until the pattern flips), so the receiver's attention
pattern is recomputed exactly with the one edge patched (``ln1``, ``W_Q``/``W_K``, rotary,
causal softmax; every other input clean) and the score is
``-(pattern_patched - pattern) . dM/d pattern``. The cost is one attention-pattern
computation per sender and receiver layer, no extra forward pass of the model.

``eap-ig`` (Hanna et al. 2024): the gradient averaged along the straight path from the fully
patched model (``m = 0``) to the clean one (``m = 1``), at ``steps`` midpoints. We integrate
over the edge mask, as auto-circuit does, rather than over the input embeddings: both
interpolate between the patched and the clean run, and ours keeps the IG completeness axiom
on the graph itself (the scores sum to ``M(clean) - M(all patched)`` as ``steps`` grows).
``steps`` forward and backward passes.
"""

from __future__ import annotations

import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import Tensor

from icl_circuits.data.batch import Batch
from probes.edge_patching import (
    Metric,
    full_mask,
    groups,
    metric_logits,
    model_input,
    patch_edges,
    patched_metric,
    qkv_weights,
    query_metric,
)
from probes.graph import Graph
from probes.paths import _norm_fn

METHODS = ("exact", "eap", "eap-ig", "atp*")


def mask_gradient(
    model, graph: Graph, tokens: Batch | Tensor, patch: dict[str, Tensor], metric: Metric, alpha: float = 1.0
) -> tuple[Tensor, float]:
    """``dM/dm`` (``[n_edges]``) at the mask ``m = alpha`` everywhere, and ``M`` there."""
    mask = full_mask(graph, alpha).requires_grad_(True)
    with torch.enable_grad(), patch_edges(model, graph, patch, mask):
        value = query_metric(model, tokens, metric)
        (grad,) = torch.autograd.grad(value, mask)
    return grad.detach(), float(value.detach())


def exact_edge_scores(
    model,
    graph: Graph,
    tokens: Batch | Tensor,
    patch: dict[str, Tensor],
    metric: Metric,
    max_rows: int = 4096,
    edges: list[int] | None = None,
) -> Tensor:
    """``M(clean) - M(edge e patched)`` for every edge (``[n_edges]``), or only ``edges`` (NaN elsewhere).

    The single-edge patches run batched: the sequences are repeated once per edge of a chunk,
    each copy with its own mask (one pass per ``max_rows`` rows), so the cost is
    ``n_edges * batch`` sequences in few Python passes.
    """
    tokens = model_input(tokens)
    n = tokens.shape[0]
    clean = patched_metric(model, graph, tokens, patch, full_mask(graph), metric)
    todo = torch.arange(graph.n_edges) if edges is None else torch.as_tensor(list(edges), dtype=torch.long)
    per = max(1, max_rows // n)
    out = torch.full((graph.n_edges,), float("nan"))
    rep = (1,) * (tokens.ndim - 1)
    for start in range(0, len(todo), per):
        idx = todo[start : start + per]
        mask = torch.ones(len(idx), graph.n_edges)
        mask[torch.arange(len(idx)), idx] = 0.0
        rep_patch = {k: v if v.shape[0] == 1 else v.repeat(len(idx), 1, 1) for k, v in patch.items()}
        with torch.no_grad(), patch_edges(model, graph, rep_patch, mask.repeat_interleave(n, 0)):
            logits = metric_logits(model(tokens.repeat(len(idx), *rep)), metric)
        for j, i in enumerate(idx.tolist()):
            out[i] = clean - float(metric(logits[j * n : (j + 1) * n]))
    return out


def receiver_gradients(
    model, graph: Graph, tokens: Batch | Tensor, patch: dict[str, Tensor], metric: Metric
) -> tuple[dict, float]:
    """One clean forward and backward pass: the probes of :func:`patch_edges` with their gradients.

    Returns:
        ``(probes, M)``; ``probes["grad"][group]`` is ``dM/d input`` of the group's receivers
        (``[batch, pos, n_receivers, d_model]``), ``probes["grad_pattern"][layer]`` is
        ``dM/d pattern`` (``[batch, head, query, key]``).
    """
    probes: dict = {}
    with torch.enable_grad(), patch_edges(model, graph, patch, full_mask(graph), probes=probes):
        value = query_metric(model, tokens, metric)
        keys = list(probes["eps"]) + [f"pattern.{layer}" for layer in probes["eps_pattern"]]
        leaves = list(probes["eps"].values()) + list(probes["eps_pattern"].values())
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    out = {k: (torch.zeros_like(v) if g is None else g) for k, v, g in zip(keys, leaves, grads, strict=True)}
    probes["grad"] = {k: out[k] for k in probes["eps"]}
    probes["grad_pattern"] = {layer: out[f"pattern.{layer}"] for layer in probes["eps_pattern"]}
    for key in ("out", "resid", "q", "k", "pattern", "cos", "sin"):
        probes[key] = {k: v.detach() for k, v in probes[key].items()}
    return probes, float(value.detach())


def _sender_diffs(probes: dict, patch: dict[str, Tensor], senders: list[str]) -> Tensor:
    # [n_senders, batch, pos, d_model]: out_s - patch_s (what patching the edge removes)
    return torch.stack([probes["out"][s] - patch[s].to(probes["out"][s].dtype) for s in senders])


def eap_scores(model, graph: Graph, tokens: Batch | Tensor, patch: dict[str, Tensor], metric: Metric) -> Tensor:
    """EAP: ``(out_s - patch_s) . dM/d input_r`` for every edge, from one forward / backward pass.

    Equal to :func:`mask_gradient` at ``alpha = 1`` (tested), without a gradient through the mask.
    """
    probes, _ = receiver_gradients(model, graph, tokens, patch, metric)
    out = torch.zeros(graph.n_edges)
    for key, (senders, idx) in groups(graph).items():
        diffs = _sender_diffs(probes, patch, senders)
        out[idx] = torch.einsum("sbpd,bphd->sh", diffs, probes["grad"][key]).to(out.dtype)
    return out


def _rotate(x: Tensor, cos: Tensor | None, sin: Tensor | None) -> Tensor:
    # x: [..., pos, head, d_head]; cos / sin: [1, pos, d_head] (rotate-half convention), None: no rotary
    if cos is None:
        return x
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, :, None].to(x.dtype) + rot * sin[:, :, None].to(x.dtype)


def _pattern(q: Tensor, k: Tensor, rep: int) -> Tensor:
    # q: [..., b, p, H, e], k: [..., b, p, KV, e] (rotated) -> causal softmax [..., b, H, p, p]
    k = k.repeat_interleave(rep, dim=-2)
    scores = torch.einsum("...qhe,...khe->...hqk", q, k) / q.shape[-1] ** 0.5
    p = q.shape[-3]
    causal = torch.ones(p, p, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def atp_star_scores(
    model, graph: Graph, tokens: Batch | Tensor, patch: dict[str, Tensor], metric: Metric, chunk: int = 2**24
) -> Tensor:
    """AtP* (QK fix): EAP, with each query / key edge scored through its exact attention pattern.

    Raises:
        RuntimeError: the attention pattern cannot be recomputed from the pre-rotary queries and
            keys (an attention this function does not model: ALiBi, a softcap, another scale).
    """
    probes, _ = receiver_gradients(model, graph, tokens, patch, metric)
    with torch.no_grad():
        return _atp_star(model, graph, patch, probes, chunk)


def _atp_star(model, graph: Graph, patch: dict[str, Tensor], probes: dict, chunk: int) -> Tensor:
    out = torch.zeros(graph.n_edges)
    rep = graph.n_heads // graph.n_kv_heads
    for key, (senders, idx) in groups(graph).items():
        diffs = _sender_diffs(probes, patch, senders)
        out[idx] = torch.einsum("sbpd,bphd->sh", diffs, probes["grad"][key]).to(out.dtype)
        layer_s, _, t = key.partition(".")
        if t not in ("q", "k"):
            continue
        layer = int(layer_s[1:])
        cos, sin = probes["cos"].get(layer), probes["sin"].get(layer)
        q, k = _rotate(probes["q"][layer], cos, sin), _rotate(probes["k"][layer], cos, sin)
        clean = _pattern(q, k, rep)
        err = (clean - probes["pattern"][layer]).abs().max().item()
        if err > 1e-4:
            raise RuntimeError(f"atp*: cannot recompute blocks.{layer}.attn.hook_pattern (max error {err:.3g})")
        ln = _norm_fn(model, layer)
        W, b = qkv_weights(model, layer, t)
        resid = probes["resid"][layer]
        base = torch.einsum("bpd,hde->bphe", ln(resid), W.to(resid.dtype)) + b.to(resid.dtype)
        grad = probes["grad_pattern"][layer]  # [b, H, p, p]
        per = max(1, chunk // max(1, resid.numel() * graph.n_heads * resid.shape[1] // resid.shape[-1]))
        for start in range(0, len(senders), per):
            # resid - (out_s - patch_s): the receiver's input with the one edge patched
            x = resid[None] - diffs[start : start + per]
            moved = torch.einsum("sbpd,hde->sbphe", ln(x), W.to(x.dtype)) + b.to(x.dtype) - base
            if t == "q":
                new = _pattern(_rotate(probes["q"][layer] + moved, cos, sin), k[None], rep)
            else:
                new = _pattern(q[None], _rotate(probes["k"][layer] + moved, cos, sin), rep)
            s = -torch.einsum("sbhqk,bhqk->sh", new - clean, grad)  # [chunk, H]
            if t == "k":
                s = s.reshape(s.shape[0], graph.n_kv_heads, rep).sum(-1)
            out[idx[start : start + per]] = s.to(out.dtype)
    return out


def edge_scores(
    model,
    graph: Graph,
    tokens: Batch | Tensor,
    patch: dict[str, Tensor],
    metric: Metric,
    method: str = "eap-ig",
    steps: int = 5,
) -> Tensor:
    """Scores ``[n_edges]`` by ``method`` (``exact``, ``eap``, ``eap-ig`` or ``atp*``); see the module doc."""
    if method == "exact":
        return exact_edge_scores(model, graph, tokens, patch, metric)
    if method == "eap":
        return eap_scores(model, graph, tokens, patch, metric)
    if method == "atp*":
        return atp_star_scores(model, graph, tokens, patch, metric)
    if method == "eap-ig":
        if steps < 1:
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        grads = [mask_gradient(model, graph, tokens, patch, metric, (i + 0.5) / steps)[0] for i in range(steps)]
        return torch.stack(grads).mean(0)
    raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")


def score_table(
    model,
    graph: Graph,
    tokens: Batch | Tensor,
    patch: dict[str, Tensor],
    metric: Metric,
    methods: tuple[str, ...] = ("eap-ig",),
    steps: int = 5,
) -> pd.DataFrame:
    """Tidy edge scores: ``edge, sender, receiver, layer, head_index, input, method, score``."""
    edges = graph.table()
    frames = []
    for method in methods:
        scores = edge_scores(model, graph, tokens, patch, metric, method, steps)
        frames.append(edges.assign(method=method, score=scores.numpy()))
    return pd.concat(frames, ignore_index=True)


def rank_agreement(scores: pd.DataFrame, a: str = "eap", b: str = "exact", top: int | None = None) -> dict:
    """Spearman rank correlation of two methods' edge scores (on the top edges of ``b`` by |score|).

    Args:
        scores: a :func:`score_table` with both methods.
        a: the method checked.
        b: the reference method.
        top: compare only the ``top`` edges of ``b`` by absolute score (None: all edges).

    Returns:
        ``{"spearman", "n_edges", "top_overlap"}``; ``top_overlap`` is the share of ``b``'s
        top edges among ``a``'s top edges (same count).
    """
    wide = scores.pivot_table(index="edge", columns="method", values="score")
    order = wide[b].abs().sort_values(ascending=False).index
    n = len(order) if top is None else min(top, len(order))
    sel = wide.loc[order[:n]]
    rho = float(spearmanr(sel[a], sel[b], nan_policy="omit").statistic) if n > 1 else float("nan")
    top_a = set(wide[a].abs().sort_values(ascending=False).index[:n])
    return {"spearman": rho, "n_edges": n, "top_overlap": len(top_a & set(order[:n])) / max(n, 1)}
