"""``reproduce NAME --dry-run`` and the full-scale smoke: every paper-scale config trains and is analysed."""

from __future__ import annotations

import json
import time

import pytest

from icl_circuits.cli import main
from icl_circuits.config import apply_overrides
from icl_circuits.errors import ConfigError
from icl_circuits.registry import reproductions
from icl_circuits.reproduce.plan import Plan, checkpoint_bytes, describe, estimate_stage, linear_seconds
from icl_circuits.sweeps.spec import SweepSpec, build_points

NAMES = sorted(reproductions())


def _plan(name: str, scale: str) -> Plan:
    return reproductions()[name].load().plan(scale)


def _points(plan: Plan) -> dict[str, int]:
    return {sweep: len(build_points(spec)) for stage in plan.stages for sweep, spec in stage.items()}


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_lists_every_sweep_with_its_run_count(name, tmp_path):
    plan = _plan(name, "smoke")
    text = describe(name, "smoke", tmp_path / "out", workers=1)
    for sweep, n in _points(plan).items():
        assert f"sweep {sweep}: {n} runs" in text
    for task in plan.tasks:
        assert f"task: {task.name}:" in text
    assert "estimated wall time:" in text and "disk:" in text
    assert not (tmp_path / "out").exists()  # nothing written


#: Measured at cpu scale only: singh2023's full scale has none of the transient conditions.
NO_FULL_SCALE = {"singh2023-competition", "singh2023-competition-threshold", "singh2023-threshold-l2"}


@pytest.mark.parametrize("name", NAMES)
def test_every_full_config_builds_and_validates(name):
    plan = _plan(name, "full")
    counts = _points(plan)
    assert all(n > 0 for n in counts.values())
    if name in NO_FULL_SCALE:  # nothing to train at full scale: the plan says why
        assert not (plan.stages or plan.tasks) and plan.notes
    else:
        assert plan.stages or plan.tasks


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    main(["reproduce", "singh2024", "--scale", "smoke", "--dry-run", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "sweep singh2024: 1 runs" in out and "estimated wall time" in out
    assert not (tmp_path / "o").exists()


def test_a_bad_config_fails_in_one_line_naming_the_field():
    stage = {"x": SweepSpec("chan2024-stylized", ("train.steps=-3",), {"seed": [0]})}
    with pytest.raises(ConfigError, match="train.steps") as err:
        estimate_stage(stage, 1)
    assert "\n" not in str(err.value)


def test_linear_seconds_recovers_a_fixed_and_a_per_step_cost():
    def run(n: int) -> None:
        time.sleep(0.05 + 0.01 * n)

    est = linear_seconds(run, [100, 200], small=(2, 12))
    truth = (0.05 + 1.0) + (0.05 + 2.0)
    assert truth * 0.8 < est < truth * 1.6


def test_checkpoint_bytes_matches_a_written_checkpoint(tmp_path):
    from icl_circuits.presets import get_preset
    from icl_circuits.runs.layout import checkpoint_dir
    from icl_circuits.training import train

    cfg = apply_overrides(
        get_preset("chan2024-stylized"), ["train.steps=1", "train.n_checkpoints=2", "train.eval_size=8"]
    )
    train(cfg, tmp_path / "run", progress=False)
    written = sum(f.stat().st_size for f in checkpoint_dir(tmp_path / "run", 1).rglob("*") if f.is_file())
    assert 0.8 * written < checkpoint_bytes(cfg) < 1.25 * written


# ------------------------------------------------------------------ full-scale smoke
#: Per paper-scale shape: train this many steps, evaluate and analyse on this many sequences.
SMOKE = ["train.steps=2", "train.n_checkpoints=2", "train.eval_size=16", "train.device=cpu"]


def _full_shapes() -> list[tuple[str, str, object]]:
    """One config per distinct model, input shape, data family and optimiser of every --full plan."""
    out, seen = [], set()
    for name in NAMES:
        for stage in _plan(name, "full").stages:
            for sweep, spec in stage.items():
                for p in build_points(spec):
                    c = p.config
                    key = json.dumps(
                        [c.model.to_dict(), c.data.model_shape(), c.data.family, c.train.optimizer], default=str
                    )
                    if key not in seen:
                        seen.add(key)
                        out.append((name, f"{sweep}/{p.name}", c))
    return out


FULL_SHAPES = _full_shapes()


@pytest.mark.parametrize("name,point,cfg", FULL_SHAPES, ids=[f"{n}:{p}" for n, p, _ in FULL_SHAPES])
def test_full_scale_config_trains_and_analyses(name, point, cfg, tmp_path):
    from icl_circuits.runs.store import list_checkpoints
    from icl_circuits.training import train
    from probes.over_training import analyze_run

    small = apply_overrides(cfg, [*SMOKE, f"train.warmup_steps={min(cfg.train.warmup_steps, 1)}"])
    run = train(small, tmp_path / "run", progress=False)
    assert list_checkpoints(run) == [0, 1, 2]
    table = analyze_run(run, eval_size=16, progress=False)
    assert set(table["step"]) == {0, 1, 2}
    assert table["value"].notna().any()


# ------------------------------------------------------------------ chan2024 at paper scale
def test_paper_scale_trains_most_informative_n_first_and_summarises(tmp_path):
    import pandas as pd

    from icl_circuits.metrics import eval_sets, evaluate
    from icl_circuits.papers.chan2024 import paper_scale
    from icl_circuits.runs.read import load_native, load_source
    from icl_circuits.sweeps.sweep import prepare_sweep

    points = prepare_sweep(paper_scale.spec("smoke"), tmp_path / "plan")
    jobs = paper_scale.jobs_by_priority(points, tmp_path / "plan")
    assert [j.point.split(",")[0] for j in jobs] == ["data.n_train=256", "data.n_train=64"]  # 2^8 before 2^6

    paper_scale.main(["--out", str(tmp_path / "o"), "--scale", "smoke", "--workers", "1"])
    table = pd.read_csv(tmp_path / "o" / paper_scale.SUMMARY_CSV)
    assert set(table["N"]) == {64, 256} and set(table["last_step"]) == {10}
    assert (tmp_path / "o" / paper_scale.SUMMARY_PNG).stat().st_size > 10_000  # the figure, drawn from the table
    # Re-evaluated on 40 sequences per split: equal to evaluating the chosen checkpoint directly.
    rescored, _ = paper_scale.summary(tmp_path / "o", "smoke", n_eval=40)
    row = rescored[(rescored["N"] == 64) & (rescored["split"] == "OOBD-low") & (rescored["metric"] == "acc")].iloc[0]
    run = tmp_path / "o" / "sweeps" / "transformer" / "runs" / "data.n_train=64,data.p_relevant=0.9,seed=0"
    source = load_source(run)
    direct = evaluate(load_native(run, int(row["step"])), eval_sets(source, 40), source.n_labels)
    assert row["value"] == next(r["value"] for r in direct if (r["split"], r["metric"]) == ("OOBD-low", "acc"))
