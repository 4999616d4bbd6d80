"""The discovered ICL and IWL circuits over training, and how many edges they share.

At a run's checkpoints, :func:`probes.circuits_over_training.discover_run` finds the ICL
circuit (on the ICL split) and the IWL circuit (on the IWL split) at the toolkit's
faithfulness target, by edge patching with mean patch values. The one-layer packed model's
graph has one embedding node ``emb`` (a token holds item and label) and 5 edges:
``emb->L0H0.q``, ``.k``, ``.v``, ``emb->readout`` and ``L0H0->readout``; the two-layer
interleaved model's has 19.

A circuit is reported only where its behaviour is learned by that checkpoint, by the rule of
the ``analyze`` report (:func:`probes.circuit_report.learned`: the accuracy rose at least
:data:`probes.competition.MIN_RISE` above the first checkpoint's and is still that far above
it), applied to the accuracy curve up to the checkpoint, and where discovery found one (the
behaviour is at least ``min_effect`` logits). The Jaccard index of the two circuits' edge
sets, ``|ICL & IWL| / |ICL | IWL|``, is given where both are reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from icl_circuits.runs.read import load_source, read_metrics
from probes.circuit_report import learned
from probes.circuits_over_training import CircuitParams, discover_run
from probes.competition import detect_transition

ROLES = ("ICL", "IWL")

#: The columns of :func:`overlap_table`.
COLUMNS = [
    "step",
    *(f"{r.lower()}_{c}" for r in ROLES for c in ("acc", "learned", "present", "reported", "n_edges", "edges")),
    "n_total",
    "shared",
    "jaccard",
]


def learned_by_step(curve: pd.Series) -> pd.Series:
    """Whether the behaviour is learned at each step of ``curve`` (accuracy indexed by step).

    The ``analyze`` report's rule (:func:`probes.circuit_report.learned` of
    :func:`probes.competition.detect_transition`) on the curve cut at that step.
    """
    curve = curve.sort_index().astype(float)
    return pd.Series(
        [learned(detect_transition(curve.loc[:step], name=str(curve.name)))[0] for step in curve.index],
        index=curve.index,
        dtype=bool,
    )


def overlap_table(circuits: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint: each behaviour's accuracy, whether it is learned, its reported circuit, and the overlap.

    Args:
        circuits: :func:`probes.circuits_over_training.discover_run`'s circuits table
            (``step, role, present, n_edges, n_total, edges``; roles ``ICL`` and ``IWL``).
        accuracy: accuracy indexed by step (every evaluation, not only the checkpoints of
            ``circuits``), columns ``ICL`` and ``IWL``.

    Returns:
        One row per step of ``circuits`` (:data:`COLUMNS`): ``{role}_acc``, ``{role}_learned``,
        ``{role}_present`` (discovery found a circuit), ``{role}_reported`` (both),
        ``{role}_n_edges`` and ``{role}_edges`` (space-separated; NA and ``""`` where not
        reported), ``n_total`` (edges of the graph), ``shared`` and ``jaccard`` (NA unless
        both circuits are reported; Jaccard NaN if both are empty).
    """
    missing = [r for r in ROLES if r not in accuracy.columns]
    if missing:
        raise ValueError(f"accuracy: no column(s) {missing}")
    flags = {r: learned_by_step(accuracy[r].dropna().rename(r)) for r in ROLES}
    rows = []
    for step, grp in circuits.groupby("step", sort=True):
        row: dict = {"step": int(step), "n_total": int(grp["n_total"].iloc[0])}
        found = {}
        for role in ROLES:
            c = grp[grp["role"] == role]
            if len(c) != 1:
                raise ValueError(f"circuits: expected one {role} row at step {step}, got {len(c)}")
            c = c.iloc[0]
            acc = accuracy[role].dropna().sort_index().loc[:step]
            ok = bool(flags[role].loc[:step].iloc[-1]) if len(acc) else False
            present = bool(c["present"])
            edges = str(c["edges"]).split() if present and isinstance(c["edges"], str) else []
            reported = ok and present
            row |= {
                f"{role.lower()}_acc": float(acc.iloc[-1]) if len(acc) else np.nan,
                f"{role.lower()}_learned": ok,
                f"{role.lower()}_present": present,
                f"{role.lower()}_reported": reported,
                f"{role.lower()}_n_edges": len(edges) if reported else pd.NA,
                f"{role.lower()}_edges": " ".join(edges) if reported else "",
            }
            if reported:
                found[role] = set(edges)
        if len(found) == 2:
            a, b = found["ICL"], found["IWL"]
            row["shared"] = len(a & b)
            row["jaccard"] = len(a & b) / len(a | b) if a | b else np.nan
        else:
            row["shared"], row["jaccard"] = pd.NA, np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.astype({"icl_n_edges": "Int64", "iwl_n_edges": "Int64", "shared": "Int64"})


def accuracy_by_step(run: Path | str) -> pd.DataFrame:
    """The run's ICL and IWL evaluation accuracy at every evaluation: columns ``ICL``, ``IWL``, indexed by step."""
    source = load_source(run)
    m = read_metrics(Path(run))
    acc = m[m["metric"] == "acc"]
    return pd.DataFrame(
        {
            role: acc[acc["split"] == split].set_index("step")["value"]
            for role, split in zip(ROLES, (source.icl_split, source.iwl_split), strict=True)
        }
    ).sort_index()


def run_overlap(run: Path | str, steps: list[int] | None, params: CircuitParams) -> pd.DataFrame:
    """:func:`overlap_table` of ``run`` at ``steps`` (all checkpoints when None); circuits cached in the run's analysis folder."""
    circuits, _ = discover_run(run, steps, params)
    return overlap_table(circuits, accuracy_by_step(run))
