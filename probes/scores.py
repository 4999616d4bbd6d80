"""Per-head scores from attention patterns, the OV circuit and the logits.

Every function is pure: it takes a model (a TransformerBridge in eval mode) and a batch and
returns a tidy DataFrame with columns ``metric, layer, head_index, value`` (averaged over the batch).

Metrics:
    ``task_induction`` (Reddy 2023): attention mass from the query onto the label tokens
        that follow exemplars of the query's class.
    ``induction_strength`` (Singh et al. 2024): that mass minus the mass onto the other label
        tokens (those following exemplars of other classes).
    ``prev_token``: each label token's attention to its own exemplar (the token before it).
    ``prev_token_corrected`` (Singh et al. 2024): attention from token i to i-1 minus the
        uniform baseline ``(1 - a) / (i + 1)``, over every position i >= 1.
    ``prefix_matching`` (Olsson et al. 2022): on repeated random sequences, TransformerLens's
        "mul" similarity to its induction detection pattern (``D[i, j] = 1`` iff
        ``tok[j - 1] == tok[i]``), i.e. ``sum(A * D) / sum(A)`` averaged over sequences.
    ``copying`` (Olsson et al. 2022): ``sum(Re eig) / sum(|eig|)`` of the head's full OV
        circuit on labels, ``W_E_label W_V W_O W_U`` (linear readouts only; NaN otherwise).
    ``dla``: direct logit attribution of each head at the query to the target label, minus
        its mean over labels; through the final LayerNorm scale of the cache for a linear
        readout, and as gradient x activation at the readout's input for an MLP readout.

Packed layout (one token per context item, :mod:`icl_circuits.data.batch`): the label sits
in its exemplar's token, so ``task_induction`` is the one-layer induction-like score (the
query's attention mass on the items holding its class) and ``induction_strength`` that mass
minus the mass on the other items; ``copying`` and ``dla`` are unchanged. There is no label
token after an exemplar, so ``prev_token``, ``prev_token_corrected`` and ``prefix_matching``
are undefined there (:func:`undefined_scores` gives the reason; they are skipped).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.models.build import query_readout

COLUMNS = ["metric", "layer", "head_index", "value"]


def _tidy(metric: str, values: Tensor) -> list[dict]:
    """Rows for a ``[n_layers, n_heads]`` tensor."""
    return [
        {"metric": metric, "layer": layer, "head_index": head, "value": float(values[layer, head])}
        for layer in range(values.shape[0])
        for head in range(values.shape[1])
    ]


def _patterns(model, tokens: Tensor) -> Tensor:
    """``[n_layers, batch, head_index, query_pos, key_pos]`` attention patterns."""
    with torch.no_grad(), query_readout(model):  # no logits are read
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)])


#: Scores with no meaning in the packed layout (no label token follows an exemplar).
PACKED_UNDEFINED = {
    "prev_token": "packed layout: no label token follows its exemplar",
    "prev_token_corrected": "packed layout: no label token follows its exemplar",
    "prefix_matching": "packed layout: an item is one token, no (exemplar, label) pair of tokens to repeat",
}


def induction_masks(batch: Batch) -> tuple[Tensor, Tensor]:
    """``[batch, pos]`` masks of the tokens holding the labels of matching / non-matching items.

    Interleaved: the label tokens after exemplars of the query's class / of other classes.
    Packed: the context items of the query's class / of other classes.
    """
    match = batch.query_in_context()  # [batch, n_pairs]
    label_pos = torch.zeros(len(batch), batch.seq_len, dtype=torch.bool, device=batch.device)
    correct = torch.zeros_like(label_pos)
    items = slice(0, batch.n_pairs) if batch.packed else slice(1, None, 2)
    label_pos[:, items] = True
    correct[:, items] = match
    return correct, label_pos & ~correct


def pattern_scores(patterns: Tensor, batch: Batch) -> pd.DataFrame:
    """Task induction, induction strength and previous-token scores from patterns.

    Args:
        patterns: ``[n_layers, batch, head_index, query_pos, key_pos]``.
        batch: the batch the patterns were computed on.
    """
    q = batch.query_pos
    correct, wrong = induction_masks(batch)
    has_match = correct.any(1)
    from_query = patterns[:, :, :, q, :]  # [layer, batch, head, key_pos]
    on_correct = (from_query * correct[None, :, None, :]).sum(-1)
    on_wrong = (from_query * wrong[None, :, None, :]).sum(-1)
    keep = has_match[None, :, None].float()
    denom = keep.sum(1).clamp(min=1)
    task_induction = (on_correct * keep).sum(1) / denom
    strength = ((on_correct - on_wrong) * keep).sum(1) / denom

    rows = _tidy("task_induction", task_induction) + _tidy("induction_strength", strength)
    if not batch.packed:
        n = patterns.shape[-1]
        idx = torch.arange(1, n, device=patterns.device)
        prev = patterns[..., idx, idx - 1]  # [layer, batch, head, n - 1]: attention i -> i - 1
        prev_token = prev[..., 0::2].mean((1, 3))  # label tokens sit at odd positions 1, 3, ...
        corrected = (prev - (1 - prev) / (idx + 1).float()).mean((1, 3))
        rows += _tidy("prev_token", prev_token) + _tidy("prev_token_corrected", corrected)
    return pd.DataFrame(rows, columns=COLUMNS)


def attention_scores(model, batch: Batch) -> pd.DataFrame:
    """Pattern-based scores of every head on ``batch`` (use an ICL split: query in context)."""
    return pattern_scores(_patterns(model, batch.tokens()), batch)


def repeated_sequence(batch: Batch, n_ctx: int | None = None) -> tuple[Tensor, Tensor]:
    """Repeated random sequences built from ``batch``'s context pairs, for Olsson-style scores.

    The first ``T`` (exemplar, label) pairs of each sequence are followed by the same pairs
    again, so every token in the second half has an exact earlier copy.

    Returns:
        ``(tokens [batch, 4T] int32, token_ids [batch, 4T])``: model input and the identity of
        each token (equal ids mark exact repeats) for the detection patterns.
    """
    if batch.packed:
        raise ValueError(f"repeated_sequence: {PACKED_UNDEFINED['prefix_matching']}")
    n_ctx = n_ctx or batch.seq_len
    T = min(batch.n_pairs, n_ctx // 4)
    if T < 1:
        raise ValueError(f"repeated_sequence: {undefined_scores(batch.n_pairs, n_ctx)['prefix_matching']}")
    half = batch[:]
    tok = half.tokens()[:, : 2 * T]
    ids = torch.arange(2 * T, device=batch.device).expand(len(batch), -1)
    # Two label tokens with the same label are the same token.
    label_ids = 2 * T + batch.context_labels[:, :T]
    ids = ids.clone()
    ids[:, 1::2] = label_ids
    return torch.cat([tok, tok], 1), torch.cat([ids, ids], 1)


def undefined_scores(n_pairs: int, n_ctx: int, layout: str = "interleaved") -> dict[str, str]:
    """Scores that cannot be defined for a layout, each with the reason (empty if none).

    ``prefix_matching`` repeats at least one (exemplar, label) pair, so it needs 4 tokens of
    context and one context pair; Chan et al. 2024's layout (one pair, 3 tokens) has neither.
    The packed layout has no label tokens: :data:`PACKED_UNDEFINED`.
    """
    if layout == "packed":
        return dict(PACKED_UNDEFINED)
    if min(n_pairs, n_ctx // 4) < 1:
        return {
            "prefix_matching": f"needs a pair repeated (4 tokens); the context holds {n_ctx} tokens, {n_pairs} pair(s)"
        }
    return {}


def induction_detection_pattern(token_ids: Tensor) -> Tensor:
    """``[batch, pos, pos]``: 1 where ``1 <= j <= i`` and ``tok[j - 1] == tok[i]``, like TL's."""
    same = token_ids[:, :, None] == token_ids[:, None, :]  # [batch, i, j]: tok_i == tok_j
    eye = torch.eye(token_ids.shape[1], dtype=torch.bool, device=token_ids.device)
    dup = same & ~eye
    shifted = torch.zeros_like(dup)
    shifted[:, :, 1:] = dup[:, :, :-1]  # D[i, j] = dup[i, j - 1]
    return torch.tril(shifted.float())


def prefix_matching(patterns: Tensor, token_ids: Tensor) -> Tensor:
    """``[n_layers, head_index]`` mean over sequences of ``sum(A * D) / sum(A)``."""
    det = induction_detection_pattern(token_ids)[None, :, None]  # [1, batch, 1, q, k]
    per_seq = (patterns * det).sum((-1, -2)) / patterns.sum((-1, -2))
    return per_seq.mean(1)


def copying_scores(model) -> Tensor:
    """``[n_layers, head_index]`` positive-eigenvalue share of each head's label OV circuit."""
    if not isinstance(getattr(model.unembed, "original_component", None), torch.nn.Linear):
        return torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    with torch.no_grad():
        # The full circuit W_E W_V W_O W_U ([label, label]) has rank <= d_head, and its nonzero
        # eigenvalues are those of W_O W_U W_E W_V ([d_head, d_head]): the same score, computed
        # on a d_head matrix rather than one per label (1603 labels for Omniglot).
        small = model.W_O @ model.W_U @ model.W_E @ model.W_V  # [layer, head, d_head, d_head]
        eig = torch.linalg.eigvals(small.double())
    return (eig.real.sum(-1) / eig.abs().sum(-1).clamp(min=1e-12)).float()


def token_sequence_scores(model, batch: Batch) -> pd.DataFrame:
    """Prefix-matching and copying scores (Olsson et al. 2022) of every head."""
    skipped = undefined_scores(batch.n_pairs, model.cfg.n_ctx, batch.layout)
    rows = []
    if "prefix_matching" not in skipped:
        tokens, ids = repeated_sequence(batch, model.cfg.n_ctx)
        rows += _tidy("prefix_matching", prefix_matching(_patterns(model, tokens), ids))
    rows += _tidy("copying", copying_scores(model))
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs["skipped"] = skipped
    return out


def direct_logit_attribution(model, batch: Batch, cache=None) -> pd.DataFrame:
    """Each head's direct contribution at the query to ``target logit - mean logit``.

    A head's output is taken through the final LayerNorm as TransformerLens does
    (``apply_ln_to_stack``: centred, divided by the cached scale, times the norm's weight),
    then dotted with the gradient of ``target - mean`` logit w.r.t. the readout's input.
    For a linear readout that gradient is the constant ``W_U`` direction, so this is the
    usual DLA; for an MLP readout it is the local linearisation (gradient x activation).
    ``cache``: the full activation cache of ``batch`` if already computed (one forward less).
    """
    n_labels = model.cfg.d_vocab_out
    direction = torch.nn.functional.one_hot(batch.target, n_labels).float() - 1.0 / n_labels
    with torch.no_grad():
        if cache is None:
            _, cache = model.run_with_cache(batch.tokens())
        stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [layer*head, batch, d_model]
        if model.cfg.normalization_type is not None:
            stack = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
            weight = getattr(model.ln_final.original_component, "weight", None)
            if weight is not None:
                stack = stack * weight
        x = cache["ln_final.hook_out"][:, -1]
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (model.unembed.original_component(x) * direction).sum().backward()
    dla = (stack * x.grad[None]).sum(-1).mean(-1)  # [layer*head]
    values = dla.view(model.cfg.n_layers, model.cfg.n_heads)
    return pd.DataFrame(_tidy("dla", values), columns=COLUMNS)


def head_scores(model, icl_batch: Batch) -> pd.DataFrame:
    """Every per-head score on an ICL batch: patterns, token-sequence scores and DLA.

    The pattern scores and DLA share one forward pass of the batch (one full cache, the final
    norm and readout at the query only: :func:`icl_circuits.models.build.query_readout`).
    """
    tokens = token_sequence_scores(model, icl_batch)
    with torch.no_grad(), query_readout(model):
        _, cache = model.run_with_cache(icl_batch.tokens())
    patterns = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)])
    out = pd.concat(
        [pattern_scores(patterns, icl_batch), tokens, direct_logit_attribution(model, icl_batch, cache)],
        ignore_index=True,
    )
    out.attrs["skipped"] = dict(tokens.attrs["skipped"])  # {metric: why it is undefined here}
    return out
