"""The probe registry: a probe is one function and one registration; its version keys the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from icl_circuits.errors import ICLError
from icl_circuits.runs.store import list_checkpoints
from probes import over_training, registry
from probes.circuits import FoundCircuit
from probes.over_training import COLUMNS, analyze_run
from probes.registry import Probe, registered

GIVEN = FoundCircuit(((0, 0),), ((1, 0),))
DOCS = Path(__file__).parents[1] / "docs"


def query_norm(model, source, evals, params, step):
    """A toy probe: the mean norm of each head's query input weights, per head."""
    w = model.W_Q.detach()  # [layer, head, d_model, d_head]
    norms = w.norm(dim=(-2, -1))
    rows = [
        {"split": source.icl_split, "metric": "toy_q_norm", "layer": layer, "head_index": head, "value": float(v)}
        for layer in range(norms.shape[0])
        for head, v in enumerate(norms[layer])
    ]
    return pd.DataFrame(rows)


TOY = Probe("toy", version=1, metrics=("toy_q_norm",), compute=query_norm)


def _run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("analysis"))
    return run


def test_a_toy_probe_runs_lands_in_the_table_and_the_cache(tiny_run, tmp_path):
    run = _run_copy(tiny_run, tmp_path)
    steps = list_checkpoints(run)[:2]
    before = registry.all_probes()
    with registered(TOY):
        assert registry.get("toy") is TOY and registry.all_probes()[-1] is TOY
        df = analyze_run(run, steps=steps, circuit=GIVEN, eval_size=16, progress=False)
        toy = df[df.metric == "toy_q_norm"]
        assert list(df.columns) == COLUMNS
        assert len(toy) == len(steps) * 4 and set(toy.step) == set(steps)  # 2 layers x 2 heads
        assert set(toy.condition) == {"clean"} and toy.layer.notna().all()
        assert {"acc", "task_induction"} <= set(df.metric), "the built-in probes still run"
        assert df.attrs["params"].probes == ("ablations", "head_scores", "toy")
        cached = over_training._cache_path(run, steps[0], df.attrs["params"])
        assert cached.exists() and "toy_q_norm" in set(pd.read_csv(cached).metric)
        # a selection runs only the named probes, cached apart
        alone = analyze_run(run, steps=steps, circuit=GIVEN, eval_size=16, progress=False, probes=["toy"])
        assert set(alone.metric) == {"toy_q_norm"}
        assert alone.reset_index(drop=True).equals(toy.reset_index(drop=True))
    assert registry.all_probes() == before, "leaving the block restores the registry"
    with pytest.raises(ICLError, match="no probe named 'toy'"):
        analyze_run(run, steps=steps, circuit=GIVEN, eval_size=16, progress=False, probes=["toy"])


def test_register_unregister_and_bad_probes():
    before = registry.all_probes()
    registry.register(TOY)
    try:
        with pytest.raises(ValueError, match="already registered"):
            registry.register(TOY)
        with pytest.raises(ValueError, match="already produced by probe 'head_scores'"):
            registry.register(Probe("toy2", 1, metrics=("prev_token",), compute=query_norm))
    finally:
        assert registry.unregister("toy") is TOY
    assert registry.all_probes() == before
    with pytest.raises(ValueError, match="must name its metrics"):
        Probe("bad", 1, compute=query_norm)
    with pytest.raises(ValueError, match="give compute, report or both"):
        Probe("bad", 1)
    with pytest.raises(ValueError, match="non-negative int"):
        Probe("bad", "1", metrics=("x",), compute=query_norm)


def test_undeclared_metric_is_an_error(tiny_run, tmp_path):
    def liar(model, source, evals, params, step):
        return pd.DataFrame([{"split": source.icl_split, "metric": "other", "value": 0.0}])

    run = _run_copy(tiny_run, tmp_path)
    with registered(Probe("liar", 1, metrics=("declared",), compute=liar)):
        with pytest.raises(ValueError, match=r"probe liar: metric\(s\) \['other'\] not among its declared"):
            analyze_run(run, steps=[0], circuit=GIVEN, eval_size=16, progress=False, probes=["liar"])


def test_a_probe_version_keys_the_cache(tiny_run, tmp_path, monkeypatch):
    run = _run_copy(tiny_run, tmp_path)
    step = list_checkpoints(run)[-1]
    calls = []
    real = over_training.analyze_checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(over_training, "analyze_checkpoint", counting)
    kwargs = dict(steps=[step], circuit=GIVEN, eval_size=16, progress=False)
    first = analyze_run(run, **kwargs)
    analyze_run(run, **kwargs)
    assert len(calls) == 1, "cached"
    key = first.attrs["params"].key()

    bumped = dataclasses.replace(registry.get("head_scores"), version=registry.get("head_scores").version + 1)
    with registered(bumped, replace=True):
        assert [p.name for p in registry.select()] == ["ablations", "head_scores", "circuits"], "keeps its place"
        again = analyze_run(run, **kwargs)
        assert len(calls) == 2, "a bumped probe version recomputes"
        assert again.attrs["params"].key() != key
        assert again.equals(first), "same computation, same rows"
    analyze_run(run, **kwargs)
    assert len(calls) == 2, "back to the registered version: its cache is found again"
    # a report-only probe's version is not part of the analysis key
    circuits = registry.get("circuits")
    with registered(dataclasses.replace(circuits, version=circuits.version + 1), replace=True):
        assert first.attrs["params"].key() == key


def test_old_cache_files_are_never_read(tiny_run, tmp_path):
    """Tables cached by the hand-bumped ANALYSIS_VERSION layout (``v2-{key}``) are not found."""
    run = _run_copy(tiny_run, tmp_path)
    step = list_checkpoints(run)[-1]
    params = over_training.AnalysisParams(16, "mean", GIVEN.prev_token_heads, GIVEN.induction_heads)
    fields = {k: v for k, v in dataclasses.asdict(params).items() if k != "probes"}
    old_key = hashlib.sha256(json.dumps({"version": 2, **fields}, sort_keys=True).encode()).hexdigest()[:12]
    new = over_training._cache_path(run, step, params)
    old = new.parent.with_name(f"v2-{old_key}") / new.name
    old.parent.mkdir(parents=True)
    pd.DataFrame([[step, "clean", "IC", "acc", pd.NA, pd.NA, -1.0]], columns=COLUMNS).to_csv(old, index=False)
    df = analyze_run(run, steps=[step], circuit=GIVEN, eval_size=16, progress=False)
    assert (df.value != -1.0).all() and len(df) > 1
    assert new.parent != old.parent and new.exists()


def test_every_registered_metric_is_explained_in_the_docs():
    text = (DOCS / "metrics.md").read_text()
    missing = [m for m in registry.metric_names() if f"`{m}`" not in text]
    assert not missing, f"docs/metrics.md does not explain {missing}"


def test_report_sections_follow_their_rank(tiny_run, tmp_path):
    from probes.report import SUMMARY, write_report

    def section(ctx):
        (ctx.out / "toy.txt").write_text(f"{len(ctx.steps)} steps\n")
        last = ctx.df[(ctx.df.metric == "toy_q_norm") & (ctx.df.step == ctx.df.step.max())]
        return [f"toy: largest query norm {last.value.max():.2f}"]

    run = _run_copy(tiny_run, tmp_path)
    with registered(dataclasses.replace(TOY, report=section, report_rank=15)):
        out = write_report(run, progress=False, out=tmp_path / "ana", circuit=GIVEN, eval_size=16)
    lines = (out / SUMMARY).read_text().splitlines()
    toy = next(i for i, line in enumerate(lines) if line.startswith("toy: largest query norm"))
    assert lines[toy - 1].startswith("top previous-token heads") or lines[toy - 1].startswith("scores skipped")
    assert lines[toy + 1].startswith("ablated at step")
    assert (out / "toy.txt").read_text() == f"{len(list_checkpoints(run))} steps\n"
    # the same report without the toy probe is another report folder
    again = write_report(run, progress=False, out=tmp_path / "ana", circuit=GIVEN, eval_size=16)
    assert again != out and "toy:" not in (again / SUMMARY).read_text()


def test_report_refuses_a_selection_without_the_metrics_it_reads(tiny_run, tmp_path):
    from probes.report import write_report

    with pytest.raises(ICLError, match=r"the report needs metric\(s\) \['acc'\]; add probe\(s\) \['ablations'\]"):
        write_report(tiny_run, progress=False, out=tmp_path / "ana", probes=["head_scores"])


def test_opt_in_probes_run_only_when_named():
    assert {"llc", "llc_components", "stages"} <= {p.name for p in registry.all_probes()}
    assert not {"llc", "llc_components", "stages"} & {p.name for p in registry.select()}
    assert [p.name for p in registry.select(["stages"])] == ["stages"]
    assert registry.metric_names()["llc"] == "llc", "opt-in probes' metrics are documented too"
