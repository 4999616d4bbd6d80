"""Stylized high/low-frequency generator: measured statistics against its parameters."""

from __future__ import annotations

import math

import pytest
import torch

from icl_circuits.data import data_config_from_dict
from icl_circuits.data.batch import Batch, unpack_tokens
from icl_circuits.data.stylized import StylizedConfig, StylizedSource
from icl_circuits.errors import ConfigError


def _tol(p: float, n: int, k: float = 4.0) -> float:
    """``k`` binomial standard deviations of a share ``p`` measured on ``n`` draws."""
    return k * math.sqrt(p * (1 - p) / n)


def test_splits_and_their_semantics():
    src = StylizedSource(StylizedConfig(n_pairs=3, p_relevant=0.5), seed=0)
    assert len(src.splits) == 18 and len(set(src.splits)) == 18
    assert {"IBD", "IBD-rel-low", "OOBD-irr-high", "OOBD-high"} <= set(src.splits)
    assert src.icl_split == "OOBD-rel" and src.iwl_split == "IBD-irr" and src.ciwl_split is None
    for split in src.splits:
        b = src.eval_batch(split, 400)
        hits = b.query_in_context()
        if "-rel" in split:
            assert hits.all(), split
        elif "-irr" in split:
            assert not hits.any(), split
        else:
            assert 0 < hits.float().mean() < 1, split
        query = b.classes[:, -1]
        if split.endswith("-high"):
            assert (query < 5).all(), split
        if split.endswith("-low"):
            assert (query >= 5).all(), split
    with pytest.raises(ValueError, match="split"):
        src.eval_batch("IBD-nope", 3)


def test_high_low_class_frequencies():
    cfg = StylizedConfig(p_high=0.7, n_high=3, n_low=7, d=4, n_train=2**14)
    src = StylizedSource(cfg, seed=1)
    for b in (src.training_sequences(torch.arange(cfg.n_train)), src.eval_batch("IBD", 2**14)):
        n = b.classes.shape[0]
        high = (b.target < 3).float().mean().item()
        assert abs(high - 0.7) < _tol(0.7, n)
        # within a group the classes are equally likely
        freq = torch.bincount(b.target, minlength=10).float() / n
        assert torch.allclose(freq[:3], torch.full((3,), 0.7 / 3), atol=_tol(0.7 / 3, n))
        assert torch.allclose(freq[3:], torch.full((7,), 0.3 / 7), atol=_tol(0.3 / 7, n))
        assert torch.equal(b.target, b.classes[:, -1]), "IBD label = class id"
        assert torch.equal(b.context_labels, b.classes[:, :-1])


def test_p_relevant_per_slot_and_irrelevant_slots():
    cfg = StylizedConfig(n_pairs=4, p_relevant=0.3, d=2, n_train=2**14)
    b = StylizedSource(cfg, seed=2).training_sequences(torch.arange(cfg.n_train))
    rel = b.query_in_context().float()
    n = rel.numel()
    assert abs(rel.mean().item() - 0.3) < _tol(0.3, n)
    # the number of relevant slots is Binomial(L, p): variance L p (1 - p)
    counts = rel.sum(1)
    assert abs(counts.var().item() - 4 * 0.3 * 0.7) < 0.05
    # irrelevant slots follow the class weights with the target excluded
    ctx, query = b.classes[:, :-1], b.classes[:, -1:].expand(-1, 4)
    irr_high = (ctx[(rel == 0) & (query >= 5)] < 5).float()
    expected = 0.9 / (0.9 + 0.1 * 4 / 5)
    assert abs(irr_high.mean().item() - expected) < _tol(expected, irr_high.numel())


def test_oobd_shift_is_exact():
    src = StylizedSource(StylizedConfig(n_pairs=2), seed=0)
    shift = torch.tensor([1, 2, 3, 4, 0, 6, 7, 8, 9, 5])
    for split in ("OOBD", "OOBD-rel-low", "OOBD-irr-high", "OOBD-high"):
        b = src.eval_batch(split, 300)
        assert torch.equal(b.target, shift[b.classes[:, -1]]), split
        assert torch.equal(b.context_labels, shift[b.classes[:, :-1]]), split
    ibd = src.eval_batch("IBD-rel", 300)
    assert torch.equal(ibd.target, ibd.classes[:, -1])


def test_finite_training_set_and_index_determinism():
    cfg = StylizedConfig(n_pairs=2, d=8, n_train=16)
    src = StylizedSource(cfg, seed=3)
    seen: dict[int, torch.Tensor] = {}
    distinct = set()
    for step in range(40):
        idx = src.train_indices(step, 32)
        b = src.train_batch(step, 32)
        assert ((idx >= 0) & (idx < 16)).all()
        for i, x in zip(idx.tolist(), b.exemplars, strict=True):
            if i in seen:
                assert torch.equal(seen[i], x), "sequence i is the same whenever drawn"
            seen[i] = x
            distinct.add(x.numpy().tobytes())
    assert len(distinct) <= 16 and len(seen) == 16
    again = src.training_sequences(torch.tensor([5, 5, 11]))
    assert torch.equal(again.exemplars[0], seen[5]) and torch.equal(again.exemplars[2], seen[11])


def test_large_training_set_is_vectorised_and_stateless():
    cfg = StylizedConfig(n_train=2**20, d=4)
    src = StylizedSource(cfg, seed=0)
    idx = torch.tensor([0, 2**20 - 1, 12345])
    a = src.training_sequences(idx)
    b = src.training_sequences(torch.tensor([12345, 0]))
    assert torch.equal(a.exemplars[2], b.exemplars[0]) and torch.equal(a.exemplars[0], b.exemplars[1])


def test_exemplar_noise_and_centres():
    cfg = StylizedConfig(d=64, noise=0.2, n_train=2**12)
    src = StylizedSource(cfg, seed=0)
    assert torch.allclose(src.centres.norm(dim=-1), torch.ones(10))
    for b in (src.train_batch(0, 2000), src.eval_batch("IBD", 2000)):
        noise = b.exemplars - src.centres[b.classes]
        assert abs(noise.std().item() - 0.2) < 0.005
        assert abs(noise.mean().item()) < 0.005


def test_eval_sequences_are_fresh():
    cfg = StylizedConfig(d=8, n_train=512)
    src = StylizedSource(cfg, seed=0)
    train = src.training_sequences(torch.arange(512)).exemplars.flatten(1)
    for split in ("IBD", "OOBD-rel", "IBD-irr-low"):
        ev = src.eval_batch(split, 256).exemplars.flatten(1)
        assert torch.cdist(ev, train).min() > 0, split


def test_determinism():
    cfg = StylizedConfig(d=8, n_train=64)
    a, b = StylizedSource(cfg, seed=0), StylizedSource(cfg, seed=0)
    assert torch.equal(a.train_batch(7, 32).exemplars, b.train_batch(7, 32).exemplars)
    assert not torch.equal(a.train_batch(7, 32).exemplars, a.train_batch(8, 32).exemplars)
    assert torch.equal(a.eval_batch("OOBD-rel", 64).exemplars, b.eval_batch("OOBD-rel", 64).exemplars)
    c = StylizedSource(cfg, seed=1)
    assert not torch.equal(
        c.training_sequences(torch.arange(8)).exemplars, a.training_sequences(torch.arange(8)).exemplars
    )
    assert not torch.equal(c.centres, a.centres)


def test_batch_tokens_round_trip():
    src = StylizedSource(StylizedConfig(n_pairs=3, d=6), seed=0)
    for b in (src.train_batch(0, 5), src.eval_batch("OOBD", 5)):
        tok = b.tokens()
        assert tok.dtype == torch.int32 and tok.shape == (5, 7, 7)
        feats, labels = unpack_tokens(tok, 6)
        assert torch.equal(feats[:, 0::2], b.exemplars)
        assert torch.equal(labels[:, 1::2], b.context_labels.float())
        assert (labels[:, 0::2] == -1).all()


def test_config_round_trip():
    cfg = StylizedConfig(n_pairs=2, n_train=100)
    assert data_config_from_dict(cfg.to_dict()) == cfg
    assert cfg.n_pairs == 2 and StylizedSource(cfg, 0).n_labels == 10


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_high": 0}, "data.n_high"),
        ({"n_low": 0}, "data.n_low"),
        ({"sigma": -0.1}, "data.noise"),
        ({"p_high": 1.1}, "data.p_high"),
        ({"p_relevant": -0.5}, "data.p_relevant"),
        ({"n_pairs": 0}, "data.n_pairs"),
        ({"d": 0}, "data.d"),
        ({"n_train": 0}, "data.n_train"),
        ({"n_train": 2**20 + 1}, "data.n_train"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ConfigError) as err:
        StylizedConfig.from_dict(kwargs, prefix="data.")  # old names (sigma, L) migrate
    assert str(err.value).startswith(field)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- reference options
def test_redraw_law_matches_the_reference_statistics():
    """``irrelevant=redraw`` (chanb/simple_icl): a non-relevant slot hits the target with prob w_t^2."""
    n = 2**16
    for p_rel in (0.0, 0.9):
        cfg = StylizedConfig(d=2, n_train=n, p_relevant=p_rel, irrelevant="redraw")
        src = StylizedSource(cfg, seed=4)
        b = src.training_sequences(torch.arange(n))
        hit = b.query_in_context()[:, 0]
        for group, w in (("high", 0.9 / 5), ("low", 0.1 / 5)):
            mask = b.target < 5 if group == "high" else b.target >= 5
            expected = p_rel + (1 - p_rel) * w * w
            share = hit[mask].float().mean().item()
            assert abs(share - expected) < _tol(expected, int(mask.sum())) + 1e-4, (p_rel, group, share)
        # The exclude law never puts the target in a non-relevant slot.
        b0 = StylizedSource(cfg.replace(irrelevant="exclude"), seed=4).training_sequences(torch.arange(n))
        assert abs(b0.query_in_context().float().mean().item() - p_rel) < _tol(max(p_rel, 0.01), n)
    # The -irr splits exclude the query's class under either law.
    src = StylizedSource(StylizedConfig(d=2, irrelevant="redraw"), seed=0)
    for split in ("IBD-irr", "OOBD-irr-high", "IBD-irr-low"):
        assert not src.eval_batch(split, 2000).query_in_context().any(), split


def test_reference_eval_sets_are_training_sequences():
    cfg = StylizedConfig(d=3, n_train=2**12, eval_sets="reference")
    src = StylizedSource(cfg, seed=5)
    ev = src.eval_batch("IBD", 200)  # indices in [0, 1000) < n_train: every one is a training sequence
    train = src.training_sequences(torch.arange(1000))
    match = (ev.exemplars.flatten(1)[:, None] == train.exemplars.flatten(1)[None]).all(-1)
    assert match.any(1).all()
    fresh = StylizedSource(cfg.replace(eval_sets="fresh"), seed=5).eval_batch("IBD", 200)
    match = (fresh.exemplars.flatten(1)[:, None] == train.exemplars.flatten(1)[None]).all(-1)
    assert not match.any()
    # OOBD and the conditioned splits still follow their own laws.
    assert (src.eval_batch("OOBD-rel-low", 100).target >= 5).all()


def test_omniglot_bank_exemplars_are_drawings_of_their_class():
    cfg = StylizedConfig(bank="omniglot", image_size=8, noise=0.0, n_train=2**8)
    src = StylizedSource(cfg, seed=0)
    assert src.d_in == 64 and src.bank.shape == (10, 20, 64)
    b = src.train_batch(0, 64)
    own = (b.exemplars[:, :, None] == src.bank[b.classes]).all(-1).any(-1)
    assert own.all()  # each exemplar is one of its class's 20 drawings
    drawers = (b.exemplars[:, -1:, None] == src.bank[b.classes[:, -1:]]).all(-1).float().argmax(-1)
    assert drawers.unique().numel() > 5  # different drawings, not one per class
    noisy = StylizedSource(cfg.replace(noise=0.2), seed=0).train_batch(0, 64)
    assert (noisy.exemplars - b.exemplars).std().item() == pytest.approx(0.2, rel=0.1)
    with pytest.raises(ConfigError, match="data.n_low"):
        StylizedConfig(bank="omniglot", n_low=2000)


@pytest.mark.parametrize("bank", ["gaussian", "omniglot"])
def test_materialised_training_set_gives_the_same_batches(bank, monkeypatch):
    """Batches gathered from the materialised training set equal the per-batch generation, bitwise."""
    import icl_circuits.data.stylized as st

    cfg = StylizedConfig(n_pairs=2, n_train=300, irrelevant="redraw", bank=bank, image_size=8, d=8)
    table = StylizedSource(cfg, seed=3)
    table.train_batch(0, 1)  # builds the table (lazily, at the first batch)
    monkeypatch.setattr(st, "MATERIALISE_BYTES", 0)
    direct = StylizedSource(cfg, seed=3)
    for step in (0, 1, 57):
        a, b = table.train_batch(step, 64), direct.train_batch(step, 64)
        for x, y in zip(a.tensors(), b.tensors(), strict=True):
            assert torch.equal(x, y)
        assert a.__dict__.get("_tokens") is not None, "gathered from the token table"
        assert torch.equal(a.tokens(), b.tokens())
    assert table._table is not None and direct._table is None


def test_token_table_in_the_packed_layout():
    """The token table follows ``data.layout``: gathered packed tokens equal the laid-out batch's."""
    cfg = StylizedConfig(n_pairs=3, n_train=50, d=8, layout="packed")
    src = StylizedSource(cfg, seed=1)
    b = src.train_batch(2, 16)
    assert b.packed and b.tokens().shape == (16, 4, 9)
    assert torch.equal(b.tokens(), Batch(*b.tensors(), layout="packed").tokens())


def test_with_tokens_checks_shape():
    b = StylizedSource(StylizedConfig(n_pairs=2, n_train=20, d=8), seed=0).train_batch(0, 4)
    with pytest.raises(ValueError, match="tokens: expected int32"):
        b.with_tokens(torch.zeros(4, 5, 9))
