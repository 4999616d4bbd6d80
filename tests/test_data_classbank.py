"""Class-bank generator: measured statistics against its parameters."""

from __future__ import annotations

import math

import pytest
import torch

from icl_circuits.data import data_config_from_dict
from icl_circuits.data.batch import unpack_tokens
from icl_circuits.data.classbank import ClassBankConfig, ClassBankSource
from icl_circuits.data.omniglot import load_omniglot
from icl_circuits.data.sampling import zipf_probs
from icl_circuits.errors import ConfigError, DataError

# A big Gaussian bank: chance repeats among i.i.d. items are rare enough to ignore.
BIG = {"n_classes": 2000, "n_exemplars": 3, "d": 8}


def _counts(cls: torch.Tensor) -> torch.Tensor:
    """``[b, n]`` -> ``[b, n]`` occurrences of each item's class within its row."""
    return (cls[:, :, None] == cls[:, None, :]).sum(-1)


def test_world_split_and_bank():
    cfg = ClassBankConfig(n_classes=40, n_exemplars=4, d=16, n_holdout=6, n_common=3, noise=0.1)
    src = ClassBankSource(cfg, seed=0)
    assert src.bank.shape == (40, 4, 16) and src.n_labels == 34 and src.d_in == 16
    assert sorted(torch.cat([src.trained, src.holdout]).tolist()) == list(range(40))
    assert torch.equal(src.common, src.trained[:3])
    assert torch.equal(src.label_table[src.trained], torch.arange(34)), "label = Zipf rank"
    assert (src.label_table[src.holdout] == -1).all()
    spread = (src.bank - src.bank.mean(1, keepdim=True)).pow(2).sum(-1).mean()
    assert 0.005 < spread.item() < 0.02, "exemplars scatter ~0.1 around their prototype"
    b = src.train_batch(0, 64)
    # every exemplar is one of its class's bank exemplars
    dist = (b.exemplars[:, :, None, :] - src.bank[b.classes]).abs().sum(-1).min(-1).values
    assert (dist == 0).all()


def test_zipf_class_frequencies():
    cfg = ClassBankConfig(
        n_classes=30, n_holdout=5, n_common=5, d=2, n_exemplars=1, zipf_alpha=1.0, p_bursty=0.0, n_pairs=4, shots=2
    )
    src = ClassBankSource(cfg, seed=2)
    cls = src.train_batch(0, 20000).classes.flatten()
    rank_of = torch.full((30,), -1)
    rank_of[src.trained] = torch.arange(25)
    ranks = rank_of[cls]
    assert (ranks >= 0).all()
    obs = torch.bincount(ranks, minlength=25).float()
    exp = zipf_probs(25, 1.0) * cls.numel()
    chi2 = ((obs - exp) ** 2 / exp).sum().item()
    assert chi2 < 70, f"chi-square {chi2:.1f} on 24 degrees of freedom"
    assert obs[0] > 5 * obs[10]


def test_p_bursty_fraction():
    cfg = ClassBankConfig(**BIG, p_bursty=0.3, n_pairs=8, shots=3, ways=2)
    b = ClassBankSource(cfg, seed=1).train_batch(3, 20000)
    query_count = (b.classes[:, :-1] == b.classes[:, -1:]).sum(1)
    share = (query_count >= 3).float().mean().item()
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)


def test_shots_by_ways_structure():
    cfg = ClassBankConfig(**BIG, p_bursty=1.0, n_pairs=9, shots=2, ways=3)
    b = ClassBankSource(cfg, seed=0).train_batch(0, 2000)
    ctx, query = b.classes[:, :-1], b.classes[:, -1:]
    counts = _counts(ctx)
    # three distinct classes at least twice each (the rest rarely hits them), query among them
    assert ((counts >= 2).sum(1) >= 6).all()
    assert ((ctx == query).sum(1) >= 2).all()
    assert ((counts >= 2).sum(1) == 6).float().mean() > 0.99


def test_constant_burst_structure():
    cfg = ClassBankConfig(
        n_classes=12, n_holdout=2, n_common=0, d=4, n_exemplars=1, sampler="constant", burst=2, n_pairs=7, p_bursty=1.0
    )
    b = ClassBankSource(cfg, seed=0).train_batch(0, 3000)
    ctx, query = b.classes[:, :-1], b.classes[:, -1:]
    assert ((ctx == query).sum(1) == 2).all(), "exactly B copies of the query class"
    counts = _counts(ctx)
    others = counts.masked_fill(ctx == query, 0)
    # a distractor with exactly B copies; the i.i.d. rest avoids both bursty classes, so
    # the only classes reaching B copies are the distractor and chance rest repeats
    assert ((others == 2).sum(1) >= 2).all()
    # with a 10-class trained set the rest (3 items) must come from the 8 other classes
    assert (others <= 3).all()


def test_holdout_disjoint_and_fewshot():
    cfg = ClassBankConfig(n_classes=60, n_holdout=8, d=4, n_exemplars=2, n_pairs=8, shots=3, ways=2)
    src = ClassBankSource(cfg, seed=0)
    holdout = set(src.holdout.tolist())
    seen = torch.cat([src.train_batch(s, 256).classes.flatten() for s in range(20)])
    assert not holdout & set(seen.tolist()), "holdout classes never appear in training"
    for split in ("nosupport", "ciwl", "flip"):
        assert not holdout & set(src.eval_batch(split, 256).classes.flatten().tolist()), split
    fs = src.eval_batch("fewshot", 500)
    assert set(fs.classes.flatten().tolist()) <= holdout
    assert fs.query_in_context().any(1).all()
    # Chan's 4-shot 2-way: two distinct classes four times each, labels a permutation of 0/1
    counts = _counts(fs.classes[:, :-1])
    assert (counts == 4).all()
    assert set(fs.context_labels.unique().tolist()) == {0, 1}
    same_class = fs.classes[:, :-1, None] == fs.classes[:, None, :-1]
    same_label = fs.context_labels[:, :, None] == fs.context_labels[:, None, :]
    assert torch.equal(same_class, same_label), "one label per class, different per class"
    q_label = fs.context_labels[fs.query_in_context()].view(500, 4)[:, 0]
    assert torch.equal(q_label, fs.target)
    assert 0.4 < (fs.target == 0).float().mean() < 0.6


def test_nosupport_and_ciwl():
    cfg = ClassBankConfig(n_classes=50, n_holdout=4, d=4, n_exemplars=1, n_pairs=6, zipf_alpha=1.0)
    src = ClassBankSource(cfg, seed=0)
    ns = src.eval_batch("nosupport", 1000)
    assert not ns.query_in_context().any()
    assert torch.equal(ns.context_labels, src.label_table[ns.classes[:, :-1]])
    assert torch.equal(ns.target, src.label_table[ns.classes[:, -1]])
    ci = src.eval_batch("ciwl", 1000)
    assert not ci.query_in_context().any(), "the query class stays absent"
    has_label = ci.context_labels == ci.target[:, None]
    assert has_label.any(1).all(), "the query's label is in the context"
    relabelled = ci.context_labels != src.label_table[ci.classes[:, :-1]]
    assert (relabelled.sum(1) <= 1).all() and relabelled.any(1).float().mean() > 0.9


def test_flip_swaps_labels():
    cfg = ClassBankConfig(**BIG, n_pairs=8, shots=3, ways=2)
    src = ClassBankSource(cfg, seed=0)
    b = src.eval_batch("flip", 1000)
    own = src.label_table[b.classes]
    query_items = b.query_in_context()
    assert (b.target != own[:, -1]).all(), "copying from context disagrees with memory"
    assert torch.equal(b.context_labels[query_items], b.target[:, None].expand(-1, 8)[query_items])
    # the query took the label of the other bursty class, which carries the query's label
    other = (_counts(b.classes[:, :-1]) >= 3) & ~query_items
    assert other.any(1).all()
    assert (own[:, :-1] == b.target[:, None])[other].all()
    assert (b.context_labels == own[:, -1:])[other].all()


def test_relabel_pairs():
    cfg = ClassBankConfig(
        n_classes=50, n_exemplars=1, n_pairs=2, sampler="constant", burst=1, relabel=True, p_bursty=1.0
    )
    src = ClassBankSource(cfg, seed=0)
    assert src.train_pairs.shape == (8, 2) and src.val_pairs.shape == (2, 2)
    all_pairs = {tuple(p) for p in torch.cat([src.train_pairs, src.val_pairs]).tolist()}
    assert len(all_pairs) == 10 and all(a < b < 5 for a, b in all_pairs)
    train = {tuple(p) for p in src.train_pairs.tolist()}
    b = src.train_batch(0, 4000)
    used = {tuple(sorted(p)) for p in b.context_labels.tolist()}
    assert used == train, "training uses every train pair and never a validation pair"
    assert torch.equal(b.target, b.context_labels[b.query_in_context()])
    assert 0.4 < (b.context_labels[:, 0] < b.context_labels[:, 1]).float().mean() < 0.6, "random order"
    fs = src.eval_batch("fewshot", 500)
    val = {tuple(p) for p in src.val_pairs.tolist()}
    assert {tuple(sorted(p)) for p in fs.context_labels.tolist()} <= val


def test_label_flip_rate():
    cfg = ClassBankConfig(**BIG, n_pairs=2, sampler="constant", burst=1, p_bursty=1.0, label_flip=0.3)
    src = ClassBankSource(cfg, seed=0)
    b = src.train_batch(0, 20000)
    flipped = (b.target != src.label_table[b.classes[:, -1]]).float().mean().item()
    assert abs(flipped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)
    # a flipped query carries the distractor's label; the distractor carries the query's
    rows = b.target != src.label_table[b.classes[:, -1]]
    query_item = b.query_in_context()[rows]
    assert torch.equal(b.context_labels[rows][~query_item], src.label_table[b.classes[rows, -1]])


def test_determinism_and_fresh_eval():
    cfg = ClassBankConfig(n_classes=100, n_exemplars=2, d=8, noise=0.5)
    a, b = ClassBankSource(cfg, seed=0), ClassBankSource(cfg, seed=0)
    assert torch.equal(a.train_batch(5, 16).exemplars, b.train_batch(5, 16).exemplars)
    assert not torch.equal(a.train_batch(5, 16).classes, a.train_batch(6, 16).classes)
    for split in a.splits:
        assert torch.equal(a.eval_batch(split, 32).classes, b.eval_batch(split, 32).classes)
    c = ClassBankSource(cfg, seed=1)
    assert not torch.equal(a.bank, c.bank) and not torch.equal(a.holdout, c.holdout)


def test_batch_tokens_round_trip():
    src = ClassBankSource(ClassBankConfig(n_classes=30, n_exemplars=1, d=5, n_pairs=6), seed=0)
    for b in [src.train_batch(0, 4)] + [src.eval_batch(s, 4) for s in src.splits]:
        tok = b.tokens()
        assert tok.dtype == torch.int32 and tok.shape == (4, 13, 6)
        feats, labels = unpack_tokens(tok, 5)
        assert torch.equal(feats[:, 0::2], b.exemplars)
        assert torch.equal(labels[:, 1::2], b.context_labels.float())
        assert (b.context_labels >= 0).all() and (b.context_labels < src.n_labels).all()


def test_omniglot_bank():
    cfg = ClassBankConfig(bank="omniglot", n_exemplars=3, image_size=28)
    src = ClassBankSource(cfg, seed=0)
    assert src.d_in == 784 and src.bank.shape == (1623, 3, 784) and src.n_labels == 1613
    assert torch.equal(src.bank, load_omniglot(size=28)[:, :3])
    b = src.train_batch(0, 8)
    assert b.exemplars.shape == (8, 9, 784) and 0 <= b.exemplars.min() and b.exemplars.max() <= 1
    with pytest.raises(DataError, match="no Omniglot pack"):
        ClassBankSource(cfg.replace(omniglot_path="/nonexistent/omniglot"), seed=0)


def test_config_round_trip():
    cfg = ClassBankConfig(n_classes=50, n_exemplars=1, n_pairs=2, sampler="constant", relabel=True)
    assert data_config_from_dict(cfg.to_dict()) == cfg
    assert cfg.n_pairs == 2 and cfg.vocab_size == 40 and cfg.d_in == 64


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shots": 5, "ways": 2, "N": 8}, "data.shots"),
        ({"n_classes": 12, "n_holdout": 10, "n_common": 0, "ways": 3, "N": 9}, "data.ways"),
        ({"n_classes": 20, "n_holdout": 10, "n_common": 10}, "data.n_holdout"),
        ({"n_classes": 20, "n_holdout": 30}, "data.n_holdout"),
        ({"n_holdout": 1}, "data.n_holdout"),
        ({"sampler": "constant", "B": 5, "N": 8}, "data.burst"),
        ({"sampler": "constant", "B": 0}, "data.burst"),
        ({"bank": "omniglot", "n_classes": 100}, "data.n_classes"),
        ({"bank": "omniglot", "n_exemplars": 21}, "data.n_exemplars"),
        ({"relabel": True, "ways": 3, "N": 9}, "data.ways"),
        ({"relabel": True, "n_val_pairs": 10}, "data.n_val_pairs"),
        ({"relabel": True, "n_relabel_labels": 1}, "data.n_relabel_labels"),
        ({"n_labels": 1}, "data.n_labels"),
        ({"p_bursty": 1.5}, "data.p_bursty"),
        ({"label_flip": -0.1}, "data.label_flip"),
        ({"zipf_alpha": -1.0}, "data.zipf_alpha"),
        ({"image_size": 0}, "data.image_size"),
        ({"exemplar_noise": -1.0}, "data.noise"),
        ({"ways": 1}, "data.ways"),
        ({"N": 0}, "data.n_pairs"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ConfigError) as err:
        ClassBankConfig.from_dict(kwargs, prefix="data.")  # old names (N, B, ...) migrate
    assert str(err.value).startswith(field)
    assert "\n" not in str(err.value)
