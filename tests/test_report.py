"""Output a scientist can trust: circuit threshold, random-heads control, skipped and incomplete runs."""

from __future__ import annotations

import re
import shutil
import time

import pandas as pd
import pytest

from icl_circuits.metrics import eval_sets
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_model
from icl_circuits.runs.store import list_checkpoints
from probes import over_training
from probes.builtin.ablations import COMPLEMENT, RANDOM_HEADS, controls
from probes.circuits import THRESHOLD, FoundCircuit, find_icl_circuit, random_heads
from probes.over_training import COLUMNS, analyze_run
from probes.report import SUMMARY, write_report
from probes.scores import head_scores
from probes.subcircuits import Subcircuit, subcircuit_effects

GIVEN = FoundCircuit(((0, 0),), ((1, 0),))


def _copy(run, dest, keep: int | None = None):
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("analysis"))
    if keep is not None:
        for step in list_checkpoints(dest)[keep:]:
            shutil.rmtree(layout.checkpoint_dir(dest, step))
    return dest


def test_untrained_model_has_no_circuit(tiny_run):
    from icl_circuits.data import build_source
    from icl_circuits.runs.read import load_config

    cfg = load_config(tiny_run)
    source = build_source(cfg.data, cfg.seed)
    scores = head_scores(load_model(tiny_run, 0), source.eval_batch("IC", 64))
    found = find_icl_circuit(scores)
    assert not found.found and found.heads == ()
    assert f"threshold {THRESHOLD:.2f}" in found.describe() and "best L1H" in found.describe()
    # the same scores pass once the threshold is below the best head's
    best = scores[(scores.metric == "task_induction") & (scores.layer >= 1)].value.max()
    assert find_icl_circuit(scores, threshold=best - 1e-6).found


def test_random_heads_control():
    draws = random_heads(2, 4, 3, n_draws=3)
    assert len(draws) == 3 and all(len(set(d)) == 3 for d in draws)
    assert all(0 <= layer < 2 and 0 <= h < 4 for d in draws for layer, h in d)
    assert draws == random_heads(2, 4, 3, n_draws=3), "seeded: the same heads at every checkpoint"
    assert random_heads(2, 2, 4) == [] and random_heads(2, 2, 0) == []
    inside = ((0, 1), (1, 0))
    outside = random_heads(2, 4, 2, n_draws=5, exclude=inside)
    assert len(outside) == 5 and not {h for d in outside for h in d} & set(inside)
    # 3 of 4 heads: every draw of 3 holds 2 of the circuit's, so there is no draw outside it
    assert random_heads(2, 2, 3, exclude=((0, 1), (1, 0), (1, 1))) == []
    assert random_heads(2, 2, 2, exclude=((0, 0), (1, 0))) == [], "the only draw is the complement: not random"


def test_controls_where_no_random_draw_avoids_the_circuit():
    three = ((0, 1), (1, 0), (1, 1))
    names = [c.name for c in controls(2, 2, three)]
    assert names == [COMPLEMENT, "head L0H0", "head L0H1", "head L1H0", "head L1H1"]
    assert controls(2, 2, three)[0].heads == ((0, 0),)
    every = ((0, 0), (0, 1), (1, 0), (1, 1))
    assert [c.name for c in controls(2, 2, every)] == ["head L0H0", "head L0H1", "head L1H0", "head L1H1"]
    one = controls(2, 2, ((1, 0),), n_random=3)
    assert [c.name for c in one] == [f"{RANDOM_HEADS} {i}" for i in range(3)]
    assert all(len(c.heads) == 1 and c.heads[0] != (1, 0) for c in one)
    assert controls(2, 2, ()) == []


def test_random_heads_condition_is_the_mean_over_draws(tiny_run):
    step = list_checkpoints(tiny_run)[-1]
    one = FoundCircuit((), ((1, 0),))
    df = analyze_run(tiny_run, steps=[step], circuit=one, eval_size=32, progress=False)
    assert {"clean", "ICL circuit", RANDOM_HEADS, "IWL path"} <= set(df.condition)
    assert COMPLEMENT not in set(df.condition)
    got = df[(df.condition == RANDOM_HEADS) & (df.split == "IC") & (df.metric == "acc")].value.item()
    # recompute by hand: each draw (outside the circuit) ablated on its own, then averaged
    from icl_circuits.data import build_source
    from icl_circuits.runs.read import load_config

    cfg = load_config(tiny_run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    evals = eval_sets(source, 32)
    model = load_model(tiny_run, step)
    subs = [Subcircuit(f"d{i}", heads=h) for i, h in enumerate(random_heads(2, 2, 1, 3, exclude=((1, 0),)))]
    eff = subcircuit_effects(model, evals, source.n_labels, subs, reference=evals["IC"])
    want = eff[(eff.condition != "clean") & (eff.split == "IC") & (eff.metric == "acc")].value.mean()
    assert got == pytest.approx(want)

    df = analyze_run(tiny_run, steps=[step], circuit=GIVEN, eval_size=32, progress=False)
    assert RANDOM_HEADS not in set(df.condition), "2 of 4 heads: no random draw outside the circuit"
    assert {COMPLEMENT, "head L0H0", "head L1H1"} <= set(df.condition)
    every = FoundCircuit(((0, 0), (0, 1)), ((1, 0), (1, 1)))
    df = analyze_run(tiny_run, steps=[step], circuit=every, eval_size=32, progress=False)
    assert RANDOM_HEADS not in set(df.condition) and COMPLEMENT not in set(df.condition)
    # each head alone ablated equals ablating that one head by hand
    sub = [Subcircuit("L0H1", heads=((0, 1),))]
    eff = subcircuit_effects(model, evals, source.n_labels, sub, reference=evals["IC"])
    want = eff[(eff.condition == "L0H1") & (eff.split == "IC") & (eff.metric == "acc")].value.item()
    got = df[(df.condition == "head L0H1") & (df.split == "IC") & (df.metric == "acc")].value.item()
    assert got == pytest.approx(want)


def test_summary_names_what_was_ablated(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path / "run")
    one = FoundCircuit((), ((1, 0),))
    out = write_report(run, progress=False, out=tmp_path / "ana", circuit=one, eval_size=32)
    text = (out / SUMMARY).read_text()
    assert "ICL circuit, 1 of 4 heads (L1H0):" in text
    assert "1 random heads outside the circuit (control, mean of 3 draws): IC " in text
    assert "final step 40 of 40" in text and "incomplete" not in text
    assert not (run / layout.ANALYSIS).exists(), "--out leaves the run folder untouched"

    text = (write_report(run, progress=False, out=tmp_path / "ana", circuit=GIVEN, eval_size=32) / SUMMARY).read_text()
    assert "ICL circuit, 2 of 4 heads (L0H0, L1H0):" in text
    assert "random heads" not in text
    assert "control: no random draw of 2 heads avoids the circuit (2 head(s) outside it)" in text
    assert "complement, every head outside the circuit (L0H1, L1H1): IC " in text
    assert "L0H1 alone (outside the circuit): IC " in text and "L1H0 alone (in the circuit): IC " in text

    every = FoundCircuit(((0, 0), (0, 1)), ((1, 0), (1, 1)))
    text = (write_report(run, progress=False, out=tmp_path / "ana", circuit=every, eval_size=32) / SUMMARY).read_text()
    assert "4 of 4 heads (L0H0, L0H1, L1H0, L1H1) = every head of the model" in text
    assert "complement" not in text and "L1H1 alone (in the circuit): IC " in text


def test_untrained_incomplete_run_reports_no_circuit(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path / "run", keep=2)  # steps 0 and 1 of 40: still "training"
    text = (write_report(run, progress=False, out=tmp_path / "ana", eval_size=32) / SUMMARY).read_text()
    assert "final step 1; incomplete: 1 of 40 steps" in text
    assert f"ICL circuit: none (no head in layer >= 1 reaches the task-induction threshold {THRESHOLD:.2f}" in text
    assert "nothing ablated (no circuit found)" in text


def test_corrupt_middle_checkpoint_is_skipped(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path / "run")
    steps = list_checkpoints(run)
    bad = layout.checkpoint_dir(run, steps[2]) / layout.MODEL
    data = bad.read_bytes()
    bad.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    df = analyze_run(run, circuit=GIVEN, eval_size=32, progress=False)
    assert steps[2] not in set(df.step) and set(df.step) == set(steps) - {steps[2]}
    assert [s for s, _ in df.attrs["skipped"]] == [steps[2]]
    text = (write_report(run, progress=False, circuit=GIVEN, eval_size=32) / SUMMARY).read_text()
    assert "skipped 1 unreadable checkpoint(s):" in text and "checksum mismatch" in text


def test_progress_eta_ignores_the_warm_up(tiny_run, tmp_path, monkeypatch, capsys):
    """The first checkpoint's warm-up (slow) must not set the ETA of the fast rest."""
    calls = []

    def fake(model, source, evals, params, step=0):
        calls.append(step)
        time.sleep(0.8 if len(calls) == 1 else 0.01)
        return pd.DataFrame([[step, "clean", "IC", "acc", pd.NA, pd.NA, 0.5]], columns=COLUMNS)

    monkeypatch.setattr(over_training, "analyze_checkpoint", fake)
    run = _copy(tiny_run, tmp_path / "run")
    analyze_run(run, circuit=GIVEN, eval_size=32, progress=True)
    err = capsys.readouterr().err
    etas = re.findall(r"<(\d+):(\d+)", err)
    assert etas, err
    assert max(int(m) * 60 + int(s) for m, s in etas) <= 1, err
