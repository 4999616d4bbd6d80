"""Circuit discovery: prune the edge graph to a circuit at a stated faithfulness target.

Given edge scores (:mod:`probes.eap`), edges are added in order of ``|score|`` until the
circuit alone (every other edge patched) recovers ``target`` of the behaviour:

    faithfulness  = (M(C) - M(empty)) / (M(G) - M(empty))
    completeness  = (M(G) - M(G minus C)) / (M(G) - M(empty))

with ``M`` the metric (logit difference of the target by default), ``G`` every edge,
``empty`` every edge patched. The smallest such prefix is found by bisection over the prefix
size (``log2(n_edges)`` patched passes; faithfulness is usually but not always monotone in
the prefix, so the prefix found is minimal among the ones bisection visits). Edges into a
sender whose output no kept edge reads are then dropped: they change nothing.

A circuit is ``present`` only if the behaviour exists at all: ``M(G) - M(empty)`` at least
``min_effect`` (logit units). Otherwise faithfulness is undefined and the circuit is empty.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.models.build import model_layout
from probes.eap import edge_scores
from probes.edge_patching import (
    Metric,
    full_mask,
    logit_diff,
    mask_of,
    metric_logits,
    model_input,
    patch_edges,
    patch_values,
)
from probes.graph import Graph, build_graph

#: Default faithfulness target of :func:`discover`.
TARGET = 0.9
#: Least ``M(G) - M(empty)`` (logits) for a circuit to be looked for.
MIN_EFFECT = 1.0


@dataclasses.dataclass(frozen=True)
class Circuit:
    """A discovered circuit and how well it explains the behaviour.

    Attributes:
        edges: edge names in the circuit, best first.
        n_total: edges in the model's graph.
        faithfulness: share of the behaviour the circuit alone keeps (NaN if absent).
        completeness: share of the behaviour removed by patching the circuit (NaN if absent).
        effect: ``M(G) - M(empty)``, the behaviour to explain (logits).
        metric_clean / metric_circuit / metric_empty: the metric with every / the circuit's /
            no edge.
        acc_clean / acc_circuit / acc_empty: accuracy at the query under the same masks.
        present: the behaviour exists (``effect >= min_effect``).
        scores: tidy edge table with ``score`` and ``in_circuit``.
    """

    edges: tuple[str, ...]
    n_total: int
    faithfulness: float
    completeness: float
    effect: float
    metric_clean: float
    metric_circuit: float
    metric_empty: float
    acc_clean: float
    acc_circuit: float
    acc_empty: float
    present: bool
    scores: pd.DataFrame

    @property
    def size(self) -> int:
        return len(self.edges)

    def summary(self) -> dict:
        """One flat row (no edge lists) for tables."""
        return {
            "n_edges": self.size,
            "n_total": self.n_total,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
            "effect": self.effect,
            "metric_clean": self.metric_clean,
            "metric_circuit": self.metric_circuit,
            "metric_empty": self.metric_empty,
            "acc_clean": self.acc_clean,
            "acc_circuit": self.acc_circuit,
            "acc_empty": self.acc_empty,
            "present": self.present,
        }


def _run_with(model, graph, tokens, patch, mask, metric: Metric, accuracy) -> tuple[float, float]:
    with torch.no_grad(), patch_edges(model, graph, patch, mask):
        logits = metric_logits(model(model_input(tokens)), metric)
    return float(metric(logits)), float(accuracy(logits))


def _label_accuracy(target_ids: Tensor):
    return lambda logits: (logits.argmax(-1) == target_ids).float().mean()


def drop_dangling(graph: Graph, edges: list[str]) -> list[str]:
    """``edges`` without those into heads / MLPs whose output no kept edge reads (order kept).

    A key / value input of a key-value head (grouped-query attention) is read by its group's
    query heads: it stays while one of them is read.
    """
    kept = list(edges)
    by_name = {e.name: e for e in graph.edges}
    readers = {e.receiver: graph.reading_heads(e.receiver) or [e.receiver.split(".")[0]] for e in graph.edges}
    while True:
        read = {by_name[e].sender for e in kept}
        new = [
            e for e in kept if by_name[e].receiver == "readout" or any(n in read for n in readers[by_name[e].receiver])
        ]
        if len(new) == len(kept):
            return new
        kept = new


def prune(
    model,
    graph: Graph,
    tokens: Tensor,
    target_ids: Tensor,
    patch: dict[str, Tensor],
    scores: Tensor,
    target: float = TARGET,
    min_effect: float = MIN_EFFECT,
    metric: Metric | None = None,
    accuracy=None,
) -> Circuit:
    """The smallest prefix of edges by ``|scores|`` whose faithfulness reaches ``target``.

    Args:
        model: TransformerBridge in eval mode.
        graph: its graph.
        tokens: int32 model input (a language model's ``[batch, pos]`` ids).
        target_ids: ``[batch]`` labels (None when ``metric`` and ``accuracy`` are given).
        patch: sender patch values.
        scores: ``[n_edges]`` edge scores.
        target: faithfulness to reach (0..1).
        min_effect: least ``M(G) - M(empty)`` for the circuit to be present.
        metric: the metric (default: the logit difference of ``target_ids`` at the query).
        accuracy: a function of the same logits (default: the query's argmax is the target).

    Returns:
        The :class:`Circuit`.
    """
    metric = metric or logit_diff(target_ids)
    accuracy = accuracy or _label_accuracy(target_ids)

    def run(model, graph, tokens, patch, mask):
        return _run_with(model, graph, tokens, patch, mask, metric, accuracy)

    order = [graph.edges[i].name for i in torch.argsort(scores.abs(), descending=True, stable=True).tolist()]
    m_clean, a_clean = run(model, graph, tokens, patch, full_mask(graph, 1.0))
    m_empty, a_empty = run(model, graph, tokens, patch, full_mask(graph, 0.0))
    effect = m_clean - m_empty
    table = graph.table().assign(score=scores.numpy())
    if effect < min_effect:
        nan = float("nan")
        return Circuit(
            (), graph.n_edges, nan, nan, effect, m_clean, m_empty, m_empty, a_clean, a_empty, a_empty, False,
            table.assign(in_circuit=False),
        )  # fmt: skip

    def faith(k: int) -> float:
        m, _ = run(model, graph, tokens, patch, mask_of(graph, order[:k]))
        return (m - m_empty) / effect

    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        if faith(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    edges = drop_dangling(graph, order[:lo])
    m_circ, a_circ = run(model, graph, tokens, patch, mask_of(graph, edges))
    comp_mask = full_mask(graph, 1.0) - mask_of(graph, edges)
    m_comp, _ = run(model, graph, tokens, patch, comp_mask)
    return Circuit(
        edges=tuple(edges),
        n_total=graph.n_edges,
        faithfulness=(m_circ - m_empty) / effect,
        completeness=(m_clean - m_comp) / effect,
        effect=effect,
        metric_clean=m_clean,
        metric_circuit=m_circ,
        metric_empty=m_empty,
        acc_clean=a_clean,
        acc_circuit=a_circ,
        acc_empty=a_empty,
        present=True,
        scores=table.assign(in_circuit=table["edge"].isin(edges)),
    )


def discover(
    model,
    batch: Batch,
    method: str = "eap-ig",
    target: float = TARGET,
    patch_method: str = "mean",
    reference: Batch | None = None,
    steps: int = 5,
    graph: Graph | None = None,
    min_effect: float = MIN_EFFECT,
) -> Circuit:
    """Discover the circuit behind the logit difference of ``batch``'s targets.

    Args:
        model: TransformerBridge in eval mode.
        batch: the sequences (e.g. ``source.eval_batch("IC", 256)``).
        method: edge scores: ``exact``, ``eap`` or ``eap-ig`` (:mod:`probes.eap`).
        target: faithfulness to reach.
        patch_method: ``mean`` (over ``reference``, default ``batch``), ``corrupt`` (outputs
            on ``reference``) or ``zero``.
        reference: reference or corrupted batch.
        steps: EAP-IG steps.
        graph: the model's graph (built when None).
        min_effect: least behaviour (logits) for a circuit to be looked for.

    Returns:
        The :class:`Circuit`.
    """
    graph = graph or build_graph(model)
    tokens = batch.tokens()
    patch = patch_values(model, graph, patch_method, reference if reference is not None else batch)
    scores = edge_scores(model, graph, tokens, patch, logit_diff(batch.target), method, steps)
    return prune(model, graph, tokens, batch.target, patch, scores, target, min_effect)


def overlap(a: Circuit, b: Circuit) -> dict:
    """Shared edges of two circuits: ``shared``, ``only_a``, ``only_b``, ``jaccard`` (NaN if both empty)."""
    sa, sb = set(a.edges), set(b.edges)
    union = sa | sb
    return {
        "shared": len(sa & sb),
        "only_a": len(sa - sb),
        "only_b": len(sb - sa),
        "jaccard": len(sa & sb) / len(union) if union else float("nan"),
    }


def split_circuits(
    model,
    source,
    splits: list[str] | None = None,
    n: int = 256,
    method: str = "eap-ig",
    target: float = TARGET,
    steps: int = 5,
    min_effect: float = MIN_EFFECT,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Circuits of the ICL and IWL splits (or ``splits``) of a run's data source.

    A packed-layout model (one token per item, :func:`icl_circuits.models.build.model_layout`)
    has one embedding node ``emb`` (``build_graph(model, split_embed=False)``): its tokens hold
    exemplar and label together.

    Returns:
        ``(circuits, edges)``: one row per split (``split``, ``role`` ICL/IWL/"", the
        :meth:`Circuit.summary` columns, ``edges`` joined by spaces, and ``jaccard_icl_iwl``),
        and the tidy edge table with ``split``, ``score`` and ``in_circuit``.
    """
    roles = {source.icl_split: "ICL", source.iwl_split: "IWL"}
    splits = splits or [s for s in (source.icl_split, source.iwl_split) if s]
    graph = build_graph(model, split_embed=model_layout(model) != "packed")
    rows, edges, found = [], [], {}
    for split in splits:
        batch = source.eval_batch(split, n)
        circuit = discover(model, batch, method, target, steps=steps, graph=graph, min_effect=min_effect)
        found[roles.get(split, split)] = circuit
        rows.append(
            {"split": split, "role": roles.get(split, ""), **circuit.summary(), "edges": " ".join(circuit.edges)}
        )
        edges.append(circuit.scores.assign(split=split, method=method))
    circuits = pd.DataFrame(rows)
    if "ICL" in found and "IWL" in found:
        circuits["jaccard_icl_iwl"] = overlap(found["ICL"], found["IWL"])["jaccard"]
    return circuits, pd.concat(edges, ignore_index=True)
