"""Head scores on token models: induction, previous-token and duplicate-token heads.

Measured on repeated random-token sequences ``[BOS] t_1 … t_T t_1 … t_T`` (positions
``0 … 2T``; each half has no repeated token). For a query at position ``p`` of the second
half (``p = T + k``, ``k = 1 … T``):

* ``induction``: attention from ``p`` to ``p - T + 1``, the token after the earlier copy of
  the current token (Olsson et al. 2022), averaged over the second half;
* ``duplicate_token``: attention from ``p`` to ``p - T``, the earlier copy itself;
* ``prev_token``: attention from ``p`` to ``p - 1``, over every position ``p >= 2``.

:func:`detector_scores` computes TransformerLens's ``head_detector.detect_head`` metric
(``"mul"``: attention mass on the detection pattern divided by the total mass, over every
query position) from token ids in one batched pass; the tests check it against
``detect_head``. The repeated half's in-context loss drop (Olsson et al.'s "in-context
learning score") is :func:`repeat_loss`.

Every function is pure and returns a tidy table; per-head tables have columns
``metric, layer, head_index, value``.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

HEAD_COLUMNS = ["metric", "layer", "head_index", "value"]
SCORES = ("induction", "duplicate_token", "prev_token")


def repeated_tokens(
    vocab_size: int, n_seq: int, half: int, seed: int = 0, bos: int | None = None, low: int = 0
) -> Tensor:
    """``[batch, pos]`` sequences ``[BOS] r r`` of a random half ``r`` of ``half`` distinct ids.

    Args:
        vocab_size: ids are drawn from ``[low, vocab_size)``.
        n_seq: number of sequences.
        half: length ``T`` of each half.
        seed: generator seed (same seed, same tokens).
        bos: token id prepended at position 0 (None: no BOS, positions shift by one).
        low: smallest id drawn (to skip special tokens).
    """
    if vocab_size - low < half:
        raise ValueError(f"repeated_tokens: need at least {half} ids in [{low}, {vocab_size}), got {vocab_size - low}")
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(vocab_size - low, generator=gen)[:half] + low for _ in range(n_seq)]
    r = torch.stack(rows)
    parts = [r, r] if bos is None else [torch.full((n_seq, 1), bos), r, r]
    return torch.cat(parts, dim=1).long()


def _offset(tokens: Tensor, half: int) -> int:
    """Position of ``t_1`` (1 with a BOS, 0 without)."""
    return tokens.shape[1] - 2 * half


@torch.no_grad()
def patterns(model, tokens: Tensor) -> Tensor:
    """``[n_layers, batch, head_index, query_pos, key_pos]`` attention patterns."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)])


def _tidy(metric: str, values: Tensor) -> list[dict]:
    return [
        {"metric": metric, "layer": layer, "head_index": head, "value": float(values[layer, head])}
        for layer in range(values.shape[0])
        for head in range(values.shape[1])
    ]


def scores_from_patterns(pat: Tensor, half: int) -> pd.DataFrame:
    """Induction, duplicate-token and previous-token scores of ``pat`` (see :func:`patterns`)."""
    off = pat.shape[-1] - 2 * half
    q = torch.arange(off + half, off + 2 * half)  # second-half query positions
    induction = pat[..., q, q - half + 1].mean(dim=(1, -1))  # [n_layers, head_index]
    duplicate = pat[..., q, q - half].mean(dim=(1, -1))
    p = torch.arange(max(off, 1) + 1, pat.shape[-1])
    prev = pat[..., p, p - 1].mean(dim=(1, -1))
    rows = _tidy("induction", induction) + _tidy("duplicate_token", duplicate) + _tidy("prev_token", prev)
    return pd.DataFrame(rows, columns=HEAD_COLUMNS)


def head_scores(model, tokens: Tensor, half: int, chunk: int = 8) -> pd.DataFrame:
    """Per-head scores on repeated sequences ``tokens [batch, pos]`` (see module docstring)."""
    tables = [scores_from_patterns(patterns(model, tokens[i : i + chunk]), half) for i in range(0, len(tokens), chunk)]
    weights = [len(tokens[i : i + chunk]) for i in range(0, len(tokens), chunk)]
    out = tables[0].copy()
    out["value"] = sum(t["value"] * w for t, w in zip(tables, weights, strict=True)) / sum(weights)
    return out


def detection_patterns(tokens: Tensor) -> dict[str, Tensor]:
    """``detect_head``'s detection patterns for each row of ``tokens``: ``[batch, query_pos, key_pos]``."""
    same = tokens[:, :, None] == tokens[:, None, :]
    n = tokens.shape[1]
    eye = torch.eye(n, dtype=torch.bool)
    duplicate = torch.tril(same & ~eye)
    induction = torch.zeros_like(duplicate)
    induction[:, :, 1:] = duplicate[:, :, :-1]
    induction = torch.tril(induction)
    prev = torch.zeros(n, n, dtype=torch.bool)
    prev[1:, :-1] = torch.eye(n - 1, dtype=torch.bool)
    return {
        "previous_token_head": prev.expand_as(duplicate),
        "duplicate_token_head": duplicate,
        "induction_head": induction,
    }


@torch.no_grad()
def detector_scores(model, tokens: Tensor) -> pd.DataFrame:
    """TransformerLens ``detect_head`` scores (``"mul"``, no exclusions), averaged over ``tokens``.

    Returns:
        Tidy table, ``metric`` one of ``previous_token_head``, ``duplicate_token_head``,
        ``induction_head`` (detect_head's names).
    """
    pat = patterns(model, tokens)  # [n_layers, batch, head_index, query_pos, key_pos]
    rows = []
    for name, det in detection_patterns(tokens.cpu()).items():
        hit = (pat * det[None, :, None].to(pat.dtype)).sum(dim=(-1, -2))
        total = pat.sum(dim=(-1, -2))
        rows += _tidy(name, (hit / total).mean(dim=1))
    return pd.DataFrame(rows, columns=HEAD_COLUMNS)


@torch.no_grad()
def token_losses(model, tokens: Tensor) -> Tensor:
    """``[batch, pos - 1]`` next-token losses (position ``p`` predicting token ``p + 1``)."""
    logits = model(tokens)
    return F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:], reduction="none")


def repeat_loss(model, tokens: Tensor, half: int) -> dict[str, float]:
    """Mean loss on the first (random) half, the repeated half, and the in-context drop.

    The first token of each half is unpredictable and left out; ``drop = first - repeat``.
    """
    off = _offset(tokens, half)
    losses = token_losses(model, tokens)  # index j predicts token j + 1
    first = losses[:, off : off + half - 1].mean().item()
    repeat = losses[:, off + half : off + 2 * half - 1].mean().item()
    return {"loss_first_half": first, "loss_repeat_half": repeat, "in_context_drop": first - repeat}


def top_heads(scores: pd.DataFrame, metric: str = "induction", k: int = 5) -> list[tuple[int, int]]:
    """The ``k`` heads with the highest ``metric``, best first, as ``(layer, head_index)``."""
    sub = scores[scores.metric == metric].sort_values("value", ascending=False).head(k)
    return [(int(r.layer), int(r.head_index)) for r in sub.itertuples()]
