"""The command line: presets, train, show, analyze, and one-line errors."""

from __future__ import annotations

import json

import pytest

from icl_circuits.cli import main
from icl_circuits.config import RunConfig, apply_overrides
from icl_circuits.errors import ConfigError
from icl_circuits.presets import PRESETS, get_preset
from tests.conftest import TINY_OVERRIDES

TINY = [*TINY_OVERRIDES, "data.burst=2"]


def test_every_preset_is_valid_and_round_trips():
    for name in PRESETS:
        cfg = get_preset(name)
        assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_overrides():
    cfg = apply_overrides(get_preset("demo"), ["data.n_classes=32", "train.lr=3e-4", "model.readout_hidden=[64]"])
    assert cfg.data.n_classes == 32 and cfg.train.lr == 3e-4 and cfg.model.readout_hidden == (64,)
    with pytest.raises(ConfigError, match=r"^data\.KK: unknown key"):
        apply_overrides(cfg, ["data.KK=3"])
    with pytest.raises(ConfigError, match=r"^data\.burst: expected a divisor of n_pairs=8"):
        apply_overrides(cfg, ["data.burst=3"])
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number"):
        apply_overrides(cfg, ["train.lr=fast"])


def test_from_dict_rejects_unknown_keys():
    raw = json.loads(get_preset("demo").to_json())
    raw["train"]["learning_rate"] = 1
    with pytest.raises(ConfigError, match=r"^train\.learning_rate: unknown key"):
        RunConfig.from_dict(raw)


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


def test_train_show_analyze(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "demo", *TINY, "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out and "IC" in out
    assert main(["show", str(run)]) == 0
    assert "checkpoints: 4" in capsys.readouterr().out
    assert main(["analyze", str(run), "--eval-size", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ICL circuit:" in out
    report = next((run / "analysis").glob("report-*"))
    assert {p.name for p in report.iterdir()} >= {"summary.txt", "competition.png", "probes.csv", "ablations.png"}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "nope"], "preset: expected one of"),
        (["train", "demo", "data.burst=3"], "data.burst: expected a divisor"),
        (["train", "demo", "data.n_classes"], "data.n_classes: expected key=value"),
        (["train", "demo", "train.steps=-1"], "train.steps: expected at least 1"),
        (["train", "--config", "missing.json"], "missing.json: no such config file"),
        (["show", "no/such/run"], "no/such/run: no such run folder"),
        (["analyze", "no/such/run"], "no/such/run: no such run folder"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists(), "nothing written on bad input"


def test_analyze_bad_input_is_one_line(tmp_path, capsys, tiny_run):
    import shutil

    from icl_circuits.runs import layout

    empty = tmp_path / "empty"
    shutil.copytree(tiny_run, empty, ignore=shutil.ignore_patterns("step_*", "analysis"))
    cases = [
        (["analyze", str(empty)], "no checkpoints to analyse"),
        (["analyze", str(tiny_run), "--induction-heads", "5.0"], "heads: 5.0 is out of range"),
        (["analyze", str(tiny_run), "--induction-heads", "x"], "heads: expected LAYER.HEAD"),
        (["analyze", str(tiny_run), "--eval-size", "0"], "--eval-size: expected 1..65536"),
        (["analyze", str(tiny_run), "--ablation", "nope"], "invalid choice"),
    ]
    before = sorted(p.name for p in (tiny_run / layout.CHECKPOINTS).iterdir())
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert sorted(p.name for p in (tiny_run / layout.CHECKPOINTS).iterdir()) == before


def test_checkpoint_of_another_shape(tmp_path, tiny_run):
    import json
    import shutil

    from icl_circuits.errors import CheckpointError
    from icl_circuits.runs import layout
    from icl_circuits.runs.read import load_native

    run = tmp_path / "other"
    shutil.copytree(tiny_run, run)
    raw = json.loads((run / layout.CONFIG).read_text())
    raw["model"]["d_model"] = 32
    (run / layout.CONFIG).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="does not match the model in"):
        load_native(run)


def test_analyze_skips_a_corrupt_checkpoint(tmp_path, capsys, tiny_run):
    import shutil

    from icl_circuits.runs import layout, store

    run = tmp_path / "corrupt"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis"))
    steps = store.list_checkpoints(run)
    bad = layout.checkpoint_dir(run, steps[2]) / layout.MODEL
    data = bad.read_bytes()
    bad.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    assert main(["analyze", str(run), "--eval-size", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"skipped 1 unreadable checkpoint(s): {bad}: checksum mismatch" in out
    assert f"{len(steps) - 1} checkpoints" in out
