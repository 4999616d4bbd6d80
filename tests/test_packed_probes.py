"""Probes on the packed layout, against the hand-wired one-layer model: each works or refuses.

Works on both layouts: the per-head scores' ``task_induction`` / ``induction_strength`` (in
the packed layout the one-layer induction-like score), ``copying``, ``dla``; the ICL-circuit
finder; subcircuit ablations (ICL heads, the IWL path); attention views; the pattern clamp;
``analyze_run`` with the registered probes (the score over training). Refuses the packed
layout in one line: the emb.x / emb.y graph of circuit discovery, the prefix-matching
sequences. Undefined there and skipped with the reason: the previous-token scores.
"""

from __future__ import annotations

import pytest
import torch

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.errors import LayoutError
from icl_circuits.models import ModelConfig, build_native, query_logits, to_bridge
from icl_circuits.models.build import model_layout
from icl_circuits.training import train
from probes.circuits import find_icl_circuit
from probes.graph import build_graph
from probes.handwired_packed import PACKED_INDUCTION_HEAD, packed_induction_model
from probes.pattern import clamp_pattern
from probes.scores import head_scores, repeated_sequence, undefined_scores
from probes.subcircuits import icl_circuit, iwl_path, subcircuit_effects
from probes.viz import attention_patterns, token_labels

DATA = GaussianConfig(n_classes=8, n_labels=8, d=64, n_pairs=8, burst=2, noise=0.0, layout="packed")
SOURCE = DATA.build_source(0)
EVALS = {s: SOURCE.eval_batch(s, 256) for s in SOURCE.splits}


@pytest.fixture(scope="module")
def both_paths():
    """The hand-wired model with an in-weight path too (K == L: class k's mean is label k's)."""
    return to_bridge(packed_induction_model(64, 8, 8, n_heads=2, label_vectors=SOURCE.means))


def _acc(model, batch) -> float:
    return float((query_logits(model, batch.tokens()).argmax(-1) == batch.target).float().mean())


def test_layout_is_known_to_the_model(both_paths):
    assert model_layout(both_paths) == "packed"
    assert model_layout(build_native(ModelConfig(d_model=16), 8, 8, 9, seed=0)) == "interleaved"


def test_icl_circuit_found_in_layer_zero_without_previous_token_heads(both_paths):
    scores = head_scores(both_paths, EVALS["IC"])
    found = find_icl_circuit(scores)
    assert found.induction_heads == (PACKED_INDUCTION_HEAD,) and found.prev_token_heads == ()
    assert "prev_token" in scores.attrs["skipped"]


def test_ablating_icl_and_iwl_subcircuits(both_paths):
    assert _acc(both_paths, EVALS["IC"]) > 0.95 and _acc(both_paths, EVALS["IW"]) > 0.95
    subs = [icl_circuit((), [PACKED_INDUCTION_HEAD]), iwl_path(both_paths)]
    df = subcircuit_effects(both_paths, EVALS, 8, subs, method="zero")
    acc = df[df.metric == "acc"].set_index(["condition", "split"])["value"]
    assert acc["ICL circuit", "IC"] < 0.3  # chance 1/8: the context is no longer read
    assert acc["ICL circuit", "IW"] > 0.9  # memory untouched
    assert acc["IWL path", "IW"] < 0.3  # the query's own exemplar no longer reaches the readout
    assert acc["IWL path", "IC"] > 0.9


def test_attention_view_labels_one_token_per_item(both_paths):
    one = EVALS["IC"][:1]
    labels = token_labels(one)
    assert len(labels) == one.seq_len == 9
    c, y = int(one.classes[0, 0]), int(one.context_labels[0, 0])
    assert labels[0] == f"x (class {c}) label {y}" and labels[-1].startswith("query (class ")
    pat = attention_patterns(both_paths, one)  # [layer, batch, head, query_pos, key_pos]
    assert pat.shape == (1, 1, 2, 9, 9)


def test_pattern_clamp_on_packed(both_paths):
    ic = EVALS["IC"]
    layer, head = PACKED_INDUCTION_HEAD
    with clamp_pattern(both_paths, layer, 1, "induction", ic):  # the inert head given the induction row
        _, cache = both_paths.run_with_cache(ic.tokens())
    row = cache[f"blocks.{layer}.attn.hook_pattern"][:, 1, -1]
    match = ic.query_in_context().float()
    torch.testing.assert_close(row[:, :-1], match / match.sum(1, keepdim=True))
    with pytest.raises(LayoutError, match=r"^clamp_pattern\(kind='previous_token'\): needs the interleaved"):
        with clamp_pattern(both_paths, layer, 1, "previous_token"):
            pass


def test_refusals_are_one_line(both_paths):
    with pytest.raises(LayoutError, match=r"^build_graph: needs the interleaved layout") as err:
        build_graph(both_paths)
    assert "\n" not in str(err.value)
    assert build_graph(both_paths, split_embed=False).n_edges > 0
    with pytest.raises(ValueError, match=r"^repeated_sequence: packed layout"):
        repeated_sequence(EVALS["IC"])
    assert set(undefined_scores(8, 9, "packed")) == {"prev_token", "prev_token_corrected", "prefix_matching"}


def test_scores_over_training_on_a_packed_run(tmp_path):
    from probes.over_training import analyze_run

    cfg = RunConfig(
        name="tiny-packed",
        seed=1,
        data=GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=4, burst=2, layout="packed"),
        model=ModelConfig(n_layers=1, n_heads=2, d_model=16, attn_only=True),
        train=TrainConfig(steps=20, batch_size=16, lr=3e-3, n_checkpoints=3, eval_size=64, device="cpu"),
    )
    run = train(cfg, tmp_path / "run", progress=False)
    df = analyze_run(run, eval_size=64, progress=False, probes=["head_scores", "ablations"])
    ti = df[df.metric == "task_induction"]
    assert ti.step.nunique() >= 3 and set(ti.layer) == {0}
    assert not (df.metric == "prev_token").any()
    assert {"clean"} < set(df.condition)
