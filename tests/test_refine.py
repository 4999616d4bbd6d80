"""``icl-circuits refine``: denser checkpoints by exact replay, the originals untouched."""

from __future__ import annotations

import shutil

import pytest
import torch

from icl_circuits.cli import main
from icl_circuits.errors import ICLError
from icl_circuits.runs import layout
from icl_circuits.runs.store import list_checkpoints, load_checkpoint
from icl_circuits.training import train
from icl_circuits.training.refine import new_steps, refine
from tests.conftest import tiny_config


def _files(run, steps):
    return {s: {p.name: p.read_bytes() for p in layout.checkpoint_dir(run, s).iterdir()} for s in steps}


def test_refine_adds_checkpoints_and_leaves_originals_bitwise(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = list_checkpoints(run)
    originals = _files(run, before)
    metrics_before = (run / layout.METRICS).read_text()
    a, b = before[1], before[-1]
    added = refine(run, a, b, 4, progress=False)
    assert added == new_steps(before, a, b, 4) and len(added) >= 3
    after = list_checkpoints(run)
    assert sorted(before + added) == after
    assert _files(run, before) == originals, "every original checkpoint is bitwise unchanged"
    assert (run / layout.METRICS).read_text().startswith(metrics_before)

    # A refined checkpoint equals what an uninterrupted run checkpointing there saves.
    step = added[0]
    ref = tmp_path / "ref"
    cfg = tiny_config(checkpoint_every=step)
    train(cfg, ref, progress=False, stop_after=step)
    assert step in list_checkpoints(ref)
    mine, theirs = load_checkpoint(run, step)["model"], load_checkpoint(ref, step)["model"]
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_refine_refuses_bad_input(tiny_run, tmp_path):
    steps = list_checkpoints(tiny_run)
    with pytest.raises(ICLError, match="--between"):
        refine(tiny_run, steps[-1], steps[-1] + 10, 2, progress=False)
    with pytest.raises(ICLError, match="--between"):
        refine(tiny_run, 5, 3, 2, progress=False)
    with pytest.raises(ICLError, match="--checkpoints"):
        refine(tiny_run, 0, steps[-1], 0, progress=False)
    unfinished = tmp_path / "unfinished"
    train(tiny_config(), unfinished, progress=False, stop_after=steps[1])
    with pytest.raises(ICLError, match="unfinished"):
        refine(unfinished, 0, steps[1], 2, progress=False)
    threads = tmp_path / "threads"
    train(tiny_config(threads=2), threads, progress=False, stop_after=1)
    with pytest.raises(ICLError, match="threads=2"):
        refine(threads, 0, 10, 2, progress=False)


def test_refine_cli(tiny_run, tmp_path, capsys):
    assert main(["refine", str(tiny_run), "--between", "0", "99999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--between" in err[0], err
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["refine", str(run), "--between", "20", "30", "--checkpoints", "2", "--no-progress"]) == 0
    assert "2 checkpoint(s) added" in capsys.readouterr().out
    assert len(list_checkpoints(run)) == len(list_checkpoints(tiny_run)) + 2
