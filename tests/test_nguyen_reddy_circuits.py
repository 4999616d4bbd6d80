"""The ICL and IWL circuits of Nguyen & Reddy's models over training and the edges they share."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.models import to_bridge
from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin
from icl_circuits.papers.nguyen_reddy2024.circuit_overlap import COLUMNS, learned_by_step, overlap_table
from icl_circuits.papers.nguyen_reddy2024.claims_mechanism import JACCARD_MAX, circuit_claims
from probes.discovery import split_circuits
from probes.handwired_packed import packed_induction_model

HEAD = ["emb->L0H0.q", "emb->L0H0.k", "emb->L0H0.v", "L0H0->readout"]


@pytest.mark.parametrize("method", ["exact", "eap-ig"])
def test_packed_model_circuits_are_its_two_wired_paths(method):
    """The hand-wired packed model: ICL through the head, IWL from the query's own token into the readout."""
    data = GaussianConfig(n_classes=8, n_labels=8, d=64, n_pairs=8, burst=2, noise=0.0, layout="packed")
    source = data.build_source(0)
    model = to_bridge(packed_induction_model(64, 8, 8, n_heads=1, label_vectors=source.means))
    circuits, edges = split_circuits(model, source, n=128, method=method)
    by = circuits.set_index("role")
    assert by.loc["ICL", "n_total"] == 5  # one embedding node: emb -> q, k, v, readout; head -> readout
    assert set(by.loc["ICL", "edges"].split()) == set(HEAD)
    assert by.loc["IWL", "edges"].split() == ["emb->readout"]
    assert by.loc["ICL", "jaccard_icl_iwl"] == 0.0
    assert set(edges["edge"]) == {*HEAD, "emb->readout"}


def test_learned_by_step_is_the_report_rule_on_the_curve_so_far():
    curve = pd.Series([0.5, 0.55, 0.8, 0.9, 0.6], index=[0, 100, 200, 300, 400], name="ICL")
    # Rises 0.3 by step 200 (learned), fades to 0.1 above the start at step 400 (not learned).
    assert learned_by_step(curve).tolist() == [False, False, True, True, False]


def _circuits(rows: list[tuple[int, str, bool, str]], n_total: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"step": s, "split": {"ICL": "IC", "IWL": "IW"}[r], "role": r, "present": p, "n_total": n_total, "edges": e}
            for s, r, p, e in rows
        ]
    )


def test_overlap_table_reports_only_learned_circuits_and_their_jaccard():
    circuits = _circuits(
        [
            (0, "ICL", False, ""),
            (0, "IWL", False, ""),
            (100, "ICL", True, "a b c"),  # present, but ICL is not learned yet: not reported
            (100, "IWL", True, "c d"),
            (200, "ICL", True, "a b c"),
            (200, "IWL", True, "c d"),
            (300, "ICL", True, "a b"),
            (300, "IWL", False, ""),  # learned, but discovery found none: not reported
        ]
    )
    acc = pd.DataFrame(
        {"ICL": [0.5, 0.6, 0.9, 0.9], "IWL": [0.5, 0.95, 0.95, 0.95]}, index=[0, 100, 200, 300]
    ).rename_axis("step")
    t = overlap_table(circuits, acc)
    assert list(t.columns) == COLUMNS and t["step"].tolist() == [0, 100, 200, 300]
    assert t["icl_learned"].tolist() == [False, False, True, True]
    assert t["iwl_learned"].tolist() == [False, True, True, True]
    assert t["icl_reported"].tolist() == [False, False, True, True]
    assert t["iwl_reported"].tolist() == [False, True, True, False]
    assert t["icl_edges"].tolist() == ["", "", "a b c", "a b"]
    assert t["icl_n_edges"].isna().tolist() == [True, True, False, False]
    # Both reported only at step 200: {a, b, c} and {c, d} share 1 of 4 edges.
    assert t.loc[2, "shared"] == 1 and t.loc[2, "jaccard"] == pytest.approx(0.25)
    assert t["jaccard"].isna().tolist() == [True, True, False, True]
    assert t["icl_acc"].tolist() == [0.5, 0.6, 0.9, 0.9]


def test_overlap_table_reads_learning_from_evaluations_between_checkpoints():
    # Circuits at steps 0 and 200 only; ICL rose at step 100 and faded again by 200.
    circuits = _circuits(
        [(0, "ICL", False, ""), (0, "IWL", False, ""), (200, "ICL", True, "a"), (200, "IWL", True, "a")]
    )
    acc = pd.DataFrame({"ICL": [0.5, 0.9, 0.55], "IWL": [0.5, 0.8, 0.9]}, index=[0, 100, 200])
    t = overlap_table(circuits, acc)
    assert t["icl_learned"].tolist() == [False, False] and t["iwl_learned"].tolist() == [False, True]
    assert math.isnan(t.loc[1, "jaccard"])
    with pytest.raises(ValueError, match=r"^accuracy: no column\(s\) \['IWL'\]"):
        overlap_table(circuits, acc[["ICL"]])


def _overlap(model: str, regime: str, jaccards: list[float]) -> pd.DataFrame:
    rows = []
    for step, j in enumerate(jaccards):
        both = not math.isnan(j)
        rows.append(
            {"model": model, "regime": regime, "K": 100, "seed": 0, "step": step * 100, "n_total": 5,
             "icl_reported": both, "iwl_reported": both, "icl_n_edges": 2 if both else pd.NA,
             "iwl_n_edges": 2 if both else pd.NA, "icl_edges": "a b" if both else "",
             "iwl_edges": "b c" if both else "", "jaccard": j}
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_circuit_claims_judge_every_checkpoint_with_both_circuits():
    table = pd.concat(
        [
            _overlap("one-layer", "near K*", [np.nan, 0.8, 1.0]),
            _overlap("two-layer", "both learned", [np.nan, 0.2, JACCARD_MAX]),
            _overlap("one-layer", "below K*", [np.nan, np.nan]),
        ],
        ignore_index=True,
    )
    claims = circuit_claims(table, "exact")
    assert [c.holds for c in claims] == [False, True, None, None]
    assert "Jaccard median 0.90, range 0.80-1.00" in claims[0].ours and "shared: b" in claims[0].ours
    assert "no checkpoint of 2" in claims[2].ours
    assert claims[3].ours == "one-layer, near K*: 0.90; two-layer, both learned: 0.23"


def test_fit_sigmoid_converges_on_a_resample_at_two_k():
    """A bootstrap resample of runs at two K only, the upper one at accuracy 1: a step-like fit."""
    x = np.log10([512, 2048, 512, 2048, 512, 512])
    y = np.array([0.8671875, 1.0, 0.8671875, 1.0, 0.8671875, 0.8671875])
    x0, width = kin.fit_sigmoid(x, y, 0.5, 1.0)
    fit = 0.5 + 0.5 / (1 + np.exp(-(x - x0) / width))
    np.testing.assert_allclose(fit, y, atol=1e-3)
