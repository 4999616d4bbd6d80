"""Interventions (head / path / subcircuit ablations, pattern edits) against the hand-wired circuit.

Ground truth: in :func:`probes.handwired.induction_circuit_model` head (0, 0) writes each label
token's exemplar into PREV, head (1, 0) matches the query against PREV (keys) and copies the
label (values); every other head is inert. IC accuracy is 1 and IW accuracy is chance.
"""

from __future__ import annotations

import pytest
import torch

from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.metrics import query_metrics
from icl_circuits.models.build import build_native, query_logits, to_bridge
from icl_circuits.models.config import ModelConfig
from probes.ablation import ablate_heads, all_heads_ablation, resample_index
from probes.handwired import induction_circuit_model
from probes.paths import ablate_k_path
from probes.pattern import clamp_pattern, preserve_patterns
from probes.subcircuits import Subcircuit, ablate_subcircuit, icl_circuit, iwl_path, subcircuit_effects

N_LABELS = 8
PREV, IND, INERT0, INERT1 = (0, 0), (1, 0), (0, 1), (1, 1)


@pytest.fixture(scope="module")
def model():
    return to_bridge(induction_circuit_model(d_in=32, n_labels=N_LABELS, n_pairs=4))


@pytest.fixture(scope="module")
def data():
    src = GaussianSource(GaussianConfig(n_classes=256, n_labels=N_LABELS, d=32, n_pairs=4, burst=2, noise=0.1), seed=0)
    return {split: src.eval_batch(split, 256) for split in src.splits}


def acc(model, batch) -> float:
    return query_metrics(query_logits(model, batch.tokens()), batch, N_LABELS)["acc"]


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_points())


@pytest.fixture(scope="module")
def clean(model, data):
    ic, iw = acc(model, data["IC"]), acc(model, data["IW"])
    assert ic == 1.0 and iw < 0.3
    return ic, iw


# ----------------------------------------------------------------------------- head ablation
@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablating_induction_head_kills_icl_only(model, data, clean, method):
    with ablate_heads(model, [IND], method, reference=data["IC"]):
        ic, iw = acc(model, data["IC"]), acc(model, data["IW"])
    assert ic < 0.3
    assert abs(iw - clean[1]) < 0.1
    assert acc(model, data["IC"]) == 1.0  # hooks gone


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_ablating_inert_heads_changes_nothing(model, data, method):
    tokens = data["IC"].tokens()
    ref = query_logits(model, tokens)
    with ablate_heads(model, [INERT0, INERT1], method, reference=data["IC"]):
        assert torch.allclose(query_logits(model, tokens), ref, atol=1e-5)


def test_ablate_heads_errors(model, data):
    with pytest.raises(ValueError, match="head"):
        with ablate_heads(model, [(0, 5)]):
            pass
    with pytest.raises(ValueError, match="layer"):
        with ablate_heads(model, [(2, 0)]):
            pass
    with pytest.raises(ValueError, match="reference"):
        with ablate_heads(model, [IND], "mean"):
            pass
    with pytest.raises(ValueError, match="method"):
        with ablate_heads(model, [IND], "shuffle"):
            pass
    assert n_hooks(model) == 0


def test_hooks_removed_when_body_raises(model, data):
    before = n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_heads(model, [IND], "mean", reference=data["IC"]):
            assert n_hooks(model) > before
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with preserve_patterns(model, data["IC"], [PREV]), clamp_pattern(model, 0, 1, "previous_token"):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with ablate_k_path(model, PREV, IND), ablate_subcircuit(model, iwl_path(model), "zero"):
            raise RuntimeError("boom")
    assert n_hooks(model) == before
    assert acc(model, data["IC"]) == 1.0


def test_resample_donor_is_another_sequence():
    idx = resample_index(300, 300, seed=1)
    assert not (idx == torch.arange(300)).any()
    assert torch.equal(idx, resample_index(300, 300, seed=1))
    assert idx.unique().numel() > 150


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_all_heads_ablation_equals_loop_in_one_forward(model, data, method):
    batch = data["IC"][:64]
    calls = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append(x.shape[0]))]):
        df = all_heads_ablation(model, batch, N_LABELS, method, reference=data["IC"])
    # one reference pass for mean / resample, then the whole sweep in one pass
    n_copies = model.cfg.n_layers * model.cfg.n_heads + 1
    assert calls == ([256] if method != "zero" else []) + [64 * n_copies]
    assert set(df.columns) == {"layer", "head_index", "metric", "value"}
    table = df.set_index(["layer", "head_index", "metric"])["value"]
    for metric, value in query_metrics(query_logits(model, batch.tokens()), batch, N_LABELS).items():
        assert table[(-1, -1, metric)] == pytest.approx(value, abs=1e-5)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            with ablate_heads(model, [(layer, head)], method, reference=data["IC"]):
                metrics = query_metrics(query_logits(model, batch.tokens()), batch, N_LABELS)
            for metric, value in metrics.items():
                assert table[(layer, head, metric)] == pytest.approx(value, abs=1e-4), (layer, head, metric)
    assert table[(1, 0, "acc")] < 0.3 and table[(1, 1, "acc")] == 1.0


# ----------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("method", ["zero", "mean"])
def test_pattern_preserving_ablation_of_prev_token_head(model, data, method):
    ic = data["IC"]
    with ablate_heads(model, [PREV], method, reference=ic):
        plain = acc(model, ic)
    with preserve_patterns(model, ic, [PREV], method, reference=ic):
        preserved = acc(model, ic)
    # The induction head's values read labels directly: with its clean pattern it still works.
    assert preserved > 0.99
    # Without PREV its keys are blind: it spreads over all labels in the context.
    assert plain < 0.8


def test_preserve_patterns_rejects_other_batch(model, data):
    with preserve_patterns(model, data["IC"], [PREV]):
        with pytest.raises(ValueError, match="same tokens"):
            model(data["IC"][:10].tokens())


def test_clamped_induction_pattern_restores_icl_without_prev_token_head(model, data):
    ic = data["IC"]
    with ablate_heads(model, [PREV]):
        assert acc(model, ic) < 0.8
        with clamp_pattern(model, *IND, "induction", ic):
            assert acc(model, ic) > 0.99
        # An inert head has no OV circuit: a perfect pattern there helps nothing.
        with clamp_pattern(model, *INERT1, "induction", ic):
            assert acc(model, ic) < 0.8


def test_clamp_pattern_rows(model, data):
    ic = data["IC"][:16]
    n = ic.seq_len
    with clamp_pattern(model, *INERT0, "previous_token"):
        _, cache = model.run_with_cache(ic.tokens(), names_filter=["blocks.0.attn.hook_pattern"])
    pattern = cache["blocks.0.attn.hook_pattern"]
    expected = torch.zeros(n, n)
    expected[0, 0] = 1.0
    expected[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    assert torch.equal(pattern[:, 1], expected.expand(16, n, n))

    _, clean = model.run_with_cache(ic.tokens(), names_filter=["blocks.1.attn.hook_pattern"])
    with clamp_pattern(model, *INERT1, "induction", ic):
        _, cache = model.run_with_cache(ic.tokens(), names_filter=["blocks.1.attn.hook_pattern"])
    new, old = cache["blocks.1.attn.hook_pattern"], clean["blocks.1.attn.hook_pattern"]
    assert torch.equal(new[:, :, :-1], old[:, :, :-1]) and torch.equal(new[:, 0], old[:, 0])
    match = ic.query_in_context()
    q_row = new[:, 1, -1]
    assert torch.allclose(q_row[:, 1::2], match.float() / match.sum(1, keepdim=True))
    assert torch.allclose(q_row.sum(-1), torch.ones(16))
    with pytest.raises(ValueError, match="batch"):
        with clamp_pattern(model, *IND, "induction"):
            pass


# ----------------------------------------------------------------------------- paths
def test_k_path_ablation(model, data):
    tokens = data["IC"].tokens()
    clean = query_logits(model, tokens)
    with ablate_heads(model, [PREV]):
        full = query_logits(model, tokens)
    with ablate_k_path(model, PREV, IND):
        cut = query_logits(model, tokens)
        assert acc(model, data["IC"]) < 0.8
    # PREV is only read by the induction head's keys: cutting that path is the whole effect.
    assert torch.allclose(cut, full, atol=1e-5)
    # Into a receiver that does not read PREV, or from a sender that writes nothing: no-op.
    with ablate_k_path(model, PREV, INERT1):
        assert torch.equal(query_logits(model, tokens), clean)
    with ablate_k_path(model, INERT0, IND, "mean", reference=data["IC"]):
        assert torch.equal(query_logits(model, tokens), clean)
    with pytest.raises(ValueError, match="sender"):
        with ablate_k_path(model, IND, PREV):
            pass


def test_k_path_matches_an_independent_patch_on_ln_rotary_model(data):
    """Layer 0 -> 2 of a random LN + rotary model: head 0's keys as if the sender were gone."""
    cfg = ModelConfig(n_layers=3, n_heads=2, d_model=16, attn_only=False, normalization="LN", positional="rotary")
    model = to_bridge(build_native(cfg, 32, N_LABELS, 9, seed=0))
    tokens = data["IC"][:8].tokens()
    _, clean = model.run_with_cache(tokens)
    sender_out = clean["blocks.0.attn.hook_z"][:, :, 1] @ model.W_O[0, 1]
    # The model's own ln1 on the residual minus the sender, fed to the k projection of all heads.
    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", lambda x, hook: x - sender_out)]):
        _, edited = model.run_with_cache(tokens, names_filter=["blocks.2.ln1.hook_out"])
    ln_in = edited["blocks.2.ln1.hook_out"]
    with model.hooks(fwd_hooks=[("blocks.2.attn.k.hook_in", lambda x, hook: ln_in)]):
        _, want = model.run_with_cache(tokens, names_filter=["blocks.2.attn.hook_k"])
    with ablate_k_path(model, (0, 1), (2, 0)):
        _, got = model.run_with_cache(tokens, names_filter=["blocks.2.attn.hook_k", "blocks.2.hook_resid_pre"])
    k_got, k_want, k_clean = got["blocks.2.attn.hook_k"], want["blocks.2.attn.hook_k"], clean["blocks.2.attn.hook_k"]
    assert torch.allclose(k_got[:, :, 0], k_want[:, :, 0], atol=1e-5)
    assert not torch.allclose(k_got[:, :, 0], k_clean[:, :, 0], atol=1e-4)
    assert torch.equal(k_got[:, :, 1], k_clean[:, :, 1])
    assert torch.equal(got["blocks.2.hook_resid_pre"], clean["blocks.2.hook_resid_pre"])


# ----------------------------------------------------------------------------- subcircuits
def test_subcircuit_constructors(model):
    icl = icl_circuit([PREV], [IND, PREV])
    assert icl.heads == (PREV, IND) and icl.mlps == () and not icl.direct_path
    iwl = iwl_path(model)
    assert iwl.direct_path and iwl.mlps == () and iwl.heads == ()
    with pytest.raises(ValueError, match="attention-only"):
        with ablate_subcircuit(model, Subcircuit("m", mlps=(0,)), "zero"):
            pass


def test_direct_path_ablation_removes_query_embedding_at_readout(model, data):
    tokens = data["IC"][:16].tokens()
    names = ["hook_embed", "hook_pos_embed", "ln_final.hook_in", "blocks.1.hook_resid_pre"]
    _, clean = model.run_with_cache(tokens, names_filter=names)
    with ablate_subcircuit(model, iwl_path(model), "zero"):
        _, cut = model.run_with_cache(tokens, names_filter=names)
    removed = clean["ln_final.hook_in"] - cut["ln_final.hook_in"]
    assert torch.allclose(removed[:, -1], clean["hook_embed"][:, -1] + clean["hook_pos_embed"][:, -1])
    assert torch.equal(removed[:, :-1], torch.zeros_like(removed[:, :-1]))
    assert torch.equal(cut["blocks.1.hook_resid_pre"], clean["blocks.1.hook_resid_pre"])


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_subcircuit_effects_separate_icl_from_iwl(model, data, clean, method):
    subs = [icl_circuit([PREV], [IND]), iwl_path(model)]
    df = subcircuit_effects(model, data, N_LABELS, subs, method)
    assert list(df.columns) == ["condition", "split", "metric", "value"]
    assert set(df.condition) == {"clean", "ICL circuit", "IWL path"}
    table = df.set_index(["condition", "split", "metric"])["value"]
    assert table[("clean", "IC", "acc")] == 1.0
    assert table[("ICL circuit", "IC", "acc")] < 0.3
    assert table[("ICL circuit", "IC2", "acc")] < 0.3
    assert table[("IWL path", "IC", "acc")] == 1.0
    assert table[("IWL path", "IW", "acc")] == pytest.approx(clean[1], abs=0.05)
