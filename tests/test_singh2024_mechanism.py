"""Singh 2024's layer-1 ablations and path cuts (icl_circuits.papers.singh2024.mechanism)."""

from __future__ import annotations

import copy

import pytest
import torch

from icl_circuits.config import apply_overrides
from icl_circuits.data import build_source
from icl_circuits.models.build import build_native, query_logits, to_bridge
from icl_circuits.papers.singh2024 import mechanism as mech
from icl_circuits.presets import get_preset


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("singh2024-induction"), ["model.d_model=16", "model.n_heads=2"])
    source = build_source(cfg.data, 0, "cpu")
    batch = source.train_batch(10**9, 256)
    native = build_native(cfg.model, cfg.data.d_in, cfg.data.vocab_size, batch.tokens().shape[1], 0)
    return native, batch, source.n_labels


def _model(native, silent_layer1: bool):
    native = copy.deepcopy(native)
    if silent_layer1:
        with torch.no_grad():
            native.layers[0].attn.o.weight.zero_()
    return to_bridge(native).eval()


def test_every_cut_is_a_no_op_when_layer1_writes_nothing(setup):
    native, batch, n_labels = setup
    model = _model(native, silent_layer1=True)
    cuts = mech.read_paths(model, batch, n_labels)
    assert set(cuts) == set(mech.PATHS)
    assert all(v == cuts["none"] for v in cuts.values()), cuts
    for keep in mech.KEEPS:
        assert mech.layer1_ablation(model, batch, n_labels, "zero", keep) == cuts["none"]
        assert set(mech.position_ablation(model, batch, n_labels, keep).values()) == {cuts["none"]}


def test_kept_values_really_replace_layer2_values(setup):
    native, batch, n_labels = setup
    model = _model(native, silent_layer1=False)
    tokens = batch.tokens()
    with torch.no_grad():
        clean = query_logits(model, tokens)
        v = mech._clean(model, tokens, ["blocks.1.attn.hook_v"])
        with model.hooks(fwd_hooks=mech._keep(v)):
            same = query_logits(model, tokens)
        with model.hooks(fwd_hooks=mech._keep({k: torch.zeros_like(t) for k, t in v.items()})):
            zeroed = query_logits(model, tokens)
    assert torch.allclose(clean, same, atol=1e-6)
    assert not torch.allclose(clean, zeroed, atol=1e-3)
    # With layer 2's patterns and values kept, only layer 1's direct path to the logits is cut:
    # the final residual loses exactly layer 1's attention output.
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_attn_out", "blocks.1.hook_resid_post"])
    direct = cache["blocks.1.hook_resid_post"] - cache["blocks.0.hook_attn_out"]
    with torch.no_grad():
        kept = mech._clean(model, tokens, ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v"])
        hooks = [(mech.Z1, mech._z_ablation(model, tokens, "zero")), *mech._keep(kept)]
        with model.hooks(fwd_hooks=hooks):
            _, ab = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_post"])
    assert torch.allclose(ab["blocks.1.hook_resid_post"], direct, atol=1e-5)


def test_bad_arguments_fail_in_one_line(setup):
    native, batch, n_labels = setup
    model = _model(native, silent_layer1=False)
    with pytest.raises(ValueError, match="keep: expected"):
        mech.layer1_ablation(model, batch, n_labels, keep="values")
    with pytest.raises(ValueError, match="method: expected"):
        mech.read_paths(model, batch, n_labels, method="resample")
