"""The nguyen-reddy2024 preset is the reference's model (``anhhuyalex/icl-kinetics``), exactly.

The reference's forward is re-written here from its ``attention.py`` (the last
``CausalTransformer``) and run on our weights: the logits must agree, the trainable
parameter count must be the reference's, and the weight-decay groups its optimiser's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from icl_circuits.config import apply_overrides
from icl_circuits.models import build_native, query_logits, to_bridge
from icl_circuits.presets import get_preset
from icl_circuits.training.optim import split_params

#: The reference at D = 63, L = 2: LayerNorm(65) 130 + QKV 65 x 195 + MLP 65-512-512-1 (biases).
REFERENCE_PARAMETERS = 2 * 65 + 65 * 195 + (65 * 512 + 512) + (512 * 512 + 512) + (512 + 1)


def _reference_forward(native, seq):
    """``CausalTransformer.forward`` of the reference, with our model's weights."""
    ln, attn, head = native.tok_embed.norm, native.layers[0].attn, native.head
    x = F.layer_norm(seq, (seq.shape[-1],), ln.weight, ln.bias)
    qkv = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight])  # nn.Linear(65, 195, bias=False)
    q, k, v = (x @ qkv.T).chunk(3, dim=-1)
    sa = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    return head.out(head.mlp(x[:, -1, :] + sa[:, -1, :]))[:, 0]


def test_preset_is_the_reference_model():
    cfg = apply_overrides(get_preset("nguyen-reddy2024"), ["data.n_pairs=9", "data.n_classes=64"])
    native = build_native(cfg.model, seed=0, **cfg.data.model_shape())
    with torch.no_grad():  # a trained-looking LayerNorm, so its gain and bias matter
        native.tok_embed.norm.weight.uniform_(0.5, 1.5)
        native.tok_embed.norm.bias.uniform_(-0.2, 0.2)
    batch = cfg.data.build_source(0).train_batch(0, 32)
    onehot = F.one_hot(batch.context_labels, 2).float()
    seq = torch.cat([batch.exemplars, torch.cat([onehot, torch.zeros(32, 1, 2)], 1)], -1)  # query label zeroed
    want = _reference_forward(native, seq)
    for model in (native, to_bridge(native)):
        logits = query_logits(model, batch.tokens())
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[:, 0], torch.zeros(32))


def test_parameters_and_decay_groups_are_the_reference_ones():
    cfg = get_preset("nguyen-reddy2024")
    assert cfg.data.n_pairs + 1 == 100 and cfg.data.layout == "packed"
    native = build_native(cfg.model, seed=0, **cfg.data.model_shape())
    names = {p: n for n, p in native.named_parameters()}
    assert sum(p.numel() for p in native.parameters() if p.requires_grad) == REFERENCE_PARAMETERS
    decayed, rest = split_params(native, cfg.train.decay_on)
    assert {names[p] for p in decayed} == {
        "tok_embed.norm.weight",
        "tok_embed.norm.bias",
        "layers.0.attn.q.weight",
        "layers.0.attn.k.weight",
        "layers.0.attn.v.weight",
    }
    assert all(names[p].startswith("head.") for p in rest)
    # PyTorch's default init: uniform in +-1/sqrt(fan_in).
    w = native.layers[0].attn.q.weight
    assert w.abs().max() <= 65**-0.5 and w.std() > 0.8 * 65**-0.5 / 3**0.5
