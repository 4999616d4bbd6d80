"""Probes over training: one tidy table, cached per checkpoint and analysis version."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from icl_circuits.data import build_source
from icl_circuits.data.batch import Batch
from icl_circuits.errors import ICLError
from icl_circuits.metrics import eval_sets, query_metrics
from icl_circuits.models import build
from icl_circuits.runs.read import BridgeLoader, load_config, load_model
from icl_circuits.runs.store import list_checkpoints
from probes import over_training, scores
from probes.builtin.ablations import controls
from probes.circuits import FoundCircuit
from probes.over_training import COLUMNS, analyze_run
from probes.subcircuits import Subcircuit, ablate_subcircuit, icl_circuit, iwl_path, subcircuit_effects


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


def _plain_scores(model, batch: Batch) -> pd.DataFrame:
    """Every head score from full caches (the readout at every position), one per batch."""
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens())
        tokens, ids = scores.repeated_sequence(batch, model.cfg.n_ctx)
        _, repeated = model.run_with_cache(tokens)

    def patterns(c) -> torch.Tensor:
        return torch.stack([c[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)])

    olsson = scores._tidy("prefix_matching", scores.prefix_matching(patterns(repeated), ids))
    olsson += scores._tidy("copying", scores.copying_scores(model))
    return pd.concat(
        [
            scores.pattern_scores(patterns(cache), batch),
            pd.DataFrame(olsson),
            scores.direct_logit_attribution(model, batch, cache),
        ],
        ignore_index=True,
    )


def _plain_table(run, steps, circuit, method: str, eval_size: int) -> pd.DataFrame:
    """The ablation rows and head scores the plainest way: a fresh bridge per checkpoint, one full
    forward (the readout at every position) over every split per condition, a reference pass of
    its own per subcircuit, the head scores from full caches."""
    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    evals = eval_sets(source, eval_size)
    splits = list(evals)
    every = Batch.cat([evals[s] for s in splits])
    frames = []
    for step in steps:
        model = load_model(run, step)
        ic = icl_circuit(circuit.prev_token_heads, circuit.induction_heads)
        subs = [ic, *controls(model.cfg.n_layers, model.cfg.n_heads, ic.heads), iwl_path(model)]
        rows = []

        def record(condition: str, model=model, rows=rows) -> None:
            with torch.no_grad():
                logits = model(every.tokens())[:, -1]
            start = 0
            for split in splits:
                batch = evals[split]
                part = logits[start : start + len(batch)]
                start += len(batch)
                for metric, value in query_metrics(part, batch, source.n_labels).items():
                    rows.append({"condition": condition, "split": split, "metric": metric, "value": value})

        record("clean")
        for sub in subs:
            with ablate_subcircuit(model, sub, method, evals[source.icl_split]):
                record(sub.name)
        df = pd.DataFrame(rows)
        df["condition"] = df.condition.str.replace(r"^random heads \d+$", "random heads", regex=True)
        df = df.groupby(["condition", "split", "metric"], sort=False).value.mean().reset_index()
        scores = _plain_scores(model, evals[source.icl_split]).assign(split=source.icl_split, condition="clean")
        frames.append(pd.concat([df, scores], ignore_index=True).assign(step=step))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize(
    ("method", "circuit"),
    [
        ("mean", FoundCircuit(((0, 0),), ((1, 1),))),  # 2 of 4 heads: the complement and each head alone
        ("zero", FoundCircuit((), ((1, 1),))),  # 1 of 4 heads: random draws outside it
        ("resample", FoundCircuit(((0, 0),), ((1, 1),))),
    ],
)
def test_analysis_equals_the_plain_path(tiny_run, tmp_path, monkeypatch, method, circuit):
    """The analysis (forwards in chunks, the readout at the query only, one bridge refilled per
    checkpoint, the reference read from the clean pass) gives the plain path's table within
    float32 rounding (1e-6)."""
    steps = list_checkpoints(tiny_run)[1:4]
    seq_bytes = 9 * 16 * 4  # tiny run: 9 tokens of d_model 16, float32
    monkeypatch.setattr(build, "ANALYSIS_CHUNK_BYTES", 7 * seq_bytes)
    assert build.chunks(96, 9, 16)[:2] == [slice(0, 7), slice(7, 14)]  # 3 splits x 32 in chunks of 7 across them
    fast = analyze_run(
        tiny_run, steps=steps, circuit=circuit, eval_size=32, ablation=method, progress=False, cache=tmp_path
    )
    plain = _plain_table(tiny_run, steps, circuit, method, eval_size=32)
    key = ["step", "condition", "split", "metric", "layer", "head_index"]

    def indexed(df: pd.DataFrame) -> pd.Series:
        heads = {c: df[c].astype("Float64").fillna(-1).astype(int) for c in ("layer", "head_index")}
        return df.assign(**heads).set_index(key).value

    fast, plain = indexed(fast), indexed(plain)
    assert sorted(fast.index) == sorted(plain.index)
    assert {"complement", "random heads"} & set(fast.index.get_level_values("condition"))
    diff = (fast - plain.reindex(fast.index)).abs()
    assert diff.max() <= 1e-6, diff.sort_values().tail()


def test_ablation_passes_run_in_chunks_of_the_budget(tiny_run, monkeypatch):
    model = load_model(tiny_run)
    cfg = load_config(tiny_run)
    batch = build_source(cfg.data, cfg.seed, "cpu").eval_batch("IC", 50)
    monkeypatch.setattr(build, "ANALYSIS_CHUNK_BYTES", 8 * 9 * 16 * 4)  # 8 sequences of 9 tokens, d_model 16
    assert [r.stop - r.start for r in build.chunks(50, 9, 16)] == [8] * 6 + [2]
    calls = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda x, hook: calls.append(len(x)))]):
        chunked = subcircuit_effects(
            model, {"IC": batch}, cfg.data.n_labels, [Subcircuit("L1", ((1, 0),))], "mean", batch
        )
    assert calls == [8] * 6 + [2], "the clean pass in chunks; the ablated one from block 1 (no embedding)"
    monkeypatch.setattr(build, "ANALYSIS_CHUNK_BYTES", 2**20)
    whole = subcircuit_effects(model, {"IC": batch}, cfg.data.n_labels, [Subcircuit("L1", ((1, 0),))], "mean", batch)
    assert (chunked.value - whole.value).abs().max() <= 1e-6


def test_bridge_loader_refills_one_bridge(tiny_run):
    steps = list_checkpoints(tiny_run)
    loader = BridgeLoader(tiny_run)
    first = loader(steps[-1])
    for step in (steps[0], steps[2]):
        assert loader(step) is first
        fresh = load_model(tiny_run, step)
        for (name, a), (_, b) in zip(first.state_dict().items(), fresh.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
