"""Early stop (``train.stop_above``): the run ends at the first checkpoint past the threshold,
records it, resumes as a no-op, and leaves runs without it bitwise as they were."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from icl_circuits.config import RunConfig
from icl_circuits.errors import ConfigError
from icl_circuits.runs import layout
from icl_circuits.runs.read import read_metrics
from icl_circuits.runs.store import list_checkpoints, load_checkpoint, run_end, stopped_early
from icl_circuits.sweeps.spec import Point
from icl_circuits.sweeps.sweep import point_status
from icl_circuits.training import train
from icl_circuits.training.ensemble import train_ensemble
from tests.conftest import tiny_config

# Enough checkpoints for the ICL accuracy to rise through several values.
STEPS, CKPTS = 60, 12


def _ic(run) -> pd.Series:
    m = read_metrics(run)
    return m[(m.split == "IC") & (m.metric == "acc")].set_index("step")["value"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    train(tiny_config(steps=STEPS, n_checkpoints=CKPTS, lr=1e-2), run, progress=False)
    return run


def _interior_threshold(ic: pd.Series) -> tuple[float, int]:
    """A threshold first passed at a checkpoint strictly inside the run, and that checkpoint."""
    after = ic[ic.index > 0]
    for step, value in after.iloc[1:-1].items():
        before = after[after.index < step]
        if value > before.max():
            return float(before.max()), int(step)
    raise AssertionError(f"the tiny run's ICL accuracy never rises mid-run: {after.to_dict()}")


def test_stops_at_the_first_checkpoint_past_the_threshold(full_run, tmp_path):
    ic = _ic(full_run)
    above, expected = _interior_threshold(ic)
    cfg = tiny_config(steps=STEPS, n_checkpoints=CKPTS, lr=1e-2, stop_above=above)
    run = train(cfg, tmp_path / "stopped", progress=False)
    assert list_checkpoints(run)[-1] == expected < STEPS
    assert list_checkpoints(run) == [s for s in list_checkpoints(full_run) if s <= expected]
    # Up to the stop the run is the uninterrupted one, bitwise.
    pd.testing.assert_series_equal(_ic(run), ic[ic.index <= expected])
    full_w, stop_w = load_checkpoint(full_run, expected)["model"], load_checkpoint(run, expected)["model"]
    assert all(torch.equal(full_w[k], stop_w[k]) for k in full_w)
    rec = stopped_early(run)
    assert rec == {"step": expected, "split": "IC", "metric": "acc", "value": ic[expected], "above": above}
    assert rec["value"] > above
    assert run_end(run, STEPS) == expected
    assert run_end(full_run, STEPS) == STEPS and stopped_early(full_run) is None
    point = Point("p", {}, cfg)
    assert point_status(point, run) == ("done", expected)


def test_resuming_a_stopped_run_does_nothing(full_run, tmp_path):
    above, expected = _interior_threshold(_ic(full_run))
    cfg = tiny_config(steps=STEPS, n_checkpoints=CKPTS, lr=1e-2, stop_above=above)
    run = train(cfg, tmp_path / "stopped", progress=False)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != layout.LOCK}
    train(cfg, run, progress=False)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != layout.LOCK}
    assert after == files
    assert list_checkpoints(run)[-1] == expected


def test_off_by_default_and_an_unreached_threshold_changes_nothing(full_run, tmp_path):
    """Default runs are bitwise unchanged: a threshold never passed trains the same weights
    and metrics, and nothing is recorded in either folder."""
    assert tiny_config().train.stop_above == 0.0
    ic = _ic(full_run)
    above = float(ic[ic.index > 0].max())
    assert above < 1.0, "the tiny run must not reach perfect ICL for this test"
    run = train(tiny_config(steps=STEPS, n_checkpoints=CKPTS, lr=1e-2, stop_above=above), tmp_path / "r", False)
    assert list_checkpoints(run) == list_checkpoints(full_run)
    pd.testing.assert_frame_equal(read_metrics(run), read_metrics(full_run))
    a, b = load_checkpoint(full_run, STEPS)["model"], load_checkpoint(run, STEPS)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for folder in (run, full_run):
        state = json.loads((layout.checkpoint_dir(folder, STEPS) / layout.STATE).read_text())
        assert "stopped" not in state


def test_ensemble_members_stop_on_their_own(full_run, tmp_path):
    """A member that stops keeps its folder at the stop; the others train on; a resume is a no-op."""
    above, expected = _interior_threshold(_ic(full_run))
    cfg = tiny_config(steps=STEPS, n_checkpoints=CKPTS, lr=1e-2, stop_above=above)
    seeds = [3, 4]
    runs = train_ensemble(cfg, seeds, [tmp_path / str(s) for s in seeds], progress=False)
    ends = [run_end(r, STEPS) for r in runs]
    assert all(e is not None for e in ends)
    for seed, run, end in zip(seeds, runs, ends, strict=True):
        alone = train(cfg.replace(seed=seed), tmp_path / f"alone{seed}", progress=False)
        assert list_checkpoints(run) == list_checkpoints(alone), f"seed {seed}"
        assert (stopped_early(run) is None) == (end == STEPS)
    train_ensemble(cfg, seeds, runs, progress=False)
    assert [run_end(r, STEPS) for r in runs] == ends


@pytest.mark.parametrize(("field", "value"), [("stop_above", 1.0), ("stop_above", -0.5), ("stop_metric", "loss")])
def test_bad_stop_options_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^train\.{field}: ") as err:
        RunConfig.from_dict({"train": {field: value}})
    assert "\n" not in str(err.value)
