"""Circuit discovery on trained demo models (slow: two demo trainings; `make test-slow`).

The numbers these check are reported in docs/circuits.md.
"""

from __future__ import annotations

import pytest

from icl_circuits.config import apply_overrides
from icl_circuits.presets import demo
from icl_circuits.runs.read import load_model, load_source
from icl_circuits.training import train
from probes.discovery import discover
from probes.eap import rank_agreement, score_table
from probes.edge_patching import answer_diff, label_swap, logit_diff, patch_values
from probes.graph import build_graph

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("circuits")
    return {
        "demo": train(demo(), root / "demo", progress=False),
        "k32": train(apply_overrides(demo(), ["data.n_classes=32"]), root / "k32", progress=False),
    }


def test_demo_icl_circuit_is_small_faithful_and_induction_shaped(runs):
    model, source = load_model(runs["demo"]), load_source(runs["demo"])
    batch = source.eval_batch("IC", 256)
    for method, most in (("exact", 12), ("eap-ig", 16)):
        circuit = discover(model, batch, method=method, target=0.9)
        assert circuit.present and circuit.faithfulness >= 0.9
        assert circuit.size <= most < circuit.n_total == 42
        # the matching half of induction: a query from the exemplar, a key from a layer-0 head
        assert any(e.startswith("emb.x->L1") and e.endswith(".q") for e in circuit.edges)
        assert any(e.startswith("L0") and e.endswith(".k") for e in circuit.edges)


def test_demo_eap_ranking_vs_exact_patching(runs):
    model, source = load_model(runs["demo"]), load_source(runs["demo"])
    graph, batch = build_graph(model), source.eval_batch("IC", 256)
    methods = ("exact", "eap", "eap-ig", "atp*")
    # Mean patching, logit difference (the toolkit's default): measured EAP 0.86 over all edges,
    # 0.71 on exact's top 10; AtP* 0.76 on the top 10: the 0.9 goal is missed (docs/circuits.md).
    patch = patch_values(model, graph, "mean", batch)
    table = score_table(model, graph, batch.tokens(), patch, logit_diff(batch.target), methods)
    assert rank_agreement(table, "eap", "exact")["spearman"] >= 0.8
    assert rank_agreement(table, "atp*", "exact", top=10)["spearman"] >= 0.7
    assert rank_agreement(table, "eap-ig", "exact", top=10)["top_overlap"] >= 0.8
    # The label-swap counterfactual (EAP's setting), metric: clean answer minus corrupted answer.
    # Measured on exact's top 10: EAP 0.94, EAP-IG 0.96, AtP* 0.98; top 20: AtP* 0.89.
    clean, corrupt, foil = label_swap(batch)
    patch = patch_values(model, graph, "corrupt", corrupt)
    table = score_table(model, graph, clean.tokens(), patch, answer_diff(clean.target, foil), methods)
    for method in ("eap", "atp*"):
        assert rank_agreement(table, method, "exact", top=10)["spearman"] >= 0.9
    assert rank_agreement(table, "atp*", "exact", top=20)["spearman"] >= 0.85


def test_lm_induction_circuit_on_smollm2():
    """Measured (docs/circuits.md): 70,651 edges; Spearman with exact patching on 40 sampled
    edges EAP 0.91, AtP* 0.93; circuit 32,591 edges at faithfulness 0.90; about 6 minutes."""
    pytest.importorskip("gguf")
    from icl_circuits.llm import ModelNotFoundError, load_lm
    from icl_circuits.llm.circuit import lm_circuit

    try:
        lm = load_lm()
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    row = lm_circuit(lm)
    assert row["n_total"] == 70651
    assert row["spearman_eap_sample"] >= 0.85 and row["spearman_atp_sample"] >= 0.85
    assert row["spearman_atp_top"] >= 0.85
    assert row["present"] and row["faithfulness"] >= 0.9 and row["size"] < 0.6 * row["n_total"]


def test_k32_iwl_circuit_carries_iw_and_icl_is_absent(runs):
    model, source = load_model(runs["k32"]), load_source(runs["k32"])
    iwl = discover(model, source.eval_batch("IW", 256), method="eap-ig")
    assert iwl.present and iwl.faithfulness >= 0.9 and iwl.acc_circuit >= 0.9
    assert "emb.x->readout" in iwl.edges and iwl.size <= 3
    icl = discover(model, source.eval_batch("IC", 256), method="eap-ig")
    assert not icl.present
