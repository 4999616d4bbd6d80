"""Per-module learning rates (``train.lr_scale``): groups, one step's arithmetic, config.json, resume."""

from __future__ import annotations

import json

import pytest
import torch

from icl_circuits.config import apply_overrides
from icl_circuits.errors import ConfigError
from icl_circuits.models.build import build_native
from icl_circuits.runs import layout, store
from icl_circuits.runs.read import load_config, load_native, read_metrics
from icl_circuits.training import train
from icl_circuits.training.ensemble import train_ensemble
from icl_circuits.training.optim import LR_GROUPS, build_optimizer, lr_group, param_groups, set_lr
from tests.conftest import tiny_config

SCALES = (4.0, 0.25, 2.0, 0.5)  # attention, MLP, embedding, unembedding


def _config(**train):
    cfg = tiny_config(**train)
    return cfg.replace(model=cfg.model.replace(readout="mlp", readout_hidden=(16,)))


def _model(cfg):
    return build_native(cfg.model, seed=cfg.seed, **cfg.data.model_shape())


def test_every_group_of_a_model_is_named():
    model = _model(_config())
    groups = {n: lr_group(n) for n, p in model.named_parameters() if p.requires_grad}
    assert {g for g in groups.values()} >= set(LR_GROUPS)
    assert groups["layers.0.attn.q.weight"] == "attention"
    assert groups["head.mlp.0.weight"] == "mlp"
    assert groups["tok_embed.weight"] == "embed"
    assert groups["head.out.weight"] == "unembed"
    assert lr_group("layers.0.ln1.weight") is None


def test_default_scales_keep_the_two_groups():
    cfg = _config(weight_decay=1e-2, decay_on="matrices")
    groups = param_groups(_model(cfg), cfg.train)
    assert len(groups) == 2 and all("lr_scale" not in g for g in groups)
    assert [g["weight_decay"] for g in groups] == [1e-2, 0.0]


def test_one_sgd_step_moves_each_module_at_its_own_rate():
    lr = 0.1
    cfg = _config(optimizer="sgd", lr=lr, lr_scale=SCALES)
    model = _model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, cfg.train)
    set_lr(opt, lr)
    # A loss with a distinct gradient for every trainable parameter.
    loss = sum((p**2).sum() * (i + 1) for i, p in enumerate(model.parameters()) if p.requires_grad)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt.step()
    scale = dict(zip(LR_GROUPS, SCALES, strict=True))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = lr_group(name)
        expect = before[name] - lr * (scale[group] if group else 1.0) * grads[name]
        torch.testing.assert_close(p.detach(), expect, rtol=1e-6, atol=1e-7, msg=name)


def test_lr_scale_is_stored_validated_and_overridable(tmp_path):
    cfg = apply_overrides(_config(steps=4, n_checkpoints=2), ["train.lr_scale=[4,0.25,2,0.5]"])
    assert cfg.train.lr_scale == SCALES
    run = train(cfg, tmp_path / "run", progress=False)
    stored = json.loads((run / layout.CONFIG).read_text())
    assert stored["train"]["lr_scale"] == list(SCALES)
    assert load_config(run) == cfg
    groups = store.load_checkpoint(run, 4)["state"]["optim"]["param_groups"]
    assert sorted({g["lr_scale"] for g in groups}) == sorted(set(SCALES) | {1.0})
    for bad in ("train.lr_scale=[1,1,1]", "train.lr_scale=[1,0,1,1]"):
        with pytest.raises(ConfigError, match="train.lr_scale"):
            apply_overrides(_config(), [bad])


def test_scales_change_training_and_resume_exactly(tmp_path):
    cfg = _config(steps=20, optimizer="sgd", lr=0.05, lr_scale=SCALES)
    full = train(cfg, tmp_path / "full", progress=False)
    plain = train(cfg.replace(train=cfg.train.replace(lr_scale=(1.0,) * 4)), tmp_path / "plain", progress=False)
    w_full, w_plain = load_native(full).state_dict(), load_native(plain).state_dict()
    assert not torch.equal(w_full["layers.0.attn.q.weight"], w_plain["layers.0.attn.q.weight"])
    resumed = tmp_path / "resumed"
    train(cfg, resumed, progress=False, stop_after=8)
    assert store.list_checkpoints(resumed)[-1] < 20
    train(cfg, resumed, progress=False)
    for k, v in load_native(resumed).state_dict().items():
        assert torch.equal(v, w_full[k]), k
    assert read_metrics(resumed).equals(read_metrics(full))


def test_ensemble_applies_the_scales_as_a_single_run_does(tmp_path):
    cfg = _config(steps=10, optimizer="sgd", lr=0.05, lr_scale=SCALES)
    seeds = [3, 5]
    runs = train_ensemble(cfg, seeds, [tmp_path / f"ens-{s}" for s in seeds], progress=False)
    for seed, run in zip(seeds, runs, strict=True):
        alone = load_native(train(cfg.replace(seed=seed), tmp_path / f"alone-{seed}", progress=False)).state_dict()
        for k, v in load_native(run).state_dict().items():
            torch.testing.assert_close(v, alone[k], atol=1e-5, rtol=0, msg=k)
