"""The benchmarks package's pieces, run minimally so that ``python -m benchmarks.run`` cannot rot."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from icl_circuits.config import apply_overrides
from icl_circuits.data import build_source
from icl_circuits.models.build import query_logits
from icl_circuits.presets import chan2024_stylized, demo, nguyen_reddy2024
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """Every benchmark module's names in one namespace."""
    from benchmarks import common, handmade, memory, run, scaling, training

    names: dict = {}
    for module in (common, handmade, training, scaling, memory, run):
        names.update(vars(module))
    return types.SimpleNamespace(**names)


@pytest.mark.parametrize("preset", [demo, chan2024_stylized])
def test_hand_written_model_computes_the_native_function(bench, preset):
    cfg = apply_overrides(preset(), ["train.batch_size=8"])
    assert bench.check_hand_model(cfg) < 1e-4
    lp = bench.loops(cfg, 1)
    tok, _ = lp["native_in"][0]
    with torch.no_grad():
        assert torch.allclose(bench.full_sequence_logits(lp["native"], tok), query_logits(lp["native"], tok), atol=1e-5)


def test_bare_loop_and_reference_model_run(bench):
    cfg = apply_overrides(demo(), ["train.batch_size=4"])
    lp = bench.loops(cfg, 2)
    hand = lp["hand"]
    t = bench.bare_loop(
        lambda ex, lab, y: torch.nn.functional.cross_entropy(hand(ex, lab), y), hand.parameters(), cfg, lp["hand_in"]
    )
    assert t > 0
    nr = apply_overrides(nguyen_reddy2024(), ["data.n_pairs=6"])
    tok, y = bench.nr_tokens(build_source(nr.data, 0).train_batch(0, 4))
    assert tok.shape == (4, 7, nr.data.d + 2) and set(y.tolist()) <= {-1.0, 1.0}
    assert (tok[:, -1, -2:] == 0).all(), "query label zeroed"
    ref = bench.NguyenReddyRef(nr.data.d + 2)
    (-torch.nn.functional.logsigmoid(y * ref(tok)).mean()).backward()


def test_loop_timers_and_helpers(bench, tmp_path):
    cfg = tiny_config()
    assert bench.train_step_time(cfg, 3, tmp_path / "one") > 0
    assert bench.steady_step(cfg, [1, 2], 4, 1, tmp_path / "two") > 0  # the ensemble
    assert bench.steady_step(cfg, [1], 4, 1, tmp_path / "three") > 0  # train()
    assert bench.fsync_calls(lambda: None) == (0, 0.0)
    assert bench._loglog_slope([(1, 2.0), (2, 4.0), (4, 8.0)]) == pytest.approx(1.0)
    assert bench.peak_rss_mib("x = bytearray(50 * 2**20)") > 50
    goals = [bench.Goal("g", "1x", False, "because"), bench.Goal("h", "2x", True)]
    text = bench.report(goals, ["## s"], ["# t"])
    assert "**missed**" in text and "because" in text and text.index("Summary") < text.index("## s")


def test_benchmarks_run_as_a_package_with_no_path_edits():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "--section" in done.stdout
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        text = path.read_text()
        assert "sys.path" not in text and "noqa: E402" not in text, path.name


def test_results_has_one_writer_and_sections_are_spliced(bench):
    writers = [p.name for p in (ROOT / "benchmarks").glob("*.py") if "write_text(" in p.read_text()]
    assert writers == ["run.py"]
    begin, end = bench.KEPT["threads"]
    old = f"# head\n\n{begin}\nold threads\n{end}\n\ntail\n"
    assert bench.splice(old, begin, end, f"{begin}\nnew\n{end}") == f"# head\n\n{begin}\nnew\n{end}\n\ntail\n"
    assert bench.splice("# head\n", begin, end, "S") == "# head\n\nS\n"
    assert bench.keep_section("# new\n", old, begin, end) == f"# new\n\n{begin}\nold threads\n{end}\n"
    assert bench.keep_section("# new\n", "# no section\n", begin, end) == "# new\n"


def test_run_writes_the_report_and_keeps_or_replaces_the_measured_apart_sections(tmp_path, monkeypatch):
    """The writer's paths, with every measurement replaced by a fixed result."""
    from benchmarks import run

    out = tmp_path / "RESULTS.md"
    (t_begin, t_end), (s_begin, s_end) = run.KEPT["threads"], run.KEPT["step-rates"]
    out.write_text(f"# old\n\n{t_begin}\nthreads v1\n{t_end}\n\n{s_begin}\nrates v1\n{s_end}\n")
    goal = run.Goal("g", "1x", True)
    monkeypatch.setattr(run, "bench_training", lambda root, scale: ([goal], ["## training"], {}))
    for name in ("bench_overheads", "bench_ensemble"):
        monkeypatch.setattr(run, name, lambda root, scale, info: ([], []))
    for name in ("bench_analysis", "bench_circuits", "bench_memory", "bench_reference", "bench_llm"):
        monkeypatch.setattr(run, name, lambda root, scale: ([], []))
    text = run.main(["--quick", "--out", str(out)])
    assert out.read_text() == text and text.startswith("# Benchmark results (quick smoke run)")
    assert "`python -m benchmarks.run --quick`" in text and "## training" in text and "# old" not in text
    assert "threads v1" in text and "rates v1" in text
    monkeypatch.setattr(
        run.threads, "measure", lambda steps, rounds: f"{t_begin}\nthreads v2 {steps} {rounds}\n{t_end}"
    )
    run.main(["--section", "threads", "--steps", "7", "--out", str(out)])
    after = out.read_text()
    assert "threads v2 7 2" in after and "threads v1" not in after
    assert after.replace("threads v2 7 2", "threads v1") == text


def test_reference_speed_rows_survive_a_main_run_and_its_section_replaces_them(tmp_path, monkeypatch):
    """The reference-speed goals are measured apart: a main run keeps their summary rows, the section rewrites them."""
    from benchmarks import reference_speed, run

    begin, end = run.KEPT["reference-speed"]
    one, grid = reference_speed.GOAL_ONE, reference_speed.GOAL_GRID.format(members=17)
    out = tmp_path / "RESULTS.md"
    out.write_text(
        f"# old\n\n| goal | measured | status |\n| --- | --- | --- |\n| {one} | 2.00x | met |\n"
        f"| {grid} | 5.00x | met |\n\n{begin}\nold speed\n{end}\n"
    )
    monkeypatch.setattr(run, "bench_training", lambda root, scale: ([run.Goal("g", "1x", True)], ["## training"], {}))
    for name in ("bench_overheads", "bench_ensemble"):
        monkeypatch.setattr(run, name, lambda root, scale, info: ([], []))
    for name in ("bench_analysis", "bench_circuits", "bench_memory", "bench_reference", "bench_llm"):
        monkeypatch.setattr(run, name, lambda root, scale: ([], []))
    text = run.main(["--quick", "--out", str(out)])
    assert f"| g | 1x | met |\n| {one} | 2.00x | met |\n| {grid} | 5.00x | met |\n" in text and "old speed" in text
    # Their step 4x slower per sequence than ours, our vectorised job 2x: 4x and 17 * 4 / 2 = 34x.
    times = {"ours": [1.0, 1.0], "ours_vectorised": [2.0, 2.0], "theirs": [4.0, 4.0]}
    goals = reference_speed.goals(times, 17)
    assert [(g.measured, g.met) for g in goals] == [("4.00x", True), ("34.00x", True)]
    monkeypatch.setattr(run.reference_speed, "section", lambda *a: (f"{begin}\nnew speed\n{end}\n", goals))
    run.main(["--section", "reference-speed", "--simple-icl", str(tmp_path), "--out", str(out)])
    after = out.read_text()
    assert f"| {one} | 4.00x | met |" in after and f"| {grid} | 34.00x | met |" in after
    assert "new speed" in after and "old speed" not in after and after.endswith(f"{end}\n")


def test_section_analysis_replaces_its_section_and_its_summary_rows(tmp_path, monkeypatch):
    """``--section analysis``: its marked section and its goals' summary rows and notes change, nothing else."""
    from benchmarks import run

    begin, end = run.ALSO_APART["analysis"]
    out = tmp_path / "RESULTS.md"
    before = (
        "# head\n\n| goal | measured | status |\n| --- | --- | --- |\n| other | 1x | met |\n"
        "| analysis: fast | 90 s | **missed** |\n| analysis: linear | exp 1.0 | met |\n\n"
        "### Missed goals and notes\n\n- **other** (1x): why not\n- **analysis: fast** (90 s): slow\n\n"
        f"## training\n\n{begin}\n## Analysis\nold\n{end}\n\n## circuits\n"
    )
    out.write_text(before)
    seen = {}

    def fake(root, scale, run_folder):
        seen["scale"], seen["run"] = scale, run_folder
        return [run.Goal("analysis: fast", "50 s", True), run.Goal("analysis: linear", "exp 0.9", True)], [
            begin,
            "## Analysis",
            "new",
            end,
            "",
        ]

    monkeypatch.setattr(run, "bench_analysis", fake)
    run.main(["--section", "analysis", "--quick", "--run", str(tmp_path / "demo"), "--out", str(out)])
    after = out.read_text()
    assert seen == {"scale": run.QUICK, "run": tmp_path / "demo"}
    expect = (
        before.replace("| analysis: fast | 90 s | **missed** |", "| analysis: fast | 50 s | met |")
        .replace("| analysis: linear | exp 1.0 | met |", "| analysis: linear | exp 0.9 | met |")
        .replace("- **analysis: fast** (90 s): slow\n", "")
        .replace("## Analysis\nold", "## Analysis\nnew")
    )
    assert after == expect
    missed = run.update_goals(after, [run.Goal("analysis: fast", "70 s", False, "still slow")])
    assert "| analysis: fast | 70 s | **missed** |" in missed
    assert "- **other** (1x): why not\n- **analysis: fast** (70 s): still slow\n" in missed
