"""The packed layout: one token per context item, for every family, model and probe path.

The same ground truths as the interleaved layout's tests: generator statistics (the
sequences are the interleaved ones, laid out differently), hooks and the residual
decomposition, bridge/native equivalence, exact resume, and a hand-wired one-layer
induction-like model whose score is ~1.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data import data_config_from_dict
from icl_circuits.data.batch import unpack_tokens
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.errors import ConfigError
from icl_circuits.models import ModelConfig, build_native, query_logits, to_bridge
from icl_circuits.presets import get_preset
from icl_circuits.runs import layout as run_layout
from icl_circuits.runs import store
from icl_circuits.runs.read import load_native, read_metrics
from icl_circuits.training import train
from probes.handwired_packed import PACKED_INDUCTION_HEAD, packed_induction_model
from probes.scores import attention_scores, head_scores

FAMILIES = [
    {"family": "gaussian", "n_classes": 64, "n_labels": 8, "d": 8, "n_pairs": 4, "burst": 2},
    {"family": "stylized", "d": 8, "n_pairs": 2},
    {"family": "classbank", "n_classes": 64, "n_exemplars": 4, "d": 8, "n_pairs": 8},
]
GAUSS = GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=4, burst=2, layout="packed")
# The exact Nguyen & Reddy model, shrunk: d_model = d + 2 labels, a small readout.
NR_MODEL = get_preset("nguyen-reddy2024").model.replace(d_model=10, readout_hidden=(16, 16))


def _family(spec: dict, layout: str):
    try:
        return data_config_from_dict({**spec, "layout": layout})
    except ConfigError as err:  # a family field this test guessed wrong: show which
        pytest.fail(str(err))


@pytest.mark.parametrize("spec", FAMILIES, ids=lambda s: s["family"])
def test_packed_batches_are_the_interleaved_sequences(spec):
    inter, packed = _family(spec, "interleaved"), _family(spec, "packed")
    assert packed.model_shape()["n_ctx"] == packed.n_pairs + 1
    assert inter.model_shape()["n_ctx"] == 2 * inter.n_pairs + 1
    a, b = inter.build_source(5), packed.build_source(5)
    for got, want in [(b.train_batch(3, 16), a.train_batch(3, 16))] + [
        (b.eval_batch(s, 16), a.eval_batch(s, 16)) for s in a.splits
    ]:
        assert got.layout == "packed" and want.layout == "interleaved"
        for x, y in zip(got.tensors(), want.tensors(), strict=True):
            assert torch.equal(x, y)
        tok = got.tokens()
        assert tok.shape == (16, got.n_pairs + 1, got.d_in + 1) and got.seq_len == got.n_pairs + 1
        x, lab = unpack_tokens(tok, got.d_in)
        assert torch.equal(x, got.exemplars)
        assert torch.equal(lab[:, :-1].long(), got.context_labels) and bool((lab[:, -1] == -1).all())
        assert torch.equal(got.pos_classes(), got.classes)
        assert got.query_pos == got.n_pairs and got.item_pos().tolist() == list(range(got.n_pairs + 1))


def test_layout_config_round_trip_and_errors():
    cfg = RunConfig(data=GAUSS)
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    # An interleaved config writes no layout key: today's config.json files are unchanged.
    assert "layout" not in RunConfig().to_dict()["data"]
    with pytest.raises(ConfigError, match=r"^data\.layout: expected one of") as err:
        data_config_from_dict({"family": "stylized", "layout": "stacked"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="layout"):
        GAUSS.build_source(0).train_batch(0, 4).with_layout("diagonal")


def _packed_model(**kw):
    return build_native(ModelConfig(d_model=16, **kw), seed=0, **GAUSS.model_shape())


@pytest.mark.parametrize(
    "kw",
    [{}, {"readout": "mlp", "readout_hidden": (8,)}, {"attn_only": False, "positional": "rotary", "n_heads": 2}],
)
def test_packed_bridge_matches_native(kw):
    native = _packed_model(**kw)
    tokens = GAUSS.build_source(0).train_batch(0, 16).tokens()
    got, want = query_logits(to_bridge(native), tokens), query_logits(native, tokens)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native(input_ids=tokens)[:, -1], want, atol=1e-5, rtol=1e-5)


def test_packed_hooks_embedding_and_decomposition():
    native = _packed_model(n_heads=2, attn_only=False)
    batch = GAUSS.build_source(0).train_batch(0, 16)
    _, cache = to_bridge(native).run_with_cache(batch.tokens())
    n = batch.seq_len
    assert cache["blocks.0.attn.hook_pattern"].shape == (16, 2, n, n)
    assert cache["blocks.1.attn.hook_z"].shape == (16, n, 2, 8)
    emb, e = cache["hook_embed"], native.tok_embed
    enc = e.encoder(batch.exemplars)
    torch.testing.assert_close(emb[:, :-1], enc[:, :-1] + e.weight[batch.context_labels])
    torch.testing.assert_close(emb[:, -1], enc[:, -1])  # the query's label part is zero
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:2] == ["embed", "pos_embed"]
    torch.testing.assert_close(parts.sum(0), cache["blocks.1.hook_resid_post"], atol=1e-5, rtol=1e-5)


def test_nguyen_reddy_token_is_x_concat_onehot():
    data = GaussianConfig(n_classes=64, n_labels=2, d=8, n_pairs=4, burst=1, label_mode="binary", layout="packed")
    native = build_native(NR_MODEL, seed=0, **data.model_shape())
    batch = data.build_source(0).train_batch(0, 16)
    raw = native.tok_embed._embed(batch.tokens())  # before the input LayerNorm
    onehot = F.one_hot(batch.context_labels, 2).float()
    want = torch.cat([batch.exemplars, torch.cat([onehot, torch.zeros(16, 1, 2)], 1)], -1)
    torch.testing.assert_close(raw, want)
    bridge = to_bridge(native)
    _, cache = bridge.run_with_cache(batch.tokens())
    torch.testing.assert_close(cache["hook_embed"], F.layer_norm(want, (10,)))  # LN gain 1, bias 0 at init
    torch.testing.assert_close(query_logits(bridge, batch.tokens()), query_logits(native, batch.tokens()))
    parts = cache.decompose_resid()
    torch.testing.assert_close(parts.sum(0), cache["blocks.0.hook_resid_post"], atol=1e-5, rtol=1e-5)
    # Scale 1: the pattern is softmax(q k^T) with no 1/sqrt(d_head); no biases, W_O the identity.
    q, k = cache["blocks.0.attn.hook_q"][:, :, 0], cache["blocks.0.attn.hook_k"][:, :, 0]
    scores = (q @ k.transpose(1, 2)).masked_fill(torch.ones(5, 5).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"][:, 0], scores.softmax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache["blocks.0.hook_attn_out"], cache["blocks.0.attn.hook_z"][:, :, 0])
    frozen = {n for n, p in native.named_parameters() if not p.requires_grad}
    assert {"layers.0.attn.q.bias", "layers.0.attn.o.weight", "tok_embed.weight", "tok_embed.encoder.weight"} <= frozen


def test_binary_logit_cross_entropy_is_the_logistic_loss():
    data = GaussianConfig(n_classes=64, n_labels=2, d=8, n_pairs=4, burst=1, label_mode="binary", layout="packed")
    batch = data.build_source(0).train_batch(0, 32)
    logits = query_logits(build_native(NR_MODEL, seed=0, **data.model_shape()), batch.tokens())
    z = logits[:, 1] - logits[:, 0]
    sign = 2.0 * batch.target.float() - 1.0
    torch.testing.assert_close(F.cross_entropy(logits, batch.target), -F.logsigmoid(sign * z).mean())
    assert torch.equal(logits.argmax(-1), (z > 0).long())


def test_bad_model_options_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^model\.attn_out_proj"):
        ModelConfig(d_model=16, n_heads=2, d_head=4, attn_out_proj=False)
    with pytest.raises(ConfigError, match=r"^model\.binary_logit"):
        ModelConfig(binary_logit=True)
    with pytest.raises(ConfigError, match=r"^model\.binary_logit"):
        RunConfig(model=ModelConfig(readout="mlp", binary_logit=True))  # 32 labels
    with pytest.raises(ConfigError, match=r"^model\.d_model: expected at least d_in \+ n_labels"):
        RunConfig(data=GAUSS, model=ModelConfig(d_model=8, encoder="identity", label_init="onehot"))
    with pytest.raises(ConfigError, match=r"^model\.attn_scale"):
        ModelConfig(attn_scale=-1.0)


def _tiny_packed(**train_kw) -> RunConfig:
    return RunConfig(
        name="tiny-packed",
        seed=3,
        data=GAUSS,
        model=ModelConfig(n_layers=2, n_heads=2, d_model=16, attn_only=True),
        train=TrainConfig(steps=30, batch_size=16, lr=3e-3, n_checkpoints=6, eval_size=64, device="cpu", **train_kw),
    )


def test_packed_resume_equals_uninterrupted(tmp_path):
    full = train(_tiny_packed(), tmp_path / "full", progress=False)
    run = tmp_path / "resumed"
    train(_tiny_packed(), run, progress=False, stop_after=8)
    assert store.list_checkpoints(run)[-1] < 30
    train(_tiny_packed(), run, progress=False)
    ref = load_native(full).state_dict()
    for k, v in load_native(run).state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert read_metrics(run).equals(read_metrics(full))
    stored = json.loads((run / run_layout.CONFIG).read_text())
    assert stored["data"]["layout"] == "packed"


def _handwired_setup(n_pairs=8, d=32, **kw):
    data = GaussianConfig(n_classes=8, n_labels=8, d=d, n_pairs=n_pairs, burst=2, noise=0.0, layout="packed")
    source = data.build_source(0)
    model = to_bridge(packed_induction_model(d, 8, n_pairs, **kw))
    return source, model


def test_handwired_packed_induction_scores_one():
    source, model = _handwired_setup(n_heads=2)
    ic = source.eval_batch("IC", 256)
    scores = attention_scores(model, ic).set_index(["metric", "layer", "head_index"])["value"]
    layer, head = PACKED_INDUCTION_HEAD
    assert scores["task_induction", layer, head] > 0.95
    assert scores["induction_strength", layer, head] > 0.9
    # The inert head attends uniformly: 2 matching items (burst 2) of 9 tokens.
    assert scores["task_induction", 0, 1] == pytest.approx(2 / 9, abs=1e-4)
    acc = (query_logits(model, ic.tokens()).argmax(-1) == ic.target).float().mean()
    assert acc > 0.95
    every = head_scores(model, ic)
    assert set(every.attrs["skipped"]) == {"prev_token", "prev_token_corrected", "prefix_matching"}
    assert not set(every.metric) & set(every.attrs["skipped"])
