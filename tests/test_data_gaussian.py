"""Gaussian-mixture generator: measured statistics against its parameters."""

from __future__ import annotations

import math

import pytest
import torch

from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.data.sampling import zipf_probs
from icl_circuits.errors import ConfigError


def test_bursty_context_structure():
    cfg = GaussianConfig(n_classes=512, n_labels=32, d=16, n_pairs=8, burst=4, p_bursty=1.0)
    b = GaussianSource(cfg, seed=0).train_batch(0, 2000)
    ctx, query = b.classes[:, :-1], b.classes[:, -1]
    for row, q in zip(ctx[:200], query[:200], strict=True):
        values, counts = row.unique(return_counts=True)
        # N/B classes, each B times (two draws can collide on the same class: then 2B)
        assert counts.sum() == 8 and all(c % 4 == 0 for c in counts.tolist())
        assert q in values
    # label of class k is k mod L, in context and at the query
    assert torch.equal(b.context_labels, ctx % 32)
    assert torch.equal(b.target, query % 32)


def test_p_bursty_fraction_and_iid_part():
    cfg = GaussianConfig(n_classes=4096, n_labels=32, d=8, n_pairs=8, burst=2, p_bursty=0.3)
    b = GaussianSource(cfg, seed=1).train_batch(5, 20000)
    in_ctx = b.query_in_context().any(1).float().mean().item()
    # bursty rows always hold the query; i.i.d. rows almost never do with K = 4096
    expected = 0.3 + 0.7 * (1 - (1 - 1 / 4096) ** 8)
    assert abs(in_ctx - expected) < 4 * math.sqrt(expected * (1 - expected) / 20000)


def test_zipf_class_frequencies():
    cfg = GaussianConfig(n_classes=20, n_labels=4, d=4, n_pairs=4, burst=0, p_bursty=0.0, zipf_alpha=1.0)
    b = GaussianSource(cfg, seed=2).train_batch(0, 50000)
    freq = torch.bincount(b.classes.flatten(), minlength=20).float()
    freq /= freq.sum()
    p = zipf_probs(20, 1.0)
    assert torch.allclose(freq, p, atol=0.004)
    assert freq[0] > 3 * freq[5]


def test_exemplar_noise_formula():
    cfg = GaussianConfig(n_classes=8, n_labels=8, d=400, n_pairs=2, burst=1, noise=0.5)
    src = GaussianSource(cfg, seed=0)
    b = src.train_batch(0, 500)
    mu = src.means[b.classes]
    # x = (mu + eps*eta)/sqrt(1+eps^2)  =>  eta = (x*sqrt(1+eps^2) - mu)/eps has variance 1/D
    eta = (b.exemplars * math.sqrt(1.25) - mu) / 0.5
    assert abs(eta.var().item() * 400 - 1) < 0.05
    assert abs((b.exemplars**2).sum(-1).mean().item() - 1) < 0.05


def test_eval_splits():
    cfg = GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=8, burst=4)
    src = GaussianSource(cfg, seed=0)
    ic = src.eval_batch("IC", 500)
    assert (ic.classes >= 64).all(), "IC must use novel classes"
    assert ic.query_in_context().any(1).all()
    ic2 = src.eval_batch("IC2", 500)
    assert (ic2.classes < 64).all()
    assert torch.equal(ic2.target, (ic2.classes[:, -1] % 8 + 1) % 8), "IC2 shifts labels by one"
    assert torch.equal(ic2.context_labels, (ic2.classes[:, :-1] % 8 + 1) % 8)
    iw = src.eval_batch("IW", 500)
    assert not iw.query_in_context().any(), "IW: the query's class is never in the context"
    with pytest.raises(ValueError, match="split"):
        src.eval_batch("nope", 3)


def test_eval_fresh_and_deterministic():
    cfg = GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=4, burst=2)
    a, b = GaussianSource(cfg, seed=0), GaussianSource(cfg, seed=0)
    assert torch.equal(a.train_batch(7, 32).exemplars, b.train_batch(7, 32).exemplars)
    assert not torch.equal(a.train_batch(7, 32).exemplars, a.train_batch(8, 32).exemplars)
    assert torch.equal(a.eval_batch("IW", 64).exemplars, b.eval_batch("IW", 64).exemplars)
    train = torch.cat([a.train_batch(s, 64).exemplars for s in range(20)]).flatten(0, 1)
    ev = a.eval_batch("IC2", 64).exemplars.flatten(0, 1)
    assert torch.cdist(ev, train).min() > 0, "evaluation exemplars are fresh draws"
    assert not torch.equal(GaussianSource(cfg, seed=1).means, a.means)


def test_binary_variant_and_infinite_k():
    cfg = GaussianConfig(n_classes=100, n_labels=2, d=8, n_pairs=16, burst=1, label_mode="binary")
    src = GaussianSource(cfg, seed=0)
    assert src.label_table.sum().item() == 50, "balanced ±1 table"
    b = src.train_batch(0, 256)
    assert b.query_in_context().any(1).all()
    inf = GaussianSource(GaussianConfig(n_classes=-1, n_labels=8, d=8, n_pairs=4, burst=2), seed=0)
    b1, b2 = inf.train_batch(0, 64), inf.train_batch(1, 64)
    assert b1.classes.min() >= 0 and b1.query_in_context().any(1).all()
    assert torch.cdist(b1.exemplars.flatten(0, 1), b2.exemplars.flatten(0, 1)).min() > 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"B": 3, "N": 8}, "data.burst"),
        ({"K": 0}, "data.n_classes"),
        ({"p_B": 1.5}, "data.p_bursty"),
        ({"eps": -1.0}, "data.noise"),
        ({"label_mode": "binary", "n_labels": 4}, "data.n_labels"),
        ({"n_labels": 1}, "data.n_labels"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ConfigError) as err:
        GaussianConfig.from_dict(kwargs, prefix="data.")  # old names (K, B, ...) migrate
    assert str(err.value).startswith(field)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("noise", [0.0, 0.1])
@pytest.mark.parametrize("n_classes", [64, -1])
def test_exemplars_are_the_formula_bit_for_bit(noise, n_classes):
    """The in-place exemplar arithmetic (and skipping the draw at noise 0) gives exactly
    ``(mu + eps * eta) / sqrt(1 + eps**2)`` with ``eta ~ N(0, I/D)``, as before."""

    def formula(self, means, gen):
        eta = torch.randn(means.shape, generator=gen, device=self.device) / math.sqrt(self.cfg.d)
        return (means + self.cfg.noise * eta) / math.sqrt(1.0 + self.cfg.noise**2)

    cfg = GaussianConfig(n_classes=n_classes, n_labels=8, d=16, n_pairs=8, burst=2, noise=noise)
    src = GaussianSource(cfg, 1)
    ours = [src.train_batch(s, 32) for s in range(3)] + [src.eval_batch(sp, 32) for sp in src.splits]
    src._exemplars = formula.__get__(src)
    ref = [src.train_batch(s, 32) for s in range(3)] + [src.eval_batch(sp, 32) for sp in src.splits]
    for a, b in zip(ours, ref, strict=True):
        for x, y in zip(a.tensors(), b.tensors(), strict=True):
            assert torch.equal(x, y)
