"""Scoring answers by log-probability of each candidate's tokens (no sampling).

A prompt's score for a candidate is ``sum log p(candidate tokens | prompt)``; the predicted
answer is the best-scoring candidate. When every candidate is one token (the tasks' default)
one forward pass per prompt scores all of them; otherwise each (prompt, candidate) pair is a
sequence. Sequences are right-padded: with causal attention the padding never changes the
positions that are read.
"""

from __future__ import annotations

import pandas as pd
import torch

from icl_circuits.llm.tasks import Prompt, answer_tokens

PROMPT_COLUMNS = ["split", "index", "answer", "predicted", "correct", "memory_hit", "logprob_answer", "n_candidates"]


def _encode(tokenizer, p: Prompt) -> tuple[list[int], list[list[int]]]:
    ids = tokenizer(p.text, add_special_tokens=False)["input_ids"]
    return ids, [answer_tokens(tokenizer, p.text, c) for c in p.candidates]


@torch.no_grad()
def _logprobs(model, seqs: list[list[int]], reads: list[list[tuple[int, int]]], batch_size: int) -> list[float]:
    """Sum of ``log p(token | prefix)`` over ``reads[i] = [(position, token), ...]`` of each sequence."""
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i : i + batch_size]
        width = max(map(len, chunk))
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, s in enumerate(chunk):
            tokens[j, : len(s)] = torch.tensor(s)
        logits = model(tokens)  # [batch, pos, d_vocab]
        for j, rd in enumerate(reads[i : i + batch_size]):
            pos = torch.tensor([p for p, _ in rd])
            tok = torch.tensor([t for _, t in rd])
            out.append(logits[j, pos].float().log_softmax(-1)[torch.arange(len(rd)), tok].sum().item())
    return out


def candidate_logprobs(model, tokenizer, prompts: list[Prompt], batch_size: int = 16) -> list[list[float]]:
    """``[prompt][candidate]`` log-probabilities of each candidate's tokens after its prompt."""
    encoded = [_encode(tokenizer, p) for p in prompts]
    if all(len(t) == 1 for _, cands in encoded for t in cands):
        seqs = [ids for ids, _ in encoded]
        # One sequence per prompt: read every candidate at the last position.
        scores: list[list[float]] = []
        for i in range(0, len(seqs), batch_size):
            chunk = encoded[i : i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            tokens = torch.zeros(len(chunk), width, dtype=torch.long)
            for j, (ids, _) in enumerate(chunk):
                tokens[j, : len(ids)] = torch.tensor(ids)
            with torch.no_grad():
                logits = model(tokens)
            for j, (ids, cands) in enumerate(chunk):
                lp = logits[j, len(ids) - 1].float().log_softmax(-1)
                scores.append([lp[c[0]].item() for c in cands])
        return scores
    seqs, reads, owner = [], [], []
    for k, (ids, cands) in enumerate(encoded):
        for c in cands:
            seqs.append(ids + c)
            reads.append([(len(ids) - 1 + m, t) for m, t in enumerate(c)])
            owner.append(k)
    flat = _logprobs(model, seqs, reads, batch_size)
    scores = [[] for _ in prompts]
    for k, v in zip(owner, flat, strict=True):
        scores[k].append(v)
    return scores


def score_prompts(model, tokenizer, prompts: list[Prompt], batch_size: int = 16) -> pd.DataFrame:
    """One row per prompt: the predicted candidate, whether it is the answer (or the memory)."""
    rows = []
    for i, (p, lp) in enumerate(zip(prompts, candidate_logprobs(model, tokenizer, prompts, batch_size), strict=True)):
        pred = p.candidates[max(range(len(lp)), key=lp.__getitem__)]
        rows.append(
            {
                "split": p.split,
                "index": i,
                "answer": p.answer,
                "predicted": pred,
                "correct": pred == p.answer,
                "memory_hit": p.memory is not None and pred == p.memory,
                "logprob_answer": lp[p.candidates.index(p.answer)],
                "n_candidates": len(p.candidates),
            }
        )
    return pd.DataFrame(rows, columns=PROMPT_COLUMNS)


def split_metrics(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Tidy ``split, metric, value``: ``acc``, ``chance``, ``logprob`` and (conflict) ``acc_memory``."""
    rows = []
    for split, sub in per_prompt.groupby("split", sort=False):
        rows += [
            {"split": split, "metric": "acc", "value": float(sub.correct.mean())},
            {"split": split, "metric": "chance", "value": float((1.0 / sub.n_candidates).mean())},
            {"split": split, "metric": "logprob", "value": float(sub.logprob_answer.mean())},
        ]
        if "conflict" in str(split):
            rows.append({"split": split, "metric": "acc_memory", "value": float(sub.memory_hit.mean())})
    return pd.DataFrame(rows, columns=["split", "metric", "value"])


def keep_known(model, tokenizer, prompts: list[Prompt]) -> list[Prompt]:
    """The prompts the model answers correctly (to keep only what a base model knows)."""
    table = score_prompts(model, tokenizer, prompts)
    return [p for p, ok in zip(prompts, table.correct, strict=True) if ok]
