"""Models: TransformerLens workflow on continuous exemplars, native/bridge equivalence."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache, patching

from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.models import ModelConfig, build_native, query_logits, to_bridge
from icl_circuits.runs.read import load_model, load_native

SRC = GaussianSource(GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=4, burst=2), seed=0)
BATCH = SRC.train_batch(0, 32)


def _model(**kw):
    return build_native(ModelConfig(d_model=16, **kw), SRC.d_in, SRC.n_labels, BATCH.seq_len, seed=0)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"readout": "mlp", "readout_hidden": (8,)},
        {"attn_only": False, "positional": "rotary", "n_heads": 2},
        {"positional": "sinusoidal", "normalization": "none"},
        {"positional": "none", "normalization": "RMS"},
    ],
)
def test_bridge_matches_native(kw):
    native = _model(**kw)
    bridge = to_bridge(native)
    tokens = BATCH.tokens()
    torch.testing.assert_close(query_logits(bridge, tokens), query_logits(native, tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        {"n_layers": 3, "readout": "mlp", "readout_hidden": (8,)},
        {"n_layers": 3, "attn_only": False, "positional": "rotary", "n_heads": 2},
        {"n_layers": 2, "positional": "sinusoidal", "normalization": "none"},
    ],
)
def test_forward_from_a_block_equals_the_forward(kw):
    """Behind the bridge, the blocks from ``l`` on, fed the forward's residual stream at ``l``, give its logits."""
    bridge = to_bridge(_model(**kw))
    tokens = BATCH.tokens()
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
        for layer in range(1, bridge.cfg.n_layers):
            resumed = bridge.original_model.forward_from(cache[f"blocks.{layer}.hook_resid_pre"], layer)
            torch.testing.assert_close(resumed, logits, atol=1e-6, rtol=0)


def test_same_seed_same_weights():
    a, b = _model(), _model()
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_run_with_cache_hook_names_and_decomposition():
    bridge = to_bridge(_model(n_heads=2, attn_only=False))
    _, cache = bridge.run_with_cache(BATCH.tokens())
    assert isinstance(cache, ActivationCache)
    for name in [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.attn.hook_pattern",
        "blocks.1.attn.hook_z",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_mlp_out",
    ]:
        assert name in cache, name
    assert cache["blocks.0.attn.hook_pattern"].shape == (32, 2, 9, 9)
    assert cache["blocks.1.attn.hook_z"].shape == (32, 9, 2, 8)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"]
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5)


def test_hook_embed_sees_exemplars_and_labels():
    native = _model()
    bridge = to_bridge(native)
    _, cache = bridge.run_with_cache(BATCH.tokens())
    emb = cache["hook_embed"]
    enc = native.tok_embed.encoder(BATCH.exemplars)
    torch.testing.assert_close(emb[:, 0::2], enc)
    torch.testing.assert_close(emb[:, 1::2], native.tok_embed.weight[BATCH.context_labels])


def test_hook_edits_change_output():
    bridge = to_bridge(_model(n_heads=2))
    tokens = BATCH.tokens()
    clean = bridge(tokens)

    def zero_head(z, hook):
        z[:, :, 0] = 0
        return z

    ablated = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert not torch.allclose(clean, ablated)
    torch.testing.assert_close(bridge(tokens), clean)  # hooks removed afterwards


def test_checkpoint_loads_as_bridge_with_identical_logits(tiny_run):
    native = load_native(tiny_run)
    bridge = load_model(tiny_run)
    tokens = BATCH.tokens()
    torch.testing.assert_close(query_logits(bridge, tokens), query_logits(native, tokens), atol=1e-5, rtol=1e-5)


def test_tl_patching_runs_on_trained_model(tiny_run):
    model = load_model(tiny_run)
    model.eval()
    clean, corrupt = SRC.eval_batch("IC", 8), SRC.eval_batch("IW", 8)
    _, clean_cache = model.run_with_cache(clean.tokens())

    def metric(logits):
        return logits[:, -1].gather(1, clean.target[:, None]).mean()

    out = patching.get_act_patch_attn_head_out_all_pos(model, corrupt.tokens(), clean_cache, metric)
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kw", [{}, {"readout": "mlp", "readout_hidden": (8,)}, {"attn_only": False, "positional": "rotary"}]
)
def test_query_only_fast_path_matches_full_forward(kw):
    native = _model(**kw)
    tokens = BATCH.tokens()
    full = native(input_ids=tokens)[:, -1]
    torch.testing.assert_close(query_logits(native, tokens), full, atol=1e-6, rtol=1e-6)
