"""Vectorised seeds: each seed of an ensemble equals the same seed trained alone."""

from __future__ import annotations

import json

import pytest
import torch

from icl_circuits.errors import RunFolderError
from icl_circuits.runs import layout, store
from icl_circuits.runs.read import load_native, read_metrics
from icl_circuits.training import train
from icl_circuits.training.ensemble import train_ensemble
from tests.conftest import tiny_config

SEEDS = [3, 5]


def _assert_same_run(a, b, atol=1e-5):
    wa, wb = load_native(a).state_dict(), load_native(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        # A key bias has an analytically zero gradient (softmax ignores a shift shared by all
        # keys), so Adam turns rounding noise into updates of either sign: compare it loosely.
        tol = 1e-3 if k.endswith("attn.k.bias") else atol
        torch.testing.assert_close(wa[k], wb[k], atol=tol, rtol=0, msg=k)
    ma, mb = read_metrics(a), read_metrics(b)
    assert ma[["step", "split", "metric"]].equals(mb[["step", "split", "metric"]])
    # Accuracies can flip on a near-tie logit, so compare losses tightly and the rest loosely.
    loss = ma.metric == "loss"
    assert (ma.value[loss] - mb.value[loss]).abs().max() < 1e-4
    assert (ma.value - mb.value).abs().max() < 0.05
    for step in store.list_checkpoints(a):
        oa = store.load_checkpoint(a, step)
        ob = store.load_checkpoint(b, step)
        assert oa["optim"].keys() == ob["optim"].keys()
        assert oa["state"]["optim"] == ob["state"]["optim"]
        for k in oa["optim"]:
            torch.testing.assert_close(oa["optim"][k], ob["optim"][k], atol=atol, rtol=1e-4, msg=k)


@pytest.mark.parametrize(
    "overrides",
    [
        {"steps": 20},
        # SGD with momentum, decay on matrices only (ndim test on stacked tensors), L2, clipping.
        {
            "steps": 20,
            "optimizer": "sgd",
            "momentum": 0.9,
            "weight_decay": 1e-2,
            "decay_on": "matrices",
            "l2": 1e-3,
            "grad_clip": 0.05,
            "lr": 0.05,
        },
    ],
    ids=["adam", "sgd-decay-clip"],
)
def test_each_seed_equals_training_alone(tmp_path, overrides):
    cfg = tiny_config(**overrides)
    runs = train_ensemble(cfg, SEEDS, [tmp_path / f"ens-{s}" for s in SEEDS], progress=False)
    for seed, run in zip(SEEDS, runs, strict=True):
        alone = train(cfg.replace(seed=seed), tmp_path / f"alone-{seed}", progress=False)
        _assert_same_run(run, alone)
        names = {p.name for p in run.iterdir()}
        assert {layout.CONFIG, layout.PROVENANCE, layout.METRICS, layout.CHECKPOINTS} <= names
        assert store.list_checkpoints(run) == store.list_checkpoints(alone)
        assert store.load_checkpoint(run, 20)["model"].keys() == store.load_checkpoint(alone, 20)["model"].keys()


def test_resume_seed_alone_and_together(tmp_path):
    cfg = tiny_config(steps=20)
    runs = [tmp_path / f"ens-{s}" for s in SEEDS]
    train_ensemble(cfg, SEEDS, runs, progress=False, stop_after=8)
    assert store.list_checkpoints(runs[0])[-1] < 20
    # A seed's folder resumes with plain train() ...
    train(cfg.replace(seed=SEEDS[0]), runs[0], progress=False)
    alone = train(cfg.replace(seed=SEEDS[0]), tmp_path / "alone", progress=False)
    _assert_same_run(runs[0], alone)
    # ... the ensemble then trains only the seed not yet over ...
    train_ensemble(cfg, SEEDS, runs, progress=False)
    _assert_same_run(runs[1], train(cfg.replace(seed=SEEDS[1]), tmp_path / "alone1", progress=False))
    # ... and refuses unfinished folders that stop at different checkpoints.
    split = [tmp_path / f"split-{s}" for s in SEEDS]
    train_ensemble(cfg, SEEDS, split, progress=False, stop_after=8)
    train(cfg.replace(seed=SEEDS[0]), split[0], progress=False, stop_after=12)
    assert store.list_checkpoints(split[0])[-1] < 20
    with pytest.raises(RunFolderError, match="resume each with train"):
        train_ensemble(cfg, SEEDS, split, progress=False)
    # Ensemble resume from a common checkpoint.
    again = [tmp_path / f"again-{s}" for s in SEEDS]
    train_ensemble(cfg, SEEDS, again, progress=False, stop_after=8)
    train_ensemble(cfg, SEEDS, again, progress=False)
    _assert_same_run(again[0], alone)
    assert len((again[1] / layout.METRICS).read_text().splitlines()) == len(read_metrics(again[1]))


def test_bad_arguments(tmp_path):
    with pytest.raises(RunFolderError, match="one run folder per seed"):
        train_ensemble(tiny_config(), [1, 2], [tmp_path / "a"], progress=False)
    with pytest.raises(RunFolderError, match="distinct"):
        train_ensemble(tiny_config(), [1, 1], [tmp_path / "a", tmp_path / "b"], progress=False)


def _members(cfg, seeds):
    from icl_circuits.data import build_source
    from icl_circuits.models.build import build_native
    from icl_circuits.runs.read import model_shape
    from icl_circuits.training.trainer import Member

    out = []
    for seed in seeds:
        c = cfg.replace(seed=seed)
        source = build_source(c.data, seed, torch.device("cpu"))
        out.append(Member(c, None, source, build_native(c.model, seed=seed, **model_shape(c, source))))
    return out


@pytest.mark.parametrize("chunk", [4096, 7])
def test_stacked_evaluation_equals_each_member_alone(chunk):
    """One stacked forward per split (and chunk) gives each member the rows evaluate() gives it alone."""
    from icl_circuits.metrics import eval_sets, evaluate, evaluate_stacked
    from icl_circuits.training.ensemble import VmapEnsemble

    members = _members(tiny_config(eval_size=20), [3, 5, 8])
    ens = VmapEnsemble(members)
    ens.start()
    evals = [eval_sets(m.source, 20) for m in members]
    n_labels = members[0].source.n_labels
    stacked = evaluate_stacked(ens.logits, evals, n_labels, chunk=chunk)
    for m, ev, rows in zip(members, evals, stacked, strict=True):
        alone = evaluate(m.model, ev, n_labels)
        assert [(r["split"], r["metric"]) for r in rows] == [(r["split"], r["metric"]) for r in alone]
        for a, b in zip(rows, alone, strict=True):
            assert a.keys() == b.keys()
            assert abs(a["value"] - b["value"]) < 1e-5, (a, b)
    # The backend's hook: stacked when asked, each alone by default on the CPU; the same rows.
    default = ens.evaluate(evals, n_labels)
    ens.STACKED_EVAL = True
    forced = ens.evaluate(evals, n_labels)
    assert [[(r["split"], r["metric"]) for r in rows] for rows in default] == [
        [(r["split"], r["metric"]) for r in rows] for rows in forced
    ]
    pairs = [(a, b) for x, y in zip(default, forced, strict=True) for a, b in zip(x, y, strict=True)]
    assert max(abs(a["value"] - b["value"]) for a, b in pairs) < 1e-5
    with pytest.raises(ValueError, match="same splits"):
        evaluate_stacked(ens.logits, [evals[0], {k: v[:5] for k, v in evals[1].items()}, evals[2]], n_labels)


def test_stacked_evaluation_in_the_loop_writes_the_rows_of_separate_runs(tmp_path, monkeypatch):
    """With the evaluation stacked, every metrics.jsonl row (keys, order, value within 1e-5)
    is a separate train()'s; one row format on disk."""
    from icl_circuits.training.ensemble import VmapEnsemble

    monkeypatch.setattr(VmapEnsemble, "STACKED_EVAL", True)
    calls = []
    real = VmapEnsemble.logits
    monkeypatch.setattr(VmapEnsemble, "logits", lambda self, tokens: calls.append(1) or real(self, tokens))
    cfg = tiny_config(steps=10, n_checkpoints=2)
    runs = train_ensemble(cfg, SEEDS, [tmp_path / f"ens-{s}" for s in SEEDS], progress=False)
    assert calls  # the checkpoints after step 0 evaluated through the stacked forward
    for seed, run in zip(SEEDS, runs, strict=True):
        alone = train(cfg.replace(seed=seed), tmp_path / f"alone-{seed}", progress=False)
        lines = [json.loads(x) for x in (run / layout.METRICS).read_text().splitlines()]
        ref = [json.loads(x) for x in (alone / layout.METRICS).read_text().splitlines()]
        assert [list(r) for r in lines] == [list(r) for r in ref]
        assert [(r["step"], r["split"], r["metric"]) for r in lines] == [
            (r["step"], r["split"], r["metric"]) for r in ref
        ]
        assert max(abs(a["value"] - b["value"]) for a, b in zip(lines, ref, strict=True)) < 1e-5
        _assert_same_run(run, alone)
