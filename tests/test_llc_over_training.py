"""The LLC over training (cache, parts), essential dynamics, stage boundaries and their report sections."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("devinterp")

from icl_circuits.cli import main  # noqa: E402
from icl_circuits.runs.store import list_checkpoints  # noqa: E402
from probes import essential_dynamics as ed  # noqa: E402
from probes import llc_over_training as lot  # noqa: E402
from probes import stages as st  # noqa: E402
from probes.circuits import FoundCircuit  # noqa: E402
from probes.llc import LLCConfig  # noqa: E402

SMALL = LLCConfig(chains=1, draws=8, batch_size=16, n_data=32)


@pytest.fixture
def run(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_llc_over_training_rows_and_cache(run, monkeypatch):
    steps = list_checkpoints(run)[-2:]
    circuit = FoundCircuit(((0, 0),), ((1, 1),))
    df = lot.llc_over_training(run, steps, lot.PARTS, SMALL, circuit, progress=False)
    assert list(df.columns) == lot.COLUMNS and sorted(set(df.step)) == steps
    conds = set(df.condition)
    assert {"clean", "L0H0", "L0H1", "L1H0", "L1H1", "readout", "ICL circuit", "IWL circuit"} <= conds
    whole = df[(df.condition == "clean") & (df.metric == "llc")]
    assert set(whole.split) == {"train", "IC", "IW"}
    assert set(df.metric) == set(lot.METRICS)
    heads = df[df.condition == "L1H0"]
    assert (heads.layer == 1).all() and (heads.head_index == 0).all()

    calls = []
    monkeypatch.setattr(lot, "llc_checkpoint", lambda *a, **k: calls.append(1))
    again = lot.llc_over_training(run, steps, lot.PARTS, SMALL, circuit, progress=False)
    assert not calls, "every checkpoint is cached"
    pd.testing.assert_frame_equal(
        again.sort_values(lot.COLUMNS[:6]).reset_index(drop=True),
        df.sort_values(lot.COLUMNS[:6]).reset_index(drop=True),
        check_dtype=False,
    )
    only_model = lot.llc_over_training(run, steps, ("model",), SMALL, progress=False, compute=False)
    assert set(only_model.split) == {"train"} and len(only_model) == len(steps) * len(lot.METRICS)


def test_turning_points_find_the_corner():
    leg1 = np.stack([np.linspace(0, 1, 10), np.zeros(10)], 1)
    leg2 = np.stack([np.ones(10), np.linspace(0, 1, 10)], 1)[1:]
    assert ed.turning_points(np.concatenate([leg1, leg2])) == [9]
    assert ed.turning_points(np.stack([np.linspace(0, 1, 20), np.zeros(20)], 1)) == []
    proj, explained = ed.pca(np.random.default_rng(0).normal(size=(12, 30)), 3)
    assert proj.shape == (12, 3) and 0 < explained.sum() <= 1 and explained[0] >= explained[1] >= explained[2]


def test_llc_boundaries_and_stages():
    steps = [0, 10, 20, 40, 80, 160, 320, 640, 1280]
    llc = [1, 2, 6, 10, 6, 5, 5, 5, 5]
    b = st.llc_boundaries(steps, llc)
    assert "LLC peak" in set(b.kind) and 40 in set(b.step)
    merged = st.merge_boundaries(
        [b, pd.DataFrame({"step": [41], "source": ["essential dynamics"], "kind": ["ED turning point"]})]
    )
    row = merged[merged.step == 40].iloc[0]
    assert "ED turning point" in row.kind, "boundaries within 0.1 decade are one"
    stages = st.stage_table(merged, 0, 1280)
    assert stages.start.iloc[0] == 0 and stages.end.iloc[-1] == 1280 and 40 in set(stages.start)
    assert st.describe(stages)[0].startswith(f"stages: {len(stages)}")


def test_analyze_with_the_opt_in_probes(run, monkeypatch, capsys):
    monkeypatch.setattr(lot, "DEFAULT", SMALL)
    assert main(["analyze", str(run), "--eval-size", "16", "--no-progress", "--with", "llc,llc_components,stages"]) == 0
    out = capsys.readouterr().out
    assert "LLC (whole model)" in out and "weight-refined LLC" in out and "stages:" in out
    assert "essential dynamics: PCs explain" in out
    report = next(run.glob("analysis/report-*"))
    for name in ("llc.csv", "llc.png", "essential_dynamics.png", "stages.csv"):
        assert (report / name).exists(), name
    assert main(["analyze", str(run), "--no-progress", "--with", "nope"]) == 2


def test_benchmark_rows(run, monkeypatch, tmp_path):
    from benchmarks import llc as bench

    assert bench.spread(list(range(10)), 3) == [0, 4, 9] and bench.spread([0, 5], 20) == [0, 5]
    monkeypatch.setattr(lot, "DEFAULT", SMALL)
    rows = bench.measure(run, tmp_path / "cache", n_model=2, n_components=1)
    assert [r[0].split(" at ")[0] for r in rows[:2]] == ["LLC model", "LLC components"]
    assert all(r[2] in ("met", "**missed**") for r in rows) and "MiB" in rows[2][1]
