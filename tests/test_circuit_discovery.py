"""Circuit discovery (graph, exact edge patching, EAP, EAP-IG, pruning) against hand-wired ground truth.

Ground truth: :func:`probes.handwired.induction_circuit_model` computes through exactly
:data:`probes.handwired.INDUCTION_EDGES`; :func:`probes.handwired.in_weight_model` through
exactly :data:`probes.handwired.IWL_EDGES`. Every other edge carries nothing, so each method
must score it 0 and the discovered circuit must be the wired edges.
"""

from __future__ import annotations

import pytest
import torch

from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.models.build import build_native, to_bridge
from icl_circuits.models.config import ModelConfig
from probes.discovery import Circuit, discover, drop_dangling, overlap
from probes.eap import eap_scores, edge_scores, mask_gradient, rank_agreement, score_table
from probes.edge_patching import (
    answer_diff,
    full_mask,
    label_swap,
    logit_diff,
    mask_of,
    next_token_metric,
    patch_edges,
    patch_values,
    patched_metric,
)
from probes.graph import build_graph
from probes.handwired import INDUCTION_EDGES, IWL_EDGES, in_weight_model, induction_circuit_model

METHODS = ("exact", "eap", "eap-ig", "atp*")


@pytest.fixture(scope="module")
def source():
    return GaussianSource(GaussianConfig(n_classes=8, n_labels=8, d=16, n_pairs=4, burst=2, noise=0.1), seed=0)


@pytest.fixture(scope="module")
def data(source):
    return {split: source.eval_batch(split, 64) for split in ("IC", "IW")}


@pytest.fixture(scope="module")
def wired(source):
    return {
        "induction": (to_bridge(induction_circuit_model(16, 8, 4, sharpness=10.0)), "IC", set(INDUCTION_EDGES)),
        "iwl": (to_bridge(in_weight_model(source.means, 4)), "IW", set(IWL_EDGES)),
    }


@pytest.fixture(scope="module")
def tiny():
    """A random tiny model with LayerNorm, MLP blocks and an MLP readout (every node kind)."""
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, attn_only=False, readout="mlp", readout_hidden=(16,))
    return to_bridge(build_native(cfg, 16, 8, 9, seed=1))


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_points())


def test_graph_counts(tiny, wired):
    g = build_graph(wired["induction"][0])
    # embeddings (2) -> 6 layer-0 inputs, + 2 layer-0 heads -> 6 layer-1 inputs, 6 senders -> readout
    assert g.n_edges == 2 * 6 + 4 * 6 + 6
    assert set(INDUCTION_EDGES) <= set(g.edge_names)
    gt = build_graph(tiny)
    assert {"M0", "M1"} <= {n.name for n in gt.nodes} and "L0H1->M0" in gt.edge_names
    assert "M1->L1H0.q" not in gt.edge_names  # an MLP writes after its own block's attention
    assert list(gt.table().columns) == ["edge", "sender", "receiver", "layer", "head_index", "input"]
    with pytest.raises(KeyError, match="edges look like"):
        g.index("nope")


def test_patch_edges_is_exact_and_removes_hooks(tiny, data):
    g = build_graph(tiny)
    clean, corrupt = data["IC"].tokens(), data["IW"].tokens()
    patch = patch_values(tiny, g, "corrupt", data["IW"])
    before = n_hooks(tiny)
    with torch.no_grad():
        ref_clean, ref_corrupt = tiny(clean)[:, -1], tiny(corrupt)[:, -1]
        with patch_edges(tiny, g, patch, full_mask(g, 1.0)):
            assert torch.allclose(tiny(clean)[:, -1], ref_clean, atol=1e-6)
        with patch_edges(tiny, g, patch, full_mask(g, 0.0)):  # every edge patched = the corrupted run
            assert torch.allclose(tiny(clean)[:, -1], ref_corrupt, atol=1e-5)
        with pytest.raises(RuntimeError, match="boom"), patch_edges(tiny, g, patch, full_mask(g, 0.0)):
            raise RuntimeError("boom")
    assert n_hooks(tiny) == before
    with pytest.raises(ValueError, match="mask"), patch_edges(tiny, g, patch, torch.ones(3)):
        pass


@pytest.mark.parametrize("name", ["induction", "iwl"])
@pytest.mark.parametrize("method", METHODS)
def test_wired_edges_are_exactly_the_nonzero_scores(wired, data, name, method):
    model, split, edges = wired[name]
    g, batch = build_graph(model), data[split]
    patch = patch_values(model, g, "mean", batch)
    scores = edge_scores(model, g, batch.tokens(), patch, logit_diff(batch.target), method)
    nonzero = {g.edges[i].name for i in range(g.n_edges) if abs(float(scores[i])) > 1e-5}
    assert nonzero == edges
    assert all(float(scores[g.index(e)]) > 0 for e in edges)


@pytest.mark.parametrize("name", ["induction", "iwl"])
@pytest.mark.parametrize("method", METHODS)
def test_discovered_circuit_is_the_wired_one(wired, data, name, method):
    model, split, edges = wired[name]
    circuit = discover(model, data[split], method=method, target=0.99)
    assert set(circuit.edges) == edges
    assert circuit.present and circuit.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert circuit.completeness == pytest.approx(1.0, abs=1e-4)
    assert circuit.acc_circuit == circuit.acc_clean == 1.0


def test_iwl_model_has_no_icl_circuit(wired, data):
    model, _, _ = wired["iwl"]
    circuit = discover(model, data["IC"], method="eap")
    assert not circuit.present and circuit.edges == ()
    assert overlap(circuit, circuit)["jaccard"] != overlap(circuit, circuit)["jaccard"]  # NaN: both empty


def test_eap_is_the_mask_gradient_and_agrees_with_exact_patching(tiny, data):
    g, batch = build_graph(tiny), data["IC"]
    tokens, metric = batch.tokens(), logit_diff(batch.target)
    patch = patch_values(tiny, g, "mean", batch)
    grad, _ = mask_gradient(tiny, g, tokens, patch, metric)
    i = int(grad.abs().argmax())
    eps = 1e-2
    mask = full_mask(g)
    mask[i] = 1 - eps
    fd = (
        patched_metric(tiny, g, tokens, patch, full_mask(g), metric)
        - patched_metric(tiny, g, tokens, patch, mask, metric)
    ) / eps
    assert fd == pytest.approx(float(grad[i]), rel=0.05)
    table = score_table(tiny, g, tokens, patch, metric, methods=("eap", "exact"))
    agree = rank_agreement(table, "eap", "exact", top=15)
    assert agree["spearman"] > 0.8


def test_rank_correlations_give_ties_their_mean_rank():
    """Spearman of [1, 1, 2, 3] with [1, 2, 3, 4]: ranks [1.5, 1.5, 3, 4], rho = 4.5 / sqrt(4.5 * 5)."""
    import pandas as pd

    from icl_circuits.llm.circuit import _spearman
    from icl_circuits.papers.chan2024.claims import spearman

    rho = 4.5 / (4.5 * 5) ** 0.5
    assert _spearman(torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(rho)
    assert spearman(pd.Series([1.0, 1.0, 2.0, 3.0], index=[2, 4, 8, 16])) == pytest.approx(rho)
    table = pd.DataFrame(
        {"edge": list("abcd") * 2, "method": ["eap"] * 4 + ["exact"] * 4, "score": [1, 1, 2, 3, 1, 2, 3, 4]}
    )
    assert rank_agreement(table, "eap", "exact")["spearman"] == pytest.approx(rho)


def test_fast_eap_equals_the_mask_gradient(tiny, data):
    g, batch = build_graph(tiny), data["IC"]
    tokens, metric = batch.tokens(), logit_diff(batch.target)
    patch = patch_values(tiny, g, "mean", batch)
    grad, _ = mask_gradient(tiny, g, tokens, patch, metric)
    assert torch.allclose(eap_scores(tiny, g, tokens, patch, metric), grad, atol=1e-5)


def test_atp_star_fixes_the_saturated_query_and_key_edges(source):
    """At sharpness 40 the induction head's softmax is saturated: EAP scores its q/k edges ~0,
    AtP*'s exact attention pattern scores them like exact patching."""
    model = to_bridge(induction_circuit_model(16, 8, 4, sharpness=40.0))
    g, batch = build_graph(model), source.eval_batch("IC", 64)
    patch = patch_values(model, g, "mean", batch)
    table = score_table(model, g, batch.tokens(), patch, logit_diff(batch.target), ("exact", "eap", "atp*"))
    wide = table.pivot_table(index="edge", columns="method", values="score")
    for edge in ("emb.x->L1H0.q", "L0H0->L1H0.k"):
        exact, eap, atp = wide.loc[edge, ["exact", "eap", "atp*"]]
        assert exact > 1.0 and abs(eap) < 0.05 * exact
        assert atp == pytest.approx(exact, rel=0.25)
    assert rank_agreement(table, "atp*", "exact", top=5)["top_overlap"] == 1.0


def test_label_swap_counterfactual(data):
    clean, corrupt, foil = label_swap(data["IC"])
    assert len(clean) > 0.8 * len(data["IC"]) and bool((foil != clean.target).all())
    assert torch.equal(corrupt.exemplars, clean.exemplars) and torch.equal(corrupt.target, foil)
    q = clean.query_in_context()
    assert bool((corrupt.context_labels[q] == foil[:, None].expand_as(q)[q]).all())
    logits = torch.zeros(len(clean), 8).scatter(1, clean.target[:, None], 2.0)
    assert float(answer_diff(clean.target, foil)(logits)) == pytest.approx(2.0)


def test_eap_ig_scores_sum_to_the_total_effect(tiny, data):
    g, batch = build_graph(tiny), data["IC"]
    tokens, metric = batch.tokens(), logit_diff(batch.target)
    patch = patch_values(tiny, g, "mean", batch)
    total = patched_metric(tiny, g, tokens, patch, full_mask(g, 1.0), metric) - patched_metric(
        tiny, g, tokens, patch, full_mask(g, 0.0), metric
    )
    scores = edge_scores(tiny, g, tokens, patch, metric, "eap-ig", steps=16)
    assert float(scores.sum()) == pytest.approx(total, rel=0.05, abs=1e-4)  # midpoint rule, 16 steps


def test_drop_dangling_and_overlap(wired):
    g = build_graph(wired["induction"][0])
    # L0H1 is read by nothing kept, so the edge into it goes.
    assert drop_dangling(g, ["emb.x->L0H1.q", "L1H0->readout"]) == ["L1H0->readout"]
    kept = mask_of(g, ["L1H0->readout"])
    assert float(kept.sum()) == 1.0
    a = Circuit(("x", "y"), 5, 1, 1, 1, 1, 1, 0, 1, 1, 0, True, None)
    b = Circuit(("y", "z"), 5, 1, 1, 1, 1, 1, 0, 1, 1, 0, True, None)
    assert overlap(a, b) == {"shared": 1, "only_a": 1, "only_b": 1, "jaccard": 1 / 3}


# ----------------------------------------------------------------------------- language-model bridge
@pytest.fixture(scope="module")
def lm():
    from icl_circuits.llm.tiny import tiny_lm

    return tiny_lm(seed=0)


def test_lm_graph_has_key_value_groups(lm):
    g = build_graph(lm.model, split_embed=False)
    assert (g.n_heads, g.n_kv_heads, g.grouped) == (4, 2, True)
    # layer 0: emb -> 4 q + 2 k + 2 v + M0; layer 1: emb, 4 heads, M0 -> 8 inputs; M1: 10 senders; 11 -> readout
    assert g.n_edges == 9 + 6 * 8 + 1 + 5 + 10 + 11 - 2
    assert {"emb->L0G1.k", "L0H3->L1G0.v", "L0H2->L1H3.q", "M0->readout"} <= set(g.edge_names)
    assert "emb->L0H0.k" not in g.edge_names
    assert g.reading_heads("L1G1.k") == ["L1H2", "L1H3"]
    # a group's key input stays while one of its query heads is read
    assert drop_dangling(g, ["emb->L0G1.k", "L0H3->readout"]) == ["emb->L0G1.k", "L0H3->readout"]
    assert drop_dangling(g, ["emb->L0G0.k", "L0H3->readout"]) == ["L0H3->readout"]


def test_lm_patch_edges_is_exact(lm):
    from icl_circuits.llm.heads import repeated_tokens

    model, g = lm.model, build_graph(lm.model, split_embed=False)
    clean = repeated_tokens(len(lm.tokenizer), 3, 6, seed=1, bos=lm.bos, low=5)
    corrupt = repeated_tokens(len(lm.tokenizer), 3, 6, seed=2, bos=lm.bos, low=5)
    before = n_hooks(model)
    with torch.no_grad():
        ref_clean, ref_corrupt = model(clean), model(corrupt)
        patch = patch_values(model, g, "corrupt", corrupt)
        with patch_edges(model, g, patch, full_mask(g, 1.0)):
            assert torch.allclose(model(clean), ref_clean, atol=1e-6)
        with patch_edges(model, g, patch, full_mask(g, 0.0)):
            assert torch.allclose(model(clean), ref_corrupt, atol=1e-5)
    assert n_hooks(model) == before
    positions = torch.zeros(clean.shape[1], dtype=torch.bool)
    positions[8:-1] = True
    metric = next_token_metric(clean, positions)
    patch = patch_values(model, g, "mean", clean)
    grad, _ = mask_gradient(model, g, clean, patch, metric)
    assert torch.allclose(eap_scores(model, g, clean, patch, metric), grad, atol=1e-5)
    table = score_table(model, g, clean, patch, metric, ("exact", "eap", "atp*"))  # atp*: rotary pattern recomputed
    assert rank_agreement(table, "atp*", "exact")["spearman"] > 0.8


def test_lm_induction_circuit_on_the_tiny_model(lm):
    from icl_circuits.llm.circuit import induction_task, lm_circuit

    clean, corrupt, positions = induction_task(lm, 2, 5)
    assert torch.equal(clean[:, 1:6], clean[:, 6:]) and torch.equal(corrupt[:, :6], clean[:, :6])
    assert positions.nonzero().flatten().tolist() == [6, 7, 8, 9]
    row = lm_circuit(lm, n_seq=3, half=6, n_top=8, n_random=8, min_effect=0.0)
    assert row["n_total"] == build_graph(lm.model, split_embed=False).n_edges
    assert row["present"] and row["faithfulness"] >= 0.9 and 0 < row["size"] <= row["n_total"]
    assert -1 <= row["spearman_eap_sample"] <= 1 and -1 <= row["spearman_atp_top"] <= 1


# ----------------------------------------------------------------------------- over training
def test_circuits_over_training_cached(tiny_run, tmp_path, monkeypatch):
    import pandas as pd

    import probes.circuits_over_training as cot
    from probes.circuit_figures import circuit_figure, edge_heatmap

    params = cot.CircuitParams(n=16, steps=2, min_effect=0.0)
    circuits, edges = cot.discover_run(tiny_run, params=params, cache=tmp_path)
    steps = sorted(circuits["step"].unique())
    assert len(steps) >= 2 and set(circuits["role"]) == {"ICL", "IWL"}
    assert {"step", "split", "n_edges", "faithfulness", "completeness", "present", "edges"} <= set(circuits.columns)
    assert {"step", "split", "edge", "head_index", "score", "in_circuit"} <= set(edges.columns)
    present = circuits[circuits["present"]]
    assert (present["faithfulness"] >= params.target - 1e-9).all()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached checkpoint")

    monkeypatch.setattr(cot, "split_circuits", boom)
    again, again_edges = cot.discover_run(tiny_run, params=params, cache=tmp_path)
    pd.testing.assert_frame_equal(again, circuits, check_dtype=False)
    assert len(again_edges) == len(edges)
    overlay = cot.circuit_overlay(circuits)
    assert list(overlay["role"]) == ["ICL", "IWL"]
    from icl_circuits.runs.read import load_model

    graph = build_graph(load_model(tiny_run))
    last = edges[(edges["step"] == steps[-1]) & (edges["split"] == circuits["split"].iloc[0])]
    circuit_figure(graph, last)
    edge_heatmap(edges, circuits["split"].iloc[0], {"emerges": steps[1]})


def test_edge_entry_steps():
    import pandas as pd

    from probes.circuits_over_training import edge_entry_steps

    rows = []
    for step, inside in zip([0, 10, 20, 30], [(0, 0), (1, 0), (0, 1), (1, 1)], strict=True):
        rows += [
            {"step": step, "split": "IC", "edge": "a", "score": 1.0, "in_circuit": bool(inside[0])},
            {"step": step, "split": "IC", "edge": "b", "score": 2.0, "in_circuit": bool(inside[1])},
            {"step": step, "split": "IC", "edge": "c", "score": 0.0, "in_circuit": False},
        ]
    out = edge_entry_steps(pd.DataFrame(rows))
    assert list(out["edge"]) == ["a", "b"]
    assert list(out["enters"]) == [10, 20] and list(out["stays_from"]) == [30, 20]
    assert list(out["n_steps_in"]) == [2, 2]


def test_bench_circuits_row(tiny_run, tmp_path, monkeypatch):
    import benchmarks.circuits as bc
    from benchmarks.common import QUICK

    monkeypatch.setattr(bc, "_analysis_run", lambda root, name, overrides: tiny_run)
    goals, lines = bc.bench_circuits(tmp_path, QUICK)
    assert goals[0].name.startswith("circuits: 100 demo checkpoints") and goals[0].met is not None
    assert any("checkpoints" in line for line in lines)


def test_circuit_report_section(tiny_run, tmp_path):
    from probes.circuit_report import CIRCUITS, FIG_CIRCUIT, FIG_CIRCUIT_EDGES, write_circuit_report
    from probes.circuits_over_training import CircuitParams

    out = tmp_path / "report"
    out.mkdir()
    lines = write_circuit_report(tiny_run, tmp_path / "cache", out, params=CircuitParams(n=16, steps=2, min_effect=0.0))
    assert lines[0].startswith("discovered circuits (eap-ig, faithfulness target 0.9")
    assert any("ICL circuit" in line for line in lines) and any("IWL circuit" in line for line in lines)
    assert (out / CIRCUITS).exists()
    assert (out / FIG_CIRCUIT.format(role="ICL")).exists() and (out / FIG_CIRCUIT_EDGES.format(role="IWL")).exists()
