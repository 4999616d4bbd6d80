"""Finding the ICL circuit (previous-token heads -> induction heads) from head scores.

A head joins the circuit only if its score passes a stated absolute threshold (and is within
``rel`` of the best head): a model at chance, or one without induction heads, has *no*
circuit, and says why. :func:`random_heads` draws the control: as many random heads outside
the circuit, whose ablation the report compares with the circuit's; where no such draw exists
(the circuit is half the model or more), :func:`complement` and each head alone stand in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

#: Default score a head needs: half of the query's attention on the matching label tokens
#: (task induction) or half of each label's attention on its own exemplar (previous token).
#: Uniform attention gives about ``B / (2N + 1)`` and ``H(N) / N`` (0.24 and 0.17 for the demo).
THRESHOLD = 0.5


def fmt_heads(heads) -> str:
    """``L0H1, L1H0`` (or ``none``)."""
    return ", ".join(f"L{layer}H{h}" for layer, h in heads) or "none"


@dataclasses.dataclass(frozen=True)
class FoundCircuit:
    """Heads of the ICL circuit as found from scores (or given by the user).

    Attributes:
        prev_token_heads: ``((layer, head), ...)`` previous-token heads.
        induction_heads: ``((layer, head), ...)`` induction heads; empty means no circuit.
        threshold: the score a head had to reach (None: given by the user).
        best: the best induction head's ``(layer, head, task_induction)``, for the report.
    """

    prev_token_heads: tuple[tuple[int, int], ...]
    induction_heads: tuple[tuple[int, int], ...]
    threshold: float | None = None
    best: tuple[int, int, float] | None = None

    @property
    def heads(self) -> tuple[tuple[int, int], ...]:
        """Every head of the circuit, previous-token heads first, without repeats."""
        return tuple(dict.fromkeys((*self.prev_token_heads, *self.induction_heads)))

    @property
    def found(self) -> bool:
        """Whether there is a circuit at all (at least one induction head)."""
        return bool(self.induction_heads)

    def describe(self) -> str:
        if not self.found:
            why = "no head in layer >= 1"
            if self.threshold is not None:
                why += f" reaches the task-induction threshold {self.threshold:.2f}"
            if self.best is not None:
                why += f"; best L{self.best[0]}H{self.best[1]} {self.best[2]:.2f}"
            return f"none ({why})"
        text = f"previous-token {fmt_heads(self.prev_token_heads)} -> induction {fmt_heads(self.induction_heads)}"
        if self.threshold is not None:
            text += f" (heads scoring >= {self.threshold:.2f})"
        return text


def _passing(table: pd.DataFrame, metric: str, rel: float, threshold: float) -> list[tuple[int, int]]:
    rows = table[table.metric == metric].sort_values("value", ascending=False)
    if rows.empty:
        return []
    keep = rows[rows.value >= max(threshold, rel * rows.value.iloc[0])]
    return [(int(r.layer), int(r.head_index)) for r in keep.itertuples()]


def find_icl_circuit(scores: pd.DataFrame, rel: float = 0.5, threshold: float = THRESHOLD) -> FoundCircuit:
    """Pick induction heads (layer >= 1) and previous-token heads in earlier layers.

    Scores without ``prev_token`` rows (the packed layout, where they are undefined) pick
    induction-like heads in any layer and no previous-token heads.

    A head is kept if its score is at least ``max(threshold, rel * best)``. If no head in
    layer >= 1 has a ``task_induction`` score of at least ``threshold``, there is no circuit
    (both head lists are empty); previous-token heads are only looked for below the first
    induction head's layer.

    Args:
        scores: rows of :func:`probes.scores.head_scores` (``metric, layer, head_index, value``).
        rel: fraction of the best head's score a head needs.
        threshold: absolute score a head needs (see :data:`THRESHOLD`).
    """
    # Without previous-token scores (the packed layout: a token holds its item's label) one
    # layer suffices: an induction-like head in any layer is the circuit, with no
    # previous-token heads before it.
    one_layer = not (scores.metric == "prev_token").any()
    late = scores[(scores.layer >= (0 if one_layer else 1)) & (scores.metric == "task_induction")]
    best = None
    if not late.empty:
        top = late.sort_values("value", ascending=False).iloc[0]
        best = (int(top.layer), int(top.head_index), float(top.value))
    induction = _passing(late, "task_induction", rel, threshold)
    if not induction:
        return FoundCircuit((), (), threshold, best)
    first = min(layer for layer, _ in induction)
    prev = _passing(scores[scores.layer < first], "prev_token", rel, threshold)
    return FoundCircuit(tuple(sorted(prev)), tuple(sorted(induction)), threshold, best)


def random_heads(
    n_layers: int,
    n_heads: int,
    k: int,
    n_draws: int = 3,
    seed: int = 0,
    exclude: tuple[tuple[int, int], ...] = (),
) -> list[tuple[tuple[int, int], ...]]:
    """``n_draws`` sets of ``k`` heads drawn uniformly without replacement, outside ``exclude``.

    The control for a circuit of ``k`` heads (``exclude``: the circuit's heads): the same draws
    for every checkpoint (seeded). Empty if ``k`` is 0 or at least the number of heads left
    to draw from: then no draw is random (it is every head left, or none exists).
    """
    banned = set(exclude)
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in banned]
    if not 0 < k < len(pool):
        return []
    rng = np.random.default_rng(seed)
    return [
        tuple(pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False).tolist())) for _ in range(n_draws)
    ]


def complement(n_layers: int, n_heads: int, heads) -> tuple[tuple[int, int], ...]:
    """Every head of the model outside ``heads``, in layer order."""
    inside = set(heads)
    return tuple((layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in inside)
