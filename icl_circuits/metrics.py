"""Evaluation of query predictions: accuracy split into in-context and out-of-context parts."""

from __future__ import annotations

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
