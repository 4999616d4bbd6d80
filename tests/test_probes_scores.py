"""Head scores against ground truth: the hand-wired circuit and TransformerLens's detector."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens.head_detector import (
    compute_head_attention_similarity_score,
    get_induction_head_detection_pattern,
)

from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.models import to_bridge
from probes import scores
from probes.circuits import find_icl_circuit
from probes.competition import detect_transition
from probes.handwired import INDUCTION_HEAD, PREV_TOKEN_HEAD, induction_circuit_model

SRC = GaussianSource(GaussianConfig(n_classes=256, n_labels=8, d=32, n_pairs=4, burst=2, noise=0.1), seed=0)


@pytest.fixture(scope="module")
def wired():
    return to_bridge(induction_circuit_model(d_in=32, n_labels=8, n_pairs=4))


@pytest.fixture(scope="module")
def table(wired):
    df = scores.head_scores(wired, SRC.eval_batch("IC", 256))
    return df.set_index(["metric", "layer", "head_index"]).value


def test_task_induction_score_of_handwired_circuit(table):
    assert table["task_induction", 1, 0] == pytest.approx(1.0, abs=1e-3)
    for head in [(0, 0), (0, 1), (1, 1)]:
        assert table[("task_induction", *head)] < 0.01
    assert table["induction_strength", 1, 0] == pytest.approx(1.0, abs=1e-3)


def test_previous_token_scores(table):
    assert table["prev_token", 0, 0] == pytest.approx(1.0, abs=1e-3)
    # inert heads look at position 0, which precedes only the first of the N = 4 labels
    assert table["prev_token", 0, 1] == pytest.approx(0.25) and table["prev_token", 1, 0] < 0.01
    assert table["prev_token_corrected", 0, 0] > table["prev_token_corrected", 0, 1] + 0.3


def test_copying_and_dla(table):
    assert table["copying", 1, 0] == pytest.approx(1.0, abs=1e-4)
    assert table["copying", 0, 0] == pytest.approx(0.0, abs=1e-4)
    dla = table.loc["dla"]
    assert dla[1, 0] > 1.0 and dla.drop((1, 0)).abs().max() < 1e-4


def test_dla_sums_to_logit_difference(wired):
    """The heads' DLA plus the other direct components equals the logit difference."""
    batch = SRC.eval_batch("IC", 64)
    dla = scores.direct_logit_attribution(wired, batch).value.sum()
    logits = wired(batch.tokens())[:, -1]
    target = logits.gather(1, batch.target[:, None])[:, 0] - logits.mean(-1)
    # no LayerNorm, no biases, the query's own embedding reads LAB = 0: heads are everything
    assert dla == pytest.approx(target.mean().item(), rel=1e-4)


def test_prefix_matching_agrees_with_transformer_lens(wired):
    batch = SRC.eval_batch("IC", 16)
    tokens, ids = scores.repeated_sequence(batch, wired.cfg.n_ctx)
    pats = scores._patterns(wired, tokens)
    ours = scores.prefix_matching(pats, ids)
    theirs = torch.zeros_like(ours)
    for b in range(len(batch)):
        det = get_induction_head_detection_pattern(ids[b])
        assert torch.equal(det, scores.induction_detection_pattern(ids[b : b + 1])[0])
        for layer in range(2):
            for head in range(2):
                theirs[layer, head] += compute_head_attention_similarity_score(
                    pats[layer, b, head], det, exclude_bos=False, exclude_current_token=False, error_measure="mul"
                )
    torch.testing.assert_close(ours, theirs / len(batch))
    assert ours[1, 0] > ours[1, 1]


def test_find_icl_circuit(table):
    df = table.reset_index()
    found = find_icl_circuit(df)
    assert found.induction_heads == (INDUCTION_HEAD,)
    assert found.prev_token_heads == (PREV_TOKEN_HEAD,)


def test_detect_transition_on_synthetic_curves():
    steps = [0, 10, 100, 200, 300, 400, 1000, 2000, 3000]
    rise = pd.Series([0.05, 0.05, 0.06, 0.2, 0.5, 0.9, 0.92, 0.93, 0.93], index=steps)
    tr = detect_transition(rise, name="ICL")
    # the steepest quarter-decade is 300 -> 400 (0.5 -> 0.9): half of it is covered at 400
    assert tr.emerged and tr.emergence_step == 400 and tr.onset_step == 200 and tr.completion_step == 400
    assert not tr.transient
    fade = pd.Series([0.05, 0.1, 0.5, 0.9, 0.9, 0.6, 0.4, 0.3, 0.2], index=steps)
    loss = pd.Series([3, 2.5, 2, 1.5, 1.2, 1.0, 0.8, 0.7, 0.6], index=steps)
    tr = detect_transition(fade, loss, name="ICL")
    assert tr.transient and tr.peak_step == 200 and tr.drop == pytest.approx(0.7)
    flat_loss = pd.Series([3, 2.5, 2, 1.5, 1.0, 1.2, 1.3, 1.4, 1.5], index=steps)
    assert not detect_transition(fade, flat_loss).transient, "loss must keep falling"
    assert not detect_transition(pd.Series([0.1] * 9, index=steps)).emerged


def test_emergence_finds_the_abrupt_rise_not_the_slow_climb():
    import numpy as np

    from icl_circuits.training.schedule import checkpoint_steps

    steps = np.array(checkpoint_steps(4000, 60))
    x = np.log10(steps + 1.0)
    slow = 0.45 / (1 + np.exp(-(x - 1.5) * 3))  # a gentle climb to 0.45 around step 30
    jump = 0.5 / (1 + np.exp(-(x - np.log10(500)) * 25))  # an abrupt rise at step 500
    rng = np.random.default_rng(0)
    curve = pd.Series(0.03 + slow + jump + rng.normal(0, 0.01, len(steps)), index=steps)
    tr = detect_transition(curve, name="ICL")
    near = steps[np.argmin(np.abs(steps - 500))]
    assert abs(list(steps).index(tr.emergence_step) - list(steps).index(near)) <= 2, tr
