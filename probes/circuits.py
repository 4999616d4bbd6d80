"""Finding the ICL circuit (previous-token heads -> induction heads) from head scores."""

from __future__ import annotations

import dataclasses

import pandas as pd


@dataclasses.dataclass(frozen=True)
class FoundCircuit:
    """Heads of the ICL circuit as found from scores (or given by the user)."""

    prev_token_heads: tuple[tuple[int, int], ...]
    induction_heads: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        def fmt(heads):
            return ", ".join(f"L{layer}H{h}" for layer, h in heads) or "none"

        return f"previous-token {fmt(self.prev_token_heads)} -> induction {fmt(self.induction_heads)}"


def _top_heads(table: pd.DataFrame, metric: str, rel: float, floor: float) -> list[tuple[int, int]]:
    rows = table[table.metric == metric].sort_values("value", ascending=False)
    if rows.empty:
        return []
    best = rows.value.iloc[0]
    keep = rows[rows.value >= max(floor, rel * best)]
    if keep.empty:
        keep = rows.iloc[:1]
    return [(int(r.layer), int(r.head)) for r in keep.itertuples()]


def find_icl_circuit(scores: pd.DataFrame, rel: float = 0.5, floor: float = 0.2) -> FoundCircuit:
    """Pick induction heads (layer >= 1) and previous-token heads in earlier layers.

    A head is kept if its score is at least ``max(floor, rel * best)``; the best head is
    always kept, so a circuit exists even before it has formed (its scores say how well).

    Args:
        scores: rows of :func:`probes.scores.head_scores` (``metric, layer, head, value``).
        rel: fraction of the best head's score a head needs.
        floor: absolute score a head needs (beyond the best one).
    """
    induction = _top_heads(scores[scores.layer >= 1], "task_induction", rel, floor)
    first = min((layer for layer, _ in induction), default=1)
    prev = _top_heads(scores[scores.layer < first], "prev_token", rel, floor)
    return FoundCircuit(tuple(sorted(prev)), tuple(sorted(induction)))
