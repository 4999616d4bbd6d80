"""The one training loop: its vectorised-seed backend honours what ``train`` honours, and the
one atomic-write helper every writer uses."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import fileio
from icl_circuits.errors import RunFolderError
from icl_circuits.training import trainer
from icl_circuits.training.ensemble import train_ensemble
from tests.conftest import tiny_config
from tests.test_tracking import _jsonl

SEEDS = [3, 5]


def test_ensemble_runs_on_train_threads_and_restores_the_callers(tmp_path, monkeypatch):
    seen: list[int] = []
    lr_at = trainer.lr_at

    def spy(tc, step):
        seen.append(torch.get_num_threads())
        return lr_at(tc, step)

    monkeypatch.setattr(trainer, "lr_at", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_ensemble(tiny_config(steps=6, n_checkpoints=2), SEEDS, [tmp_path / str(s) for s in SEEDS], progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}, "train.threads = 1 by default, as for train()"


def test_ensemble_logs_each_seed_to_its_own_tracker(tmp_path, monkeypatch):
    """``train.logger`` opens one tracker per seed's run folder, logging what its metrics.jsonl holds."""
    opened: dict = {}

    class Recorder:
        def __init__(self, cfg, run):
            self.seed, self.rows, self.closed = cfg.seed, {}, False
            opened[run] = self

        def log(self, step, rows):
            self.rows[step] = {f"{r['split']}/{r['metric']}": r["value"] for r in rows}

        def close(self):
            self.closed = True

    monkeypatch.setattr(trainer, "open_logger", Recorder)
    runs = train_ensemble(
        tiny_config(steps=12, n_checkpoints=3), SEEDS, [tmp_path / str(s) for s in SEEDS], progress=False
    )
    assert sorted(opened) == sorted(runs)
    for seed, run in zip(SEEDS, runs, strict=True):
        tracker = opened[run]
        assert tracker.seed == seed and tracker.closed
        assert tracker.rows == _jsonl(run)


def test_write_atomic_never_overwrites_unless_asked(tmp_path):
    path = tmp_path / "a.json"
    fileio.write_atomic(path, "one", overwrite=False)
    with pytest.raises(RunFolderError, match="never overwritten"):
        fileio.write_atomic(path, "two", overwrite=False)
    assert path.read_text() == "one"
    fileio.write_atomic(path, b"three", overwrite=True)
    assert path.read_bytes() == b"three"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"], "no temporary file is left"
    with pytest.raises(RunFolderError, match="could not write"):
        fileio.write_atomic(tmp_path / "missing" / "b.json", "x", overwrite=True)


def test_publish_dir_keeps_the_first_complete_folder(tmp_path):
    final = tmp_path / "report"
    first = fileio.temp_dir(final)
    (first / "summary.txt").write_text("first")
    second = fileio.temp_dir(final)
    (second / "summary.txt").write_text("second")
    assert first.name.startswith(fileio.TMP_PREFIX) and first != second
    assert fileio.publish_dir(first, final)
    assert not fileio.publish_dir(second, final), "a concurrent writer finished first"
    assert (final / "summary.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
