"""What a researcher expects from the command line: presets NAME, --dry-run, show, flags never ignored."""

from __future__ import annotations

import json
import shutil

from icl_circuits.cli import main
from icl_circuits.presets import get_preset
from icl_circuits.runs import layout
from icl_circuits.runs.store import list_checkpoints
from tests.conftest import TINY_OVERRIDES


def test_presets_name_prints_its_full_config(capsys, tmp_path):
    assert main(["presets", "demo"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert raw == get_preset("demo").to_dict()
    path = tmp_path / "demo.json"
    path.write_text(json.dumps(raw))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--dry-run", *TINY_OVERRIDES]) == 0


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "demo", *TINY_OVERRIDES, "train.n_checkpoints=100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"steps": 12' in out, "the resolved config"
    assert "checkpoints: 13 at steps 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12" in out
    assert "every step is a checkpoint" in out
    assert "estimated time:" in out and "ms per step" in out
    assert list(tmp_path.iterdir()) == [], "a dry run writes nothing"


def test_ignored_flags_are_errors(capsys, tmp_path, tiny_run):
    cfg = tmp_path / "f.json"
    cfg.write_text(get_preset("demo").to_json())
    assert main(["train", "demo", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "give a preset (demo) or --config FILE, not both" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert main(["analyze", str(tiny_run), "--prev-token-heads", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--prev-token-heads: give --induction-heads too" in err and err.count("\n") == 1


def test_show_says_the_last_checkpoint_is_corrupt(capsys, tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis"))
    assert main(["show", str(run)]) == 0
    assert "CORRUPT" not in capsys.readouterr().out
    last = layout.checkpoint_dir(run, list_checkpoints(run)[-1])
    (last / layout.MANIFEST).unlink()
    assert main(["show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "CORRUPT:     last checkpoint (step 40)" in out and "MANIFEST.json: missing" in out


def test_analyze_out_leaves_the_run_untouched(capsys, tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis"))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    ana = tmp_path / "ana"
    assert main(["analyze", str(run), "--eval-size", "16", "--no-progress", "--out", str(ana)]) == 0
    assert f"analysis:   {ana}/report-" in capsys.readouterr().out
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert next(ana.glob("report-*/summary.txt")).exists()
