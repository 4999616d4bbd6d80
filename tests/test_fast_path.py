"""The training-only forward (fused QKV + SDPA, query-only last block) equals the native one and the bridge."""

from __future__ import annotations

import pytest
import torch

from icl_circuits.config import apply_overrides
from icl_circuits.models.build import build_native, to_bridge
from icl_circuits.models.fast import supports_fast_path
from icl_circuits.presets import get_preset
from icl_circuits.registry import presets

SHRINK = {"omniglot-bursty": ["model.n_layers=2"], "nguyen-reddy2024": ["data.n_pairs=15"]}
VARIANTS = [(name, []) for name in sorted(presets())] + [
    ("demo", ["model.attn_only=false", "model.positional=rotary", "model.readout=linear"]),
    ("demo", ["model.normalization=none", "model.n_heads=4"]),
    ("chan2024-stylized", ["model.positions=consecutive", "data.layout=packed"]),
    ("demo", ["data.layout=packed", "model.init_mode=lecun_normal", "model.label_init=lecun_normal"]),
]


def _setup(name: str, overrides: list[str]):
    cfg = apply_overrides(get_preset(name), SHRINK.get(name, []) + overrides)
    source = cfg.data.build_source(cfg.seed)
    model = build_native(cfg.model, seed=cfg.seed, **cfg.data.model_shape())
    return model, source.train_batch(0, 8).tokens()


def _grads(model, logits, weight):
    model.zero_grad()
    (logits * weight).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=lambda v: v if isinstance(v, str) else ",".join(v) or "-")
def test_fast_path_equals_native_and_bridge(name, overrides):
    model, tokens = _setup(name, overrides)
    assert supports_fast_path(model)
    fast = model(input_ids=tokens, query_only=True)
    ref = model(input_ids=tokens, query_only=True, reference=True)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    weight = torch.randn(fast.shape, generator=torch.Generator().manual_seed(0))
    g_fast, g_ref = (
        _grads(model, model(input_ids=tokens, query_only=True), weight),
        _grads(model, model(input_ids=tokens, query_only=True, reference=True), weight),
    )
    assert g_fast.keys() == g_ref.keys() and g_fast
    for key in g_ref:
        # Within 1e-5 of the gradient's scale: float32 sums in another order differ by ~1e-7 relative.
        scale = max(1.0, g_ref[key].abs().max().item())
        assert (g_fast[key] - g_ref[key]).abs().max().item() <= 1e-5 * scale, key
    with torch.no_grad():
        bridge = to_bridge(model)(tokens)[:, -1]
    torch.testing.assert_close(fast.detach(), bridge, atol=1e-5, rtol=1e-5)


def test_fast_path_trains_the_same_parameters():
    model, _ = _setup("demo", [])
    keys = set(model.state_dict())
    assert keys == set(
        build_native(get_preset("demo").model, seed=1, **get_preset("demo").data.model_shape()).state_dict()
    )


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=lambda v: v if isinstance(v, str) else ",".join(v) or "-")
def test_math_kernel_equals_sdpa(name, overrides):
    """The matmul attention the vectorised seeds use gives the SDPA path's logits and gradients."""
    model, tokens = _setup(name, overrides)
    weight = torch.randn(model(input_ids=tokens, query_only=True).shape, generator=torch.Generator().manual_seed(0))
    sdpa_logits = model(input_ids=tokens, query_only=True)
    g_sdpa = _grads(model, sdpa_logits, weight)
    model.attention_kernel = "math"
    math_logits = model(input_ids=tokens, query_only=True)
    g_math = _grads(model, math_logits, weight)
    torch.testing.assert_close(math_logits, sdpa_logits, atol=1e-5, rtol=1e-5)
    assert g_math.keys() == g_sdpa.keys()
    for key in g_sdpa:
        scale = max(1.0, g_sdpa[key].abs().max().item())
        assert (g_math[key] - g_sdpa[key]).abs().max().item() <= 1e-5 * scale, key
