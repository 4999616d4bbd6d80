"""The demo's science, end to end (slow: a few minutes on 2 cores; `make test-slow`)."""

from __future__ import annotations

import time

import pytest

from icl_circuits.config import apply_overrides
from icl_circuits.presets import demo
from icl_circuits.runs.read import read_metrics
from icl_circuits.runs.store import list_checkpoints
from icl_circuits.training import train

pytestmark = pytest.mark.slow


def _final(run, split):
    m = read_metrics(run)
    return m[(m.step == m.step.max()) & (m.split == split) & (m.metric == "acc")].value.item()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "demo"
    start = time.monotonic()
    train(demo(), run, progress=False)
    return run, time.monotonic() - start


def test_demo_learns_icl_quickly(demo_run):
    run, seconds = demo_run
    assert seconds < 300
    assert len(list_checkpoints(run)) >= 50
    assert _final(run, "IC") >= 0.9


def test_demo_with_few_classes_memorises(tmp_path, demo_run):
    run = train(apply_overrides(demo(), ["data.n_classes=32"]), tmp_path / "k32", progress=False)
    assert _final(run, "IW") >= 0.8
    assert _final(run, "IC") < _final(demo_run[0], "IC") - 0.3


def test_demo_circuit_probes(demo_run):
    from probes.competition import competition_table, summarize
    from probes.over_training import analyze_run

    run, _ = demo_run
    df = analyze_run(run, progress=False)
    circuit = df.attrs["circuit"]
    table = competition_table(df, "IC", "IW")
    ic = summarize(table)["ICL"]
    assert ic.emerged
    # the top induction head's score rises within a few checkpoints of IC accuracy
    head = circuit.induction_heads[0]
    score = df[(df.metric == "task_induction") & (df.layer == head[0]) & (df.head_index == head[1])]
    from probes.competition import detect_transition

    head_tr = detect_transition(score.set_index("step").value, name="induction")
    steps = list(table.index)
    assert abs(steps.index(head_tr.emergence_step) - steps.index(ic.emergence_step)) <= 3
    # ablating the ICL circuit at the end drops IC accuracy to chance (2 classes in context)
    final = table.iloc[-1]
    assert final["IC_acc|ICL circuit"] < 0.2


def test_demo_summary_does_not_mislead(demo_run, tmp_path):
    """The demo's summary: no IWL circuit (IWL is never learned), an informative control,
    faithfulness over 1 explained, edge timings from the emergence step, every line documented."""
    import re

    from probes.report import SUMMARY, write_report
    from tests.test_summary_truth import check_summary

    run, _ = demo_run
    text = (write_report(run, progress=False, out=tmp_path / "analysis") / SUMMARY).read_text()
    check_summary(text)
    assert re.search(r"^IWL: no emergence", text, re.M)
    assert "IWL circuit (IW): none reported, the behaviour is not learned" in text
    assert re.search(r"edges \(in the circuit at how many of the \d+ checkpoints since ICL emerged at step \d+\)", text)
    # the circuit is special: ablating it costs IC far more than ablating any control does
    circuit = float(re.search(r"ICL circuit, \d+ of 4 heads \([^)]*\): IC [\d.]+ -> ([\d.]+)", text).group(1))
    controls = re.findall(r"(?:complement|random heads outside)[^:]*\([^)]*\)[^:]*: IC [\d.]+ -> ([\d.]+)", text)
    assert controls and all(float(c) > circuit + 0.3 for c in controls), text
