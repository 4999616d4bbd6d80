"""Edge scores: exact activation patching, EAP and EAP-IG, as tidy tables.

The score of edge ``e`` is the metric it carries: ``M(all edges) - M(all edges but e)``,
``e`` patched (:mod:`probes.edge_patching`) and everything else clean. A positive score means
the edge supports the metric (e.g. the logit difference of the right label).

``exact``: one patched forward pass per edge (the ground truth; ``n_edges`` passes).

``eap`` (edge attribution patching, Syed et al. 2023): the first-order estimate
``-(patch_s - out_s) . dM/d input_r``, which is the gradient of the metric with respect to the
edge mask at ``m = 1``: one forward and one backward pass for every edge at once.

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
from torch import Tensor

from icl_circuits.data.batch import Batch
from probes.ablation import as_tokens
from probes.edge_patching import Metric, full_mask, patch_edges, patched_metric, query_metric
from probes.graph import Graph

METHODS = ("exact", "eap", "eap-ig")


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
    model, graph: Graph, tokens: Batch | Tensor, patch: dict[str, Tensor], metric: Metric, max_rows: int = 4096
) -> Tensor:
    """``M(clean) - M(edge e patched)`` for every edge (``[n_edges]``).

    The single-edge patches run batched: the sequences are repeated once per edge of a chunk,
    each copy with its own mask (one pass per ``max_rows`` rows), so the cost is
    ``n_edges * batch`` sequences in few Python passes.
    """
    tokens = as_tokens(tokens)
    n = tokens.shape[0]
    clean = patched_metric(model, graph, tokens, patch, full_mask(graph), metric)
    per = max(1, max_rows // n)
    out = torch.empty(graph.n_edges)
    for start in range(0, graph.n_edges, per):
        idx = torch.arange(start, min(start + per, graph.n_edges))
        mask = torch.ones(len(idx), graph.n_edges)
        mask[torch.arange(len(idx)), idx] = 0.0
        rep_patch = {k: v if v.shape[0] == 1 else v.repeat(len(idx), 1, 1) for k, v in patch.items()}
        with torch.no_grad(), patch_edges(model, graph, rep_patch, mask.repeat_interleave(n, 0)):
            logits = model(tokens.repeat(len(idx), 1, 1))[:, -1]
        for j, i in enumerate(idx.tolist()):
            out[i] = clean - float(metric(logits[j * n : (j + 1) * n]))
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
    """Scores ``[n_edges]`` by ``method`` (``exact``, ``eap`` or ``eap-ig``); see the module doc."""
    if method == "exact":
        return exact_edge_scores(model, graph, tokens, patch, metric)
    if method == "eap":
        return mask_gradient(model, graph, tokens, patch, metric, 1.0)[0]
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
    rho = float(sel[a].rank().corr(sel[b].rank())) if n > 1 else float("nan")
    top_a = set(wide[a].abs().sort_values(ascending=False).index[:n])
    return {"spearman": rho, "n_edges": n, "top_overlap": len(top_a & set(order[:n])) / max(n, 1)}
