"""Evaluation of query predictions: accuracy split into in-context and out-of-context parts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.data.source import DataSource
from icl_circuits.models.build import query_logits

METRICS = ("loss", "acc", "acc_in_context", "acc_out_context", "p_context")


def query_metrics(logits: Tensor, batch: Batch, n_labels: int) -> dict[str, float]:
    """Metrics of query ``logits [batch, n_labels]`` against ``batch``.

    Returns:
        ``loss`` (cross-entropy), ``acc``; ``acc_in_context``: argmax restricted to labels
        present in the context is the target; ``acc_out_context``: argmax restricted to
        labels absent from the context is the target; ``p_context``: probability mass on
        labels present in the context.
    """
    logits = logits.float()
    target = batch.target
    present = batch.labels_in_context(n_labels)
    neg = torch.finfo(logits.dtype).min

    def restricted_acc(mask: Tensor) -> float:
        pred = logits.masked_fill(~mask, neg).argmax(-1)
        ok = (pred == target) & mask.gather(1, target[:, None])[:, 0]
        return ok.float().mean().item()

    probs = logits.softmax(-1)
    return {
        "loss": F.cross_entropy(logits, target).item(),
        "acc": (logits.argmax(-1) == target).float().mean().item(),
        "acc_in_context": restricted_acc(present),
        "acc_out_context": restricted_acc(~present),
        "p_context": (probs * present).sum(-1).mean().item(),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_sets: dict[str, Batch], n_labels: int, chunk: int = 4096) -> list[dict]:
    """Tidy rows ``{"split", "metric", "value"}`` for every split in ``eval_sets``."""
    rows = []
    was_training = model.training
    model.eval()
    try:
        for split, batch in eval_sets.items():
            logits = torch.cat(
                [query_logits(model, batch[i : i + chunk].tokens()) for i in range(0, len(batch), chunk)]
            )
            for metric, value in query_metrics(logits, batch, n_labels).items():
                rows.append({"split": split, "metric": metric, "value": value})
    finally:
        model.train(was_training)
    return rows


@torch.no_grad()
def evaluate_stacked(
    logits_of: Callable[[Tensor], Tensor], evals: Sequence[dict[str, Batch]], n_labels: int, chunk: int = 4096
) -> list[list[dict]]:
    """:func:`evaluate` of S models in one forward per split (and chunk): each member's rows.

    Args:
        logits_of: tokens ``[S, batch, ...]`` (member ``s``'s sequences at ``[s]``) to query
            logits ``[S, batch, n_labels]``, e.g. a vectorised ensemble's forward.
        evals: each member's evaluation sets (:func:`eval_sets`): the same splits, in the same
            order, of the same sizes; the sequences themselves differ (each member's own data).
        chunk: sequences per forward in all, so ``S x`` a member's share stays within it.

    Returns:
        One list of tidy rows per member, as ``evaluate`` makes them for that member alone
        (same splits, metrics and order; values equal up to the forward's rounding).
    """
    first = evals[0]
    for ev in evals[1:]:
        if list(ev) != list(first) or any(len(ev[k]) != len(first[k]) for k in first):
            raise ValueError("evaluate_stacked: every member needs the same splits of the same sizes")
    per = max(1, chunk // len(evals))
    rows: list[list[dict]] = [[] for _ in evals]
    for split in first:
        batches = [ev[split] for ev in evals]
        logits = torch.cat(
            [
                logits_of(torch.stack([b[i : i + per].tokens() for b in batches]))
                for i in range(0, len(batches[0]), per)
            ],
            dim=1,
        )
        for member, (out, batch) in enumerate(zip(logits, batches, strict=True)):
            for metric, value in query_metrics(out, batch, n_labels).items():
                rows[member].append({"split": split, "metric": metric, "value": value})
    return rows


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, source: DataSource, split: str, n: int = 512) -> dict[str, float]:
    """Metrics of ``model`` (native or bridge; hooks in place apply) on ``n`` sequences of ``split``.

    The sequences are the split's fixed evaluation set (the same as training's, given ``n``).

    Returns:
        ``{"loss", "acc", "acc_in_context", "acc_out_context", "p_context"}`` (see :func:`query_metrics`).
    """
    source.check_split(split)
    batch = source.eval_batch(split, n)
    return query_metrics(query_logits(model, batch.tokens()), batch, source.n_labels)


def eval_sets(source: DataSource, n: int) -> dict[str, Batch]:
    """The fixed evaluation batches of every split of ``source``."""
    return {split: source.eval_batch(split, n) for split in source.splits}
