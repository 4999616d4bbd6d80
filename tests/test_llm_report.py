"""``icl-circuits show`` and ``analyze`` on a language-model fine-tuning run folder (tiny Llama)."""

from __future__ import annotations

import pandas as pd
import pytest

from icl_circuits.cli import main
from icl_circuits.llm import finetune as F
from icl_circuits.llm import study as S
from icl_circuits.llm import tasks as T
from icl_circuits.llm.report import SUMMARY, is_llm_run, write_llm_report
from icl_circuits.llm.tiny import tiny_lm
from icl_circuits.runs import layout
from icl_circuits.runs.read import read_metrics
from icl_circuits.runs.store import list_checkpoints


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    """A chan2024-llm-style run of the tiny model, evaluated as the reproduction evaluates."""
    lm = tiny_lm(seed=0)
    ts = T.build_taskset(lm.tokenizer, n_trained=8)
    cfg = F.FinetuneConfig(
        model="tiny", steps=6, batch=4, n_checkpoints=4, train_layers=(1, 2), eval_size=3, lr=1e-2, n_trained=8,
        head_seqs=2, head_half=6,
    )  # fmt: skip
    ev = S.Evaluator(T.eval_prompts(ts, 3), S.head_tokens(lm, 2, 6, seed=1), 6, [(1, 0)])
    return F.finetune(lm, ts, cfg, tmp_path_factory.mktemp("llm") / "run", ev)


def test_show(llm_run, capsys):
    assert is_llm_run(llm_run)
    assert main(["show", str(llm_run)]) == 0
    out = capsys.readouterr().out
    assert "language-model fine-tuning: model tiny, p_relevant 0.1, attention of layers 1..1 trained" in out
    assert f"checkpoints: {len(list_checkpoints(llm_run))} (steps 0..6) of 6 steps" in out
    assert "memorised" in out and "icl" in out  # the last metrics table


def test_analyze(llm_run, tmp_path, capsys):
    assert main(["analyze", str(llm_run), "--out", str(tmp_path / "ana")]) == 0
    text = capsys.readouterr().out
    assert "language-model fine-tuning of tiny, p_relevant 0.1" in text
    assert "[icl split, chance" in text and "[memorised split, chance" in text
    assert "conflict (context and memory disagree): context answer" in text
    assert "top induction heads (repeated random tokens): step 0: L" in text
    assert "top 3 induction heads ablated (mean ablation)" in text and "  step 0, top 3" in text
    assert "  step 6, top 3" in text and "vs 3 random heads (mean of 3)" in text
    assert "induction circuit at step 6 (repeated random tokens, AtP* scores, corrupt patching; computed in" in text
    # an untrained tiny model has no induction to explain: no circuit of noise
    assert "none (the induction behaviour is" in text
    report = next((tmp_path / "ana").glob("report-step_000006-llm*"))
    for name in (SUMMARY, layout.REPORT_COMPETITION, layout.REPORT_FIG_COMPETITION, layout.REPORT_LLM_ABLATION):
        assert (report / name).stat().st_size > 0
    assert (report / layout.REPORT_FIG_HEADS.format(metric="induction")).exists()


def test_ablation_reloads_each_checkpoint(llm_run, tmp_path):
    """Ground truth: with nothing ablated, the report's measures at a checkpoint are the ones
    logged while training at that checkpoint (same weights, same sequences and prompts)."""
    report = write_llm_report(llm_run, out=tmp_path, steps=[1, 6], circuits=False)
    abl = pd.read_csv(report / layout.REPORT_LLM_ABLATION)
    logged = read_metrics(llm_run)
    for step in (1, 6):
        clean = abl[(abl.step == step) & (abl.condition == "clean")]
        for split, metric in (("repeat", "loss_repeat_half"), ("icl", "acc"), ("memorised", "acc")):
            got = clean[(clean.split == split) & (clean.metric == metric)].value.item()
            want = logged[(logged.step == step) & (logged.split == split) & (logged.metric == metric)].value.item()
            assert got == pytest.approx(want, abs=1e-4), (step, split, metric)
    assert write_llm_report(llm_run, out=tmp_path, steps=[1, 6], circuits=False) == report, "cached"


def test_bad_steps_one_line(llm_run, capsys):
    assert main(["analyze", str(llm_run), "--llm-steps", "5"]) == 2
    assert "no checkpoint at step 5" in capsys.readouterr().err
    assert main(["analyze", str(llm_run), "--llm-steps", "x"]) == 2
    assert main(["analyze", str(llm_run), "--llm-heads", "0"]) == 2
