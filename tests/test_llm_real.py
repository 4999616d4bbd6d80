"""The real language model (SmolLM2-135M-Instruct, offline GGUF): slow tests, `make test-slow`."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("gguf")
    from icl_circuits.llm import ModelNotFoundError, load_lm

    try:
        return load_lm()
    except ModelNotFoundError as err:
        pytest.skip(str(err))


def test_loads_with_standard_hook_names(lm):
    assert lm.shape == (30, 9) and lm.model.cfg.d_head == 64
    tokens = lm.encode("The capital of France is")
    logits, cache = lm.model.run_with_cache(tokens)
    assert logits.shape == (1, tokens.shape[1], 49152)
    for name in ("hook_embed", "blocks.0.attn.hook_pattern", "blocks.29.attn.hook_z", "blocks.5.hook_resid_post"):
        assert name in cache
    assert cache["blocks.3.attn.hook_pattern"].shape == (1, 9, tokens.shape[1], tokens.shape[1])
    assert lm.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_head_scores_agree_with_detect_head(lm):
    from transformer_lens.head_detector import detect_head

    from icl_circuits.llm import heads as H
    from icl_circuits.llm.study import head_tokens

    tokens = head_tokens(lm, 1, 20)
    text = lm.tokenizer.decode(tokens[0, 1:])
    model_tokens = lm.model.to_tokens(text)
    mine = H.detector_scores(lm.model, model_tokens)
    for name in ("induction_head", "previous_token_head", "duplicate_token_head"):
        ref = detect_head(lm.model, text, name)
        got = torch.tensor(mine[mine.metric == name].value.to_numpy(), dtype=torch.float32).reshape(ref.shape)
        assert torch.allclose(got, ref.float(), atol=1e-4), name
    # The repeated-sequence induction score ranks the same heads on top as detect_head.
    if torch.equal(model_tokens[0], tokens[0]):
        ours = H.head_scores(lm.model, tokens, 20)
        top_ours = set(H.top_heads(ours, "induction", 5))
        det = mine[mine.metric == "induction_head"]
        top_det = {(int(r.layer), int(r.head_index)) for r in det.nlargest(5, "value").itertuples()}
        assert len(top_ours & top_det) >= 4


def test_task_answers_are_single_well_defined_candidates(lm):
    from icl_circuits.llm import tasks as T

    ts = T.build_taskset(lm.tokenizer, n_trained=24)
    assert len(ts.cities) >= 30
    ids = [T.answer_tokens(lm.tokenizer, "Brelvin lives in", c) for c in ts.cities]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids)
    for split, prompts in T.eval_prompts(ts, 8).items():
        for p in prompts:
            assert len(T.answer_tokens(lm.tokenizer, p.text, p.answer)) == 1, (split, p.text)
            assert all(len(T.answer_tokens(lm.tokenizer, p.text, c)) == 1 for c in p.candidates)


def test_top_induction_heads_matter_more_than_random(lm):
    from icl_circuits.llm import ablation as A
    from icl_circuits.llm import heads as H
    from icl_circuits.llm.study import head_tokens

    tokens = head_tokens(lm, 4, 16)
    top = H.top_heads(H.head_scores(lm.model, tokens, 16), "induction", 10)
    table = A.induction_ablation(lm.model, tokens, 16, top, n_random=2, methods=("zero",))
    row = A.ablation_summary(table).iloc[0]
    assert row.top_increase > 1.0 and row.top_increase >= 3 * max(row.random_increase, 0.0)
