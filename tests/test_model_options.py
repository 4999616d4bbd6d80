"""Model options of the Chan 2024 issue: label-embedding init, weight init, shared positions.

Ground truth: the init statistics against their formulas, the position table against the
layout, and the bridge / native equivalence and the probes under every option.
"""

from __future__ import annotations

import math

import pytest
import torch

import probes
from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.errors import ConfigError
from icl_circuits.models import ModelConfig, build_native, query_logits, to_bridge
from icl_circuits.models.embed import lecun_normal_, sinusoidal_table
from probes.viz import attention_html

SRC = GaussianSource(GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=4, burst=2), seed=0)
BATCH = SRC.train_batch(0, 32)

#: Each option alone and the reference's combination.
OPTIONS = [
    {"init_mode": "lecun_normal", "init_range": 1.0},
    {"label_init": "lecun_normal", "label_scale": 1.0, "label_bias": True},
    {"positional": "sinusoidal", "positions": "shared"},
    {
        "init_mode": "lecun_normal",
        "init_range": 1.0,
        "label_init": "lecun_normal",
        "label_scale": 1.0,
        "label_bias": True,
        "positional": "sinusoidal",
        "positions": "shared",
        "attn_only": False,
        "act_fn": "gelu_new",
    },
]


def _model(d_model: int = 16, **kw):
    return build_native(ModelConfig(d_model=d_model, n_heads=2, **kw), SRC.d_in, SRC.n_labels, BATCH.seq_len, seed=0)


def test_lecun_normal_matches_flax_statistics():
    w = lecun_normal_(torch.empty(512, 256), gain=1.0)
    assert w.std().item() == pytest.approx(1 / math.sqrt(256), rel=0.02)
    # Truncated at two (pre-correction) standard deviations.
    assert w.abs().max().item() <= 2 / math.sqrt(256) / 0.8796 + 1e-6
    w = lecun_normal_(torch.empty(64, 10), fan_in=10, gain=0.5)
    assert w.std().item() == pytest.approx(0.5 / math.sqrt(10), rel=0.1)


def test_label_embedding_scale_and_bias():
    default = _model(d_model=256)
    assert default.tok_embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert default.tok_embed.label_bias is None
    ref = _model(d_model=256, label_init="lecun_normal", label_scale=1.0, label_bias=True)
    # A Dense on the one-hot label: std 1/sqrt(n_labels), 16x TransformerLens's 0.02 here.
    assert ref.tok_embed.weight.std().item() == pytest.approx(1 / math.sqrt(SRC.n_labels), rel=0.05)
    with torch.no_grad():
        ref.tok_embed.label_bias.fill_(0.5)
    _, cache = to_bridge(ref).run_with_cache(BATCH.tokens())
    emb = cache["hook_embed"]
    torch.testing.assert_close(emb[:, 1::2], ref.tok_embed.weight[BATCH.context_labels] + 0.5)
    torch.testing.assert_close(emb[:, 0::2], ref.tok_embed.encoder(BATCH.exemplars))  # exemplars: no bias


def test_lecun_init_of_every_trainable_matrix():
    model = _model(d_model=64, attn_only=False, init_mode="lecun_normal", init_range=1.0, readout="mlp")
    seen = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
            fan_in = module.weight.shape[1]
            assert module.weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.2), name
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0, name
            seen += 1
    assert seen >= 8
    # The label table keeps its own init (TransformerLens's 0.02 by default).
    assert model.tok_embed.weight.std().item() < 0.05


def test_identity_encoder_is_left_alone_by_lecun_init():
    cfg = ModelConfig(d_model=8, encoder="identity", init_mode="lecun_normal", init_range=1.0)
    model = build_native(cfg, 8, SRC.n_labels, BATCH.seq_len, seed=0)
    torch.testing.assert_close(model.tok_embed.encoder.weight, torch.eye(8))


def test_shared_positions_table():
    model = _model(positional="sinusoidal", positions="shared")
    table = model.pos.weight
    n_pairs = SRC.n_pairs
    for i in range(n_pairs):  # x_i and y_i share index i - 1 (0-based i here)
        torch.testing.assert_close(table[2 * i], table[2 * i + 1])
    torch.testing.assert_close(table[2 * n_pairs], sinusoid_row(n_pairs, 16))  # the query gets index L
    assert not torch.allclose(table[0], table[2])
    consecutive = _model(positional="sinusoidal")
    torch.testing.assert_close(consecutive.pos.weight[3], sinusoid_row(3, 16))


def sinusoid_row(index: int, d_model: int) -> torch.Tensor:
    return sinusoidal_table(index + 1, d_model)[index]


@pytest.mark.parametrize("kw", OPTIONS)
def test_bridge_matches_native_under_each_option(kw):
    native = _model(**kw)
    bridge = to_bridge(native)
    tokens = BATCH.tokens()
    torch.testing.assert_close(query_logits(bridge, tokens), query_logits(native, tokens), atol=1e-5, rtol=1e-5)
    full = native(input_ids=tokens)[:, -1]
    torch.testing.assert_close(query_logits(native, tokens), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", OPTIONS)
def test_probes_run_under_each_option(kw):
    bridge = to_bridge(_model(**kw))
    scores = probes.head_scores(bridge, BATCH)
    assert len(scores) and scores["value"].notna().all()
    table = probes.all_heads_ablation(bridge, BATCH, SRC.n_labels, method="mean", reference=BATCH)
    assert len(table)
    clean = bridge(BATCH.tokens())
    with probes.ablate_heads(bridge, [(1, 0)], method="zero"):
        ablated = bridge(BATCH.tokens())
    assert torch.isfinite(ablated).all() and not torch.allclose(ablated, clean)
    torch.testing.assert_close(bridge(BATCH.tokens()), clean)  # hooks removed on exit
    html = attention_html(bridge, BATCH)
    assert "<" in str(html.local_src)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"positions": "shared"}, "model.positions"),  # learned positions cannot be shared
        ({"positions": "shared", "positional": "rotary"}, "model.positions"),
        ({"label_scale": 0.0}, "model.label_scale"),
        ({"label_init": "uniform"}, "model.label_init"),
        ({"init_mode": "orthogonal"}, "model.init_mode"),
    ],
)
def test_bad_options(kw, field):
    with pytest.raises((ConfigError, ValueError), match=field.replace(".", r"\.")):
        ModelConfig.from_dict({"d_model": 16, **kw}, prefix="model.")


def test_old_configs_load_with_todays_behaviour():
    """A config.json written before these options existed gets exactly the old model."""
    cfg = ModelConfig.from_dict({"d_model": 16}, prefix="model.")
    assert (cfg.label_init, cfg.label_scale, cfg.label_bias, cfg.positions) == ("normal", 0.02, False, "consecutive")
