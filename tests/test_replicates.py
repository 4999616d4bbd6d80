"""Seed replicates: ``train_seeds`` / ``train --seeds`` / a sweep's seed axis, vectorised where
the measured rule says it pays, each seed an ordinary run folder equal to a separate run."""

from __future__ import annotations

import json

import pytest
import torch

from icl_circuits.cli import main
from icl_circuits.errors import ConfigError
from icl_circuits.models import stacked
from icl_circuits.runs import layout
from icl_circuits.runs.store import load_checkpoint
from icl_circuits.sweeps import LocalBackend, SweepSpec, run_sweep
from icl_circuits.sweeps.backends import Job
from icl_circuits.sweeps.spec import build_points, parse_seeds
from icl_circuits.sweeps.sweep import group_jobs
from icl_circuits.training import replicates, train
from icl_circuits.training.replicates import step_flops, train_seeds, vectorise_pays
from tests.conftest import TINY_OVERRIDES, tiny_config
from tests.test_ensemble import _assert_same_run

SEEDS = [3, 5]


def test_train_seeds_vectorised_equals_separate_runs(tmp_path):
    cfg = tiny_config(steps=15, n_checkpoints=3)
    runs = train_seeds(cfg, SEEDS, [tmp_path / f"v{s}" for s in SEEDS], progress=False, vectorise=True)
    alone = [train(cfg.replace(seed=s), tmp_path / f"a{s}", progress=False) for s in SEEDS]
    for run, ref in zip(runs, alone, strict=True):
        _assert_same_run(run, ref)
    # Not vectorised: exactly train(), bit for bit.
    sep = train_seeds(cfg, SEEDS, [tmp_path / f"s{s}" for s in SEEDS], progress=False, vectorise=False)
    for run, ref in zip(sep, alone, strict=True):
        a, b = load_checkpoint(run, 15)["model"], load_checkpoint(ref, 15)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_rule(monkeypatch):
    cfg = tiny_config()
    n = replicates.VECTORISE_MIN_SEEDS
    assert step_flops(cfg) > 0
    assert vectorise_pays(cfg, n) and not vectorise_pays(cfg, n - 1) and not vectorise_pays(cfg, 1)
    assert not vectorise_pays(cfg.replace(train=cfg.train.replace(stop_above=0.9)), n)  # early stop: alone
    monkeypatch.setattr(replicates, "VECTORISE_MAX_FLOPS", step_flops(cfg) - 1)
    assert vectorise_pays(cfg, n)  # the stacked forward has no FLOP cap
    monkeypatch.setattr(stacked, "supports_stacked", lambda model: False)
    assert not vectorise_pays(cfg, n)  # vmap has


def test_cli_train_seeds(tmp_path, capsys):
    argv = ["train", "demo", *TINY_OVERRIDES, "--seeds", "0,1", "--vectorise", "yes", "--out", str(tmp_path / "r")]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "vectorised" in out
    for seed in (0, 1):
        run = tmp_path / "r" / layout.seed_dirname(seed)
        assert json.loads((run / layout.CONFIG).read_text())["seed"] == seed
        sep = tmp_path / f"sep{seed}"
        assert main(["train", "demo", *TINY_OVERRIDES, f"seed={seed}", "--out", str(sep), "--no-progress"]) == 0
        _assert_same_run(run, sep)
    assert main(["train", "demo", "--seeds", "1,1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "distinct" in err and not (tmp_path / "x").exists()


def test_parse_seeds():
    assert parse_seeds("0,1,2") == parse_seeds("range(3)") == parse_seeds("[0, 1, 2]") == [0, 1, 2]
    for bad in ("", "1,1", "0.5", "a"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def _jobs(grid):
    points = build_points(SweepSpec(base="demo", overrides=TINY_OVERRIDES, grid=grid))
    jobs = [Job(p.name, json.dumps(p.config.to_dict()), f"/runs/{p.name}") for p in points]
    return jobs, {p.name: p for p in points}


def test_group_jobs():
    jobs, points = _jobs({"seed": [0, 1, 2]})
    assert group_jobs(jobs, points, workers=1, vectorise=False) == jobs
    grouped = group_jobs(jobs, points, workers=1, vectorise=True)
    assert [len(j.points) for j in grouped] == [3]
    assert sorted(p for j in grouped for p in j.points) == sorted(points)
    # Too few members for the measured rule: every point alone.
    assert group_jobs(jobs, points, workers=1) == jobs
    # Enough: grouped, then split to keep 4 workers busy (chunks of >= VECTORISE_MIN_SEEDS).
    n = replicates.VECTORISE_MIN_SEEDS
    jobs, points = _jobs({"seed": list(range(4 * n))})
    grouped = group_jobs(jobs, points, workers=4)
    assert [len(j.points) for j in grouped] == [n] * 4
    # A group too small to give every worker a chunk the rule accepts stays separate.
    jobs, points = _jobs({"seed": list(range(2 * n - 1))})
    assert group_jobs(jobs, points, workers=2) == jobs
    assert [len(j.points) for j in group_jobs(jobs, points, workers=1)] == [2 * n - 1]


def test_sweep_with_vectorised_seeds_equals_separate(tmp_path):
    grid = {"data.n_classes": [64], "seed": [0, 1]}
    spec = SweepSpec(base="demo", overrides=TINY_OVERRIDES, grid=grid)
    ens = run_sweep(
        spec, tmp_path / "v", backend=LocalBackend(workers=1), progress=False, figures=False, vectorise=True
    )
    sep = run_sweep(
        spec, tmp_path / "s", backend=LocalBackend(workers=1), progress=False, figures=False, vectorise=False
    )
    assert ens.counts()["done"] == sep.counts()["done"] == 2
    for point in ens.points:
        _assert_same_run(tmp_path / "v" / "runs" / point.name, tmp_path / "s" / "runs" / point.name)
    rerun = run_sweep(
        spec, tmp_path / "v", backend=LocalBackend(workers=1), progress=False, figures=False, vectorise=True
    )
    assert rerun.trained == 0


def test_train_group_with_different_data_equals_separate_runs(tmp_path):
    """Grid points differing in a data setting (not the shape) share one vmapped model, each
    member drawing from its own source; each folder equals its separate run."""
    from icl_circuits.training.replicates import train_group

    base = tiny_config(steps=12, n_checkpoints=3)
    cfgs = [base.replace(data=base.data.replace(n_classes=k)) for k in (16, 64)]
    runs = train_group(cfgs, [tmp_path / f"g{i}" for i in range(2)], progress=False, vectorise=True)
    for i, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
        _assert_same_run(run, train(cfg, tmp_path / f"a{i}", progress=False))
    other = base.replace(model=base.model.replace(d_model=32))
    with pytest.raises(ConfigError, match="share model"):
        train_group([base, other], [tmp_path / "x", tmp_path / "y"], progress=False, vectorise=True)
    assert not (tmp_path / "x").exists()


def test_group_jobs_groups_points_sharing_a_model():
    jobs, points = _jobs({"data.n_classes": [16, 64], "data.burst": [0, 2], "seed": [0, 1]})
    grouped = group_jobs(jobs, points, workers=1, vectorise=True)
    assert [len(j.points) for j in grouped] == [8]  # same model and train: one vmapped job
    jobs, points = _jobs({"model.d_model": [16, 32], "seed": [0, 1]})
    assert sorted(len(j.points) for j in group_jobs(jobs, points, workers=1, vectorise=True)) == [2, 2]


def test_sweeps_in_one_pool_vectorise_across_sweeps(tmp_path):
    """Two sweeps whose points share a model (and share point names) train as one vectorised
    job; each sweep folder ends as its own run_sweep leaves it."""
    from icl_circuits.sweeps import run_sweeps

    specs = [
        SweepSpec(base="demo", overrides=(*TINY_OVERRIDES, f"data.burst={b}"), grid={"seed": [0, 1]}) for b in (0, 2)
    ]
    seen = []

    class Recording(LocalBackend):
        def run(self, jobs, on_done):
            seen.extend(jobs)
            return super().run(jobs, on_done)

    both = run_sweeps(
        [(spec, tmp_path / f"pool{i}") for i, spec in enumerate(specs)],
        backend=Recording(workers=1),
        progress=False,
        figures=False,
        vectorise=True,
    )
    assert [len(j.points) for j in seen] == [4]  # one job across both sweeps
    for i, (spec, res) in enumerate(zip(specs, both, strict=True)):
        alone = run_sweep(spec, tmp_path / f"alone{i}", backend=LocalBackend(workers=1), progress=False, figures=False)
        assert res.counts()["done"] == alone.counts()["done"] == 2
        assert res.status == alone.status and not res.errors
        for point in res.points:
            _assert_same_run(tmp_path / f"pool{i}" / "runs" / point.name, tmp_path / f"alone{i}" / "runs" / point.name)
        cols = ["point", "seed", "kind", "step", "split", "metric"]
        assert res.results[cols].equals(alone.results[cols])
        index = (tmp_path / f"pool{i}" / "index.csv").read_text()
        assert index == (tmp_path / f"alone{i}" / "index.csv").read_text()
    again = run_sweeps([(spec, tmp_path / f"pool{i}") for i, spec in enumerate(specs)], progress=False, figures=False)
    assert [r.trained for r in again] == [0, 0]
    with pytest.raises(Exception, match="its own folder"):
        run_sweeps([(specs[0], tmp_path / "same"), (specs[1], tmp_path / "same")], progress=False)
