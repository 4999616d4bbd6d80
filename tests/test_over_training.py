"""Probes over training: one tidy table, cached per checkpoint and analysis version."""

from __future__ import annotations

import pytest

from icl_circuits.errors import ICLError
from icl_circuits.runs.store import list_checkpoints
from probes import over_training
from probes.over_training import COLUMNS, analyze_run


def test_tidy_table_and_cache(tiny_run, monkeypatch):
    steps = list_checkpoints(tiny_run)
    calls = []
    real = over_training.analyze_checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get("step", args[-1] if args else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(over_training, "analyze_checkpoint", counting)
    first = analyze_run(tiny_run, steps=steps[:3], eval_size=32, progress=False)
    assert len(calls) == 3
    assert list(first.columns) == COLUMNS
    assert set(first.step) == set(steps[:3])
    assert {"clean", "IWL path"} <= set(first.condition)
    # the ICL circuit (and its random-heads control) is ablated only if one was found
    assert ("ICL circuit" in set(first.condition)) == first.attrs["circuit"].found
    heads = first[first.layer.notna()]
    assert set(heads.metric) >= {"task_induction", "prev_token", "prefix_matching", "dla"}
    assert len(heads[(heads.step == steps[0]) & (heads.metric == "task_induction")]) == 4  # 2 layers x 2 heads

    calls.clear()
    again = analyze_run(tiny_run, steps=steps[:3], eval_size=32, progress=False)
    assert calls == [], "a second call reads the cache"
    assert again.equals(first)

    calls.clear()
    analyze_run(tiny_run, eval_size=32, progress=False)
    assert len(calls) == len(steps) - 3, "new checkpoints cost one analysis each"

    calls.clear()
    analyze_run(tiny_run, steps=steps[:1], eval_size=64, progress=False)
    assert len(calls) == 1, "other analysis parameters are cached separately"


def test_bad_steps(tiny_run):
    with pytest.raises(ICLError, match="steps: no checkpoint at step 7"):
        analyze_run(tiny_run, steps=[7], progress=False)
    with pytest.raises(ICLError, match="ablation: expected mean, zero or resample"):
        analyze_run(tiny_run, ablation="median", progress=False)
