"""``import icl_circuits as ic``: the front door's names, the ``Run`` handle, and the one training
entry with the older entry points it replaces (each must leave the same run folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import icl_circuits as ic
from icl_circuits.errors import CheckpointError, ConfigError, RunFolderError
from icl_circuits.runs import handle, read
from icl_circuits.runs.layout import seed_dirname
from icl_circuits.training import ensemble, replicates, trainer
from icl_circuits.training.schedule import checkpoint_steps
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _same_run(a, b) -> None:
    """Same metrics at every checkpoint and the same final weights."""
    pd.testing.assert_frame_equal(read.read_metrics(a), read.read_metrics(b))
    wa, wb = read.load_native(a).state_dict(), read.load_native(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_the_front_door_names_resolve_and_import_no_torch():
    code = "import sys, icl_circuits as ic; print('torch' in sys.modules); print(sorted(ic.__all__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded, names = out.stdout.splitlines()
    assert loaded == "False", "import icl_circuits loads torch before a name is used"
    for name in ic.__all__:
        assert getattr(ic, name) is not None
    assert ic.train is __import__("icl_circuits.training", fromlist=["train"]).train
    assert ic.presets.demo() == ic.get_preset("demo")
    with pytest.raises(AttributeError):
        ic.no_such_name  # noqa: B018


def test_run_handle_reads_the_folder(tiny_run):
    run = ic.Run(tiny_run)
    assert run.config == tiny_config() and run.source.splits == read.load_source(tiny_run).splits
    on_disk = sorted(int(p.name.removeprefix("step_")) for p in (tiny_run / "checkpoints").iterdir())
    assert run.checkpoints == on_disk and len(on_disk) > 2 and run.last_step == on_disk[-1] == 40
    pd.testing.assert_frame_equal(run.metrics(), read.read_metrics(tiny_run))
    steps = [step for step, _ in run.iter_checkpoints()]
    assert steps == run.checkpoints
    a, b = run.load_model().state_dict(), read.load_model(tiny_run).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = run.source.eval_batch("IC", 8)
    assert run.load_model(0)(batch.tokens()).shape[0] == 8
    # Path-like: the functions that take a run path take a Run.
    assert Path(run) == Path(tiny_run) and (run / "config.json").exists() and str(run) == str(tiny_run)
    assert read.load_config(run) == run.config and run == ic.Run(run) and run.name == "tiny"
    assert run.exists() and run.parent == Path(tiny_run).parent and sorted(run.rglob("config.json"))
    with pytest.raises(RunFolderError, match="no such run folder"):
        ic.Run(tiny_run / "missing")


def test_run_handle_reads_config_and_checkpoint_list_once(tiny_run, monkeypatch):
    calls = {"config": 0, "list": 0}
    load_config, list_checkpoints = read.load_config, handle.list_checkpoints

    def count_config(path):
        calls["config"] += 1
        return load_config(path)

    def count_list(path):
        calls["list"] += 1
        return list_checkpoints(path)

    monkeypatch.setattr(read, "load_config", count_config)
    monkeypatch.setattr(handle, "list_checkpoints", count_list)
    run = ic.Run(tiny_run)
    for _ in run.iter_checkpoints():
        pass
    run.load_model()
    _ = run.source, run.config
    assert calls == {"config": 1, "list": 1}
    assert run.refresh().checkpoints == run.checkpoints
    assert calls["list"] == 2


def test_run_handle_names_a_folder_without_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        ic.Run(tmp_path / "empty").load_model()


def test_train_returns_a_run_and_the_old_entry_points_train_the_same(tmp_path):
    cfg = tiny_config(steps=8, n_checkpoints=2)
    run = ic.train(cfg, tmp_path / "new", progress=False)
    tc = cfg.train
    assert isinstance(run, ic.Run) and run.checkpoints == checkpoint_steps(
        tc.steps, tc.n_checkpoints, tc.checkpoint_every
    )
    old = trainer.train(cfg, tmp_path / "old", progress=False)
    assert old == tmp_path / "old"
    _same_run(run, old)
    trainer.train_configs([cfg], [tmp_path / "configs"], trainer.SingleModel, False)
    trainer.train_members(cfg, [cfg.seed], [tmp_path / "members"], trainer.SingleModel, progress=False)
    for name in ("configs", "members"):
        _same_run(run, tmp_path / name)


def test_train_with_seeds_equals_one_run_per_seed_and_the_old_entry_points(tmp_path):
    cfg, seeds = tiny_config(steps=8, n_checkpoints=2), [1, 2]
    runs = ic.train(cfg, tmp_path / "seeds", progress=False, seeds=seeds, vectorise=False)
    assert runs == [tmp_path / "seeds" / seed_dirname(s) for s in seeds]
    assert [r.config.seed for r in runs] == seeds
    for s, r in zip(seeds, runs, strict=True):
        _same_run(r, ic.train(cfg.replace(seed=s), tmp_path / f"alone{s}", progress=False))
    old = replicates.train_seeds(cfg, seeds, [tmp_path / f"old{s}" for s in seeds], progress=False, vectorise=False)
    for r, o in zip(runs, old, strict=True):
        _same_run(r, o)
    # Vectorised: the same as train_ensemble (the same backend), and the group entry too.
    vec = ic.train(cfg, [tmp_path / f"vec{s}" for s in seeds], progress=False, seeds=seeds, vectorise=True)
    ens = ensemble.train_ensemble(cfg, seeds, [tmp_path / f"ens{s}" for s in seeds], progress=False)
    group = ic.train([cfg.replace(seed=s) for s in seeds], [tmp_path / f"grp{s}" for s in seeds], False, vectorise=True)
    for v, e, g in zip(vec, ens, group, strict=True):
        _same_run(v, e)
        _same_run(v, g)


def test_train_refuses_mismatched_runs_in_one_line(tmp_path):
    cfg = tiny_config(steps=4, n_checkpoints=2)
    with pytest.raises(RunFolderError, match="one config trains into one run folder"):
        ic.train(cfg, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(RunFolderError, match="2 configs need a list of 2 run folders"):
        ic.train([cfg, cfg.replace(seed=9)], tmp_path / "a")
    with pytest.raises(ConfigError, match="seeds= takes one config"):
        ic.train([cfg], [tmp_path / "a"], seeds=[1])
    with pytest.raises(RunFolderError, match="seeds must be distinct"):
        ic.train(cfg, tmp_path / "a", seeds=[1, 1])
    assert not (tmp_path / "a").exists()
