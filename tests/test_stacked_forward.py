"""The stacked training forward (all seeds at once, no vmap) equals each seed's own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from icl_circuits.config import apply_overrides
from icl_circuits.models import stacked as stacked_module
from icl_circuits.models.build import build_native, query_logits
from icl_circuits.models.stacked import seeds_per_chunk, stacked_query_logits, supports_stacked
from icl_circuits.presets import get_preset
from icl_circuits.registry import presets
from icl_circuits.training import ensemble
from icl_circuits.training.ensemble import VmapEnsemble, train_ensemble
from icl_circuits.training.trainer import Member, train
from tests.conftest import tiny_config
from tests.test_ensemble import _assert_same_run

SHRINK = {"omniglot-bursty": ["model.n_layers=2"], "nguyen-reddy2024": ["data.n_pairs=15"]}
SUPPORTED = [name for name in sorted(presets()) if name != "omniglot-bursty"]  # a CNN encoder: vmap
VARIANTS = [(name, []) for name in SUPPORTED] + [
    ("demo", ["model.attn_only=false", "model.positional=rotary", "model.readout=linear", "model.act_fn=silu"]),
    ("demo", ["model.normalization=none", "model.n_heads=4", "model.d_head=8"]),
    ("demo", ["model.normalization=LNPre", "model.input_norm=true", "model.label_bias=true"]),
    ("demo", ["model.normalization=RMS", "model.attn_only=false", "model.act_fn=relu", "model.d_mlp=32"]),
    ("demo", ["model.attn_bias=false", "model.attn_scale=1", "model.init_mode=torch", "model.n_layers=3"]),
    ("demo", ["data.layout=packed", "model.init_mode=lecun_normal", "model.label_init=lecun_normal"]),
    ("demo", ["model.positional=sinusoidal", "model.positions=shared", "model.n_layers=1"]),
    ("chan2024-stylized", ["model.positions=consecutive", "data.layout=packed"]),
    ("chan2024-stylized", ["model.positional=none", "model.attn_out_proj=false"]),
    ("nguyen-reddy2024", ["data.n_pairs=15", "model.n_layers=2", "model.attn_bias=true", "model.n_heads=5"]),
]
SEEDS = [0, 1, 2]


def _setup(name: str, overrides: list[str], batch: int = 4):
    cfg = apply_overrides(get_preset(name), SHRINK.get(name, []) + overrides)
    models = [build_native(cfg.model, seed=s, **cfg.data.model_shape()) for s in SEEDS]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                if p.requires_grad and p.ndim == 1:  # norm gains and biases start at 1 and 0, biases at 0
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))
    tokens = torch.stack([cfg.data.build_source(s).train_batch(0, batch).tokens() for s in SEEDS])
    return models, tokens


def _grads(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in named.items() if p.grad is not None}


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in b:
        # Within 1e-5 of the gradient's scale (float32 sums in another order).
        scale = max(1.0, b[key].abs().max().item())
        assert (a[key] - b[key]).abs().max().item() <= 1e-5 * scale, key


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=lambda v: v if isinstance(v, str) else ",".join(v) or "-")
@pytest.mark.parametrize("kernel", ["sdpa", "math"])
def test_stacked_equals_each_seed_and_vmap(name, overrides, kernel):
    models, tokens = _setup(name, overrides)
    assert supports_stacked(models[0])
    params, buffers = stack_module_state(models)
    weight = torch.randn(3, 4, models[0].cfg.d_vocab_out, generator=torch.Generator().manual_seed(0))
    # Chunks of 2 seeds (3 = 2 + 1) and all at once; the norms' affines applied to these few
    # rows (what costs less here), and folded into the next linears (what larger batches get).
    for chunk, fold in ((None, False), (2, False), (None, True)):
        for p in params.values():
            p.grad = None
        with pytest.MonkeyPatch.context() as mp:
            if fold:
                mp.setattr(stacked_module, "_fold_if_cheaper", lambda x, affine, d_out: (x, affine))
            stacked = stacked_query_logits(models[0], params, tokens, kernel=kernel, chunk=chunk)
        (stacked * weight).sum().backward()
        got = _grads(params)
        for s, model in enumerate(models):
            model.zero_grad()
            ref = query_logits(model, tokens[s])
            torch.testing.assert_close(stacked[s], ref, atol=1e-5, rtol=1e-5)
            (ref * weight[s]).sum().backward()
            _close({k: g[s] for k, g in got.items()}, _grads(dict(model.named_parameters())))
    # The vmapped forward the ensemble falls back to.
    base = copy.deepcopy(models[0])
    base.attention_kernel = "math"
    with torch.no_grad():
        vmapped = vmap(lambda p, b, t: functional_call(base, (p, b), (t,), kwargs={"query_only": True}))(
            params, buffers, tokens
        )
        torch.testing.assert_close(stacked_query_logits(models[0], params, tokens), vmapped, atol=1e-5, rtol=1e-5)


def test_unsupported_architectures_fall_back_to_vmap(monkeypatch):
    (cnn, *_), _ = _setup("omniglot-bursty", [], batch=2)
    assert not supports_stacked(cnn)
    demo, _ = _setup("demo", [])
    assert supports_stacked(demo[0])
    soft = copy.deepcopy(demo[0])
    soft.layers[0].attn.attn_scores_soft_cap = 30.0
    assert not supports_stacked(soft)
    capped = copy.deepcopy(demo[0])
    capped.output_logits_soft_cap = 5.0
    assert not supports_stacked(capped)
    # An ensemble of an unsupported model takes the vmap path and still equals each model alone.
    cfg = tiny_config()
    models = [build_native(cfg.model, seed=s, **cfg.data.model_shape()) for s in SEEDS]
    monkeypatch.setattr(ensemble, "supports_stacked", lambda model: False)
    members = [
        Member(cfg.replace(seed=s), None, cfg.data.build_source(s), m) for s, m in zip(SEEDS, models, strict=True)
    ]
    ens = VmapEnsemble(members)
    ens.start()
    assert not ens.stacked
    tokens = torch.stack([cfg.data.build_source(s).train_batch(0, 4).tokens() for s in SEEDS])
    ref = torch.stack([query_logits(m, tokens[s]) for s, m in enumerate(models)])
    torch.testing.assert_close(ens.logits(tokens), ref, atol=1e-5, rtol=1e-5)


def test_ensemble_logits_before_and_after_start():
    cfg = tiny_config(steps=3)
    models = [build_native(cfg.model, seed=s, **cfg.data.model_shape()) for s in SEEDS]
    members = [
        Member(cfg.replace(seed=s), None, cfg.data.build_source(s), m) for s, m in zip(SEEDS, models, strict=True)
    ]
    tokens = torch.stack([cfg.data.build_source(s).train_batch(1, 5).tokens() for s in SEEDS])
    ens = VmapEnsemble(members)
    assert ens.stacked
    before = ens.logits(tokens)
    assert before.shape == (3, 5, models[0].cfg.d_vocab_out) and not before.requires_grad
    torch.testing.assert_close(before, torch.stack([query_logits(m, tokens[s]) for s, m in enumerate(models)]))
    ens.start()
    inputs = ens.prepare([m.source.train_batch(0, cfg.train.batch_size) for m in members])
    ens.step(1e-2, inputs, 0)
    after = ens.logits(tokens)  # the stacked weights, ahead of the members' models
    assert not torch.allclose(after, before)
    ens.states()  # the models catch up
    torch.testing.assert_close(after, torch.stack([query_logits(m, tokens[s]) for s, m in enumerate(models)]))


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "vmap"])
def test_ensemble_equals_separate_runs(tmp_path, monkeypatch, stacked):
    if not stacked:
        monkeypatch.setattr(ensemble, "supports_stacked", lambda model: False)
    # Rotary, MLP blocks, RMS norm and l2 on top of the tiny config.
    cfg = tiny_config(steps=12, n_checkpoints=3, l2=1e-3)
    cfg = cfg.replace(model=cfg.model.replace(attn_only=False, positional="rotary", normalization="RMS"))
    seeds = [3, 5]
    runs = train_ensemble(cfg, seeds, [tmp_path / f"ens-{s}" for s in seeds], progress=False)
    for seed, run in zip(seeds, runs, strict=True):
        _assert_same_run(run, train(cfg.replace(seed=seed), tmp_path / f"alone-{seed}", progress=False))


def test_seeds_per_chunk():
    assert seeds_per_chunk(16, 32, 3, 64) == 16  # chan2024-stylized: all at once
    assert seeds_per_chunk(16, 128, 17, 64) == 2  # demo: eight chunks of two
    assert seeds_per_chunk(3, 10**6, 17, 64) == 1


def test_compile_takes_one_chunk_graph(tmp_path, monkeypatch):
    """``train.compile`` compiles the loss of one chunk of seeds (every chunk reuses its graph)."""
    compiled = []

    def fake_compile(fn):
        compiled.append(getattr(fn, "__name__", type(fn).__name__))
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = tiny_config(steps=4, n_checkpoints=2, compile=True)
    seeds = [3, 5]
    runs = train_ensemble(cfg, seeds, [tmp_path / f"ens-{s}" for s in seeds], progress=False)
    assert "chunk_losses" in compiled
    _assert_same_run(runs[0], train(cfg.replace(seed=seeds[0]), tmp_path / "alone", progress=False))
