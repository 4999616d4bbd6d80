"""Interventions on attention patterns: pattern-preserving ablation and clamped patterns.

Both edit ``blocks.{l}.attn.hook_pattern`` (``[batch, head_index, query_pos, key_pos]``):
the native attention applies that hook before multiplying by the values, so an edited
pattern really re-weights the head's output (edits to ``hook_attn_scores`` are dropped by
the bridge and would do nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.models.build import require_interleaved
from icl_circuits.training.interventions import induction_query_row, previous_token_pattern
from probes.ablation import Head, HookFn, ablate_heads, as_tokens, check_heads

__all__ = ["clamp_pattern", "induction_query_row", "pattern_name", "preserve_patterns", "previous_token_pattern"]


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def _check_batch(pattern: Tensor, expected: int, what: str) -> None:
    if pattern.shape[0] != expected:
        raise ValueError(
            f"{what}: the pattern was prepared for {expected} sequences but the model ran on "
            f"{pattern.shape[0]}; run the model on the same tokens inside the context"
        )


@contextlib.contextmanager
def preserve_patterns(
    model,
    tokens: Batch | Tensor,
    heads: Iterable[Head] | Head,
    method: str = "zero",
    reference: Batch | Tensor | None = None,
    seed: int = 0,
) -> Iterator:
    """Pattern-preserving ablation (Singh et al. 2024): ablate heads, freeze later patterns.

    On entry the clean attention patterns of every layer after the earliest ablated head's
    layer are recorded on ``tokens`` (one ``run_with_cache`` with a ``names_filter``, under
    the hooks active at that moment). Inside the context ``heads`` are ablated through
    ``hook_z`` (see :func:`probes.ablation.ablate_heads`) and those later layers' patterns
    are overwritten with the recorded ones, for all their heads. The ablation then acts only
    through what later heads read (values, and the residual stream), never through where
    they look. Layers up to and including the earliest ablated layer are left alone: their
    patterns cannot depend on the ablated heads anyway.

    Args:
        model: a TransformerBridge in eval mode.
        tokens: the Batch or int32 tokens the model must be run on inside the context.
        heads: ``(layer, head)`` pairs to ablate.
        method, reference, seed: as in :func:`probes.ablation.ablate_heads`.

    Yields:
        The model.

    Raises:
        ValueError: bad heads / method; or, on a forward pass, a batch of another size.
    """
    heads = check_heads(model, heads)
    toks = as_tokens(tokens)
    first = min(layer for layer, _ in heads)
    names = [pattern_name(layer) for layer in range(first + 1, model.cfg.n_layers)]
    clean: dict[str, Tensor] = {}
    if names:
        with torch.no_grad():
            _, cache = model.run_with_cache(toks, names_filter=names)
        clean = {n: cache[n].detach() for n in names}

    def make(name: str) -> HookFn:
        def freeze(pattern: Tensor, hook) -> Tensor:
            _check_batch(pattern, clean[name].shape[0], "preserve_patterns")
            return clean[name].to(pattern.dtype)

        return freeze

    with ablate_heads(model, heads, method, reference, seed), model.hooks(fwd_hooks=[(n, make(n)) for n in names]):
        yield model


@contextlib.contextmanager
def clamp_pattern(
    model,
    layer: int,
    head: int,
    kind: Literal["induction", "previous_token"],
    batch: Batch | None = None,
) -> Iterator:
    """Clamp one head's attention to a perfect pattern in every forward pass inside the context.

    ``previous_token``: every row ``i`` attends to ``i - 1`` (row 0 to itself); any batch.
    ``induction``: only the query (last) row changes, to a uniform pattern over the label
    tokens that follow context exemplars of the query's class (from
    ``batch.query_in_context()``). Sequences without such an exemplar keep their own query
    row, and every other row of the induction clamp is the model's own: the task only reads
    the query, and a "perfect" induction pattern is not defined at earlier positions.

    Args:
        model: a TransformerBridge in eval mode.
        layer, head: the head to clamp.
        kind: ``induction`` or ``previous_token``.
        batch: the batch the model will run on (required for ``induction``).

    Yields:
        The model.
    """
    check_heads(model, [(layer, head)])
    if kind not in ("induction", "previous_token"):
        raise ValueError(f"kind: expected 'induction' or 'previous_token', got {kind!r}")
    if kind == "previous_token":
        require_interleaved(
            model, "clamp_pattern(kind='previous_token')", "a packed item has no previous token to read"
        )
    if kind == "induction" and batch is None:
        raise ValueError("kind='induction' needs the batch the model runs on (batch=...)")

    def clamp(pattern: Tensor, hook) -> Tensor:
        # pattern: [batch, head_index, query_pos, key_pos]
        pattern = pattern.clone()
        n_pos = pattern.shape[-1]
        if kind == "previous_token":
            pattern[:, head] = previous_token_pattern(n_pos, pattern.device).to(pattern.dtype)
            return pattern
        _check_batch(pattern, len(batch), "clamp_pattern")
        row, has_match = (t.to(pattern.device) for t in induction_query_row(batch))
        q_row = pattern[:, head, n_pos - 1]
        pattern[:, head, n_pos - 1] = torch.where(has_match[:, None], row.to(pattern), q_row)
        return pattern

    with model.hooks(fwd_hooks=[(pattern_name(layer), clamp)]):
        yield model
