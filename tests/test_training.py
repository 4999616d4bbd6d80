"""Training runs: determinism, exact resume, atomic checkpoints, locking, corruption."""

from __future__ import annotations

import fcntl
import json
import os
import pickle

import pytest
import torch

from icl_circuits.errors import CheckpointError, RunFolderError
from icl_circuits.runs import layout, store
from icl_circuits.runs.read import load_native, read_metrics
from icl_circuits.training import train
from icl_circuits.training.schedule import checkpoint_steps, lr_at
from tests.conftest import tiny_config


def _weights(run):
    return load_native(run).state_dict()


def test_checkpoint_schedule():
    steps = checkpoint_steps(4000, 50)
    assert steps[0] == 0 and steps[-1] == 4000 and len(steps) >= 50
    assert steps == sorted(set(steps))
    early = [s for s in steps if s <= 400]
    assert len(early) >= 0.4 * len(steps), "log-spaced early"
    assert checkpoint_steps(10, 50) == list(range(11))
    assert set(range(0, 4001, 1000)) <= set(checkpoint_steps(4000, 4, every=1000))


def test_lr_schedule():
    cfg = tiny_config(warmup_steps=10, schedule="cosine", lr=1.0)
    assert lr_at(cfg.train, 0) == pytest.approx(0.1)
    assert lr_at(cfg.train, 9) == pytest.approx(1.0)
    assert lr_at(cfg.train, 40) == pytest.approx(0.0, abs=1e-9)


def test_run_folder_contents(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {layout.CONFIG, layout.PROVENANCE, layout.METRICS, layout.CHECKPOINTS} <= names
    steps = store.list_checkpoints(tiny_run)
    assert steps[0] == 0 and steps[-1] == 40 and len(steps) >= 6
    assert (layout.checkpoint_dir(tiny_run, 0)).name == "step_000000"
    m = read_metrics(tiny_run)
    assert set(m.split) == {"train", "IC", "IC2", "IW"}
    assert set(m.metric) >= {"loss", "acc", "acc_in_context", "acc_out_context", "p_context"}
    lines = (tiny_run / layout.METRICS).read_text().splitlines()
    assert len(lines) == len(m)
    prov = json.loads((tiny_run / layout.PROVENANCE).read_text())
    assert prov["seed"] == 3 and prov["device"] == "cpu"


def test_determinism(tmp_path, tiny_run):
    run = train(tiny_config(), tmp_path / "again", progress=False)
    for k, v in _weights(tiny_run).items():
        assert torch.equal(v, _weights(run)[k]), k
    assert read_metrics(run).equals(read_metrics(tiny_run))


def test_resume_equals_uninterrupted(tmp_path, tiny_run):
    run = tmp_path / "resumed"
    train(tiny_config(), run, progress=False, stop_after=10)
    assert store.list_checkpoints(run)[-1] < 40
    train(tiny_config(), run, progress=False)
    ref = _weights(tiny_run)
    for k, v in _weights(run).items():
        assert torch.equal(v, ref[k]), k
    assert read_metrics(run).equals(read_metrics(tiny_run))
    assert len((run / layout.METRICS).read_text().splitlines()) == len(read_metrics(run))


def test_resume_finished_run_is_a_no_op(tiny_run):
    before = sorted(p.name for p in (tiny_run / layout.CHECKPOINTS).iterdir())
    train(tiny_config(), tiny_run, progress=False)
    assert sorted(p.name for p in (tiny_run / layout.CHECKPOINTS).iterdir()) == before


def test_crash_mid_checkpoint_write_leaves_earlier_ones(tmp_path, monkeypatch):
    run = tmp_path / "crash"
    train(tiny_config(), run, progress=False, stop_after=5)
    good = store.list_checkpoints(run)
    real = store._write_synced
    calls = {"n": 0}

    def dying_write(path, data):
        calls["n"] += 1
        if calls["n"] == 3:  # die after two files of the next checkpoint
            real(path, data[: len(data) // 2])
            raise KeyboardInterrupt("simulated crash")
        real(path, data)

    monkeypatch.setattr(store, "_write_synced", dying_write)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), run, progress=False)
    monkeypatch.setattr(store, "_write_synced", real)
    assert store.list_checkpoints(run) == good, "no half-written checkpoint is visible"
    for s in good:
        store.load_checkpoint(run, s)
    train(tiny_config(), run, progress=False)  # resumes past the leftover temp folder
    assert store.list_checkpoints(run)[-1] == 40


def test_second_writer_refused(tmp_path):
    run = tmp_path / "locked"
    train(tiny_config(), run, progress=False, stop_after=1)
    fd = os.open(run / layout.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RunFolderError, match="another process"):
            train(tiny_config(), run, progress=False)
    finally:
        os.close(fd)


def test_other_config_refused(tmp_path, tiny_run):
    with pytest.raises(RunFolderError, match="train.lr: stored 0.003, given 0.1"):
        train(tiny_config(lr=0.1), tiny_run, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a run folder"):
        train(tiny_config(), tmp_path / "junk", progress=False)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_incompatible_version(tmp_path, tiny_run):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(tiny_run, run)
    raw = json.loads((run / layout.CONFIG).read_text())
    raw["format_version"] = 0
    (run / layout.CONFIG).write_text(json.dumps(raw))
    with pytest.raises(RunFolderError, match="config.json: run-folder format 0"):
        load_native(run)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_detected(tmp_path, tiny_run, damage):
    import shutil

    run = tmp_path / "corrupt"
    shutil.copytree(tiny_run, run)
    last = store.list_checkpoints(run)[-1]
    path = layout.checkpoint_dir(run, last) / layout.MODEL
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:100])
    elif damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        path.unlink()
    prev = store.list_checkpoints(run)[-2]
    with pytest.raises(CheckpointError) as err:
        load_native(run, last)
    msg = str(err.value)
    assert str(path) in msg and f"nearest good checkpoint: step {prev}" in msg and "\n" not in msg
    assert store.latest_good_checkpoint(run) == prev


def test_malicious_pickle_never_executed(tmp_path, tiny_run):
    import shutil

    run = tmp_path / "evil"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    last = store.list_checkpoints(run)[-1]
    folder = layout.checkpoint_dir(run, last)
    payload = pickle.dumps(Evil())
    (folder / layout.MODEL).write_bytes(payload)
    # even with a manifest that vouches for the pickle, it is parsed as safetensors only
    manifest = json.loads((folder / layout.MANIFEST).read_text())
    import hashlib

    manifest["files"][layout.MODEL] = {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    (folder / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_native(run, last)
    assert not marker.exists()


def test_disk_full_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    run = tmp_path / "full"
    train(tiny_config(), run, progress=False, stop_after=5)
    good = store.list_checkpoints(run)
    real = store._write_synced

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_synced", full)
    with pytest.raises(RunFolderError, match="disk full"):
        train(tiny_config(), run, progress=False)
    monkeypatch.setattr(store, "_write_synced", real)
    assert store.list_checkpoints(run) == good
    assert not [p for p in (run / layout.CHECKPOINTS).iterdir() if p.name.startswith(".tmp")]
    store.load_checkpoint(run, good[-1])
