"""Ablating induction heads of a token model: the top-k against k random heads.

Heads are removed at ``blocks.{l}.attn.hook_z`` (``[batch, pos, head_index, d_head]``, the
attention-weighted values right before ``W_O``; the TransformerLens 4 bridge has no per-head
result hook), which removes exactly the head's ``z @ W_O`` contribution. ``zero`` sets the
slice to 0; ``mean`` replaces it by its mean over a reference batch at each position (for
inputs of another length, e.g. task prompts, by its mean over the reference's positions after
the first).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor

from icl_circuits.llm import heads as H

METHODS = ("zero", "mean")
Head = tuple[int, int]


@contextlib.contextmanager
def ablate(model, heads: Sequence[Head], method: str = "zero", reference: Tensor | None = None) -> Iterator[object]:
    """Within the block, ``heads`` ``(layer, head_index)`` are ablated; hooks always removed on exit.

    Args:
        model: a TransformerBridge.
        heads: heads to remove.
        method: ``zero`` or ``mean`` (mean over ``reference [batch, pos]`` per position).
        reference: tokens for the mean.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if method == "mean" and reference is None:
        raise ValueError("method='mean' needs reference tokens")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    names = [f"blocks.{layer}.attn.hook_z" for layer in by_layer]
    means: dict[str, Tensor] = {}
    if method == "mean" and names:
        with torch.no_grad():
            _, cache = model.run_with_cache(reference, names_filter=names)
        means = {n: cache[n].mean(0, keepdim=True) for n in names}  # [1, pos, head_index, d_head]

    def hook_for(layer: int):
        idx = torch.tensor(by_layer[layer])
        name = f"blocks.{layer}.attn.hook_z"

        def hook(z: Tensor, hook=None) -> Tensor:
            z = z.clone()
            if method == "zero":
                z[:, :, idx] = 0.0
            else:
                ref = means[name]
                if ref.shape[1] != z.shape[1]:  # other inputs (task prompts): mean over positions too
                    ref = ref[:, 1:].mean(1, keepdim=True).expand(-1, z.shape[1], -1, -1)
                z[:, :, idx] = ref[:, :, idx].expand(z.shape[0], -1, -1, -1)
            return z

        return hook

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook_for(layer)) for layer in by_layer]):
        yield model


def random_heads(shape: tuple[int, int], k: int, seed: int, exclude: Sequence[Head] = ()) -> list[Head]:
    """``k`` distinct random heads of a ``(n_layers, n_heads)`` model, none in ``exclude``."""
    pool = [(layer, h) for layer in range(shape[0]) for h in range(shape[1]) if (layer, h) not in set(exclude)]
    return sorted(random.Random(seed).sample(pool, k))


def induction_ablation(
    model,
    tokens: Tensor,
    half: int,
    top: Sequence[Head],
    n_random: int = 3,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    extra=None,
) -> pd.DataFrame:
    """The repeated-half loss with the top-k induction heads ablated, against k random heads.

    Args:
        model: a TransformerBridge in eval mode.
        tokens: ``[batch, pos]`` repeated random sequences (also the mean reference).
        half: their half length.
        top: the heads to ablate (e.g. :func:`heads.top_heads`).
        n_random: draws of ``len(top)`` random heads (never among ``top``).
        methods: ablation methods.
        seed: first random draw's seed.
        extra: optional ``extra(model) -> list[{"split", "metric", "value"}]`` measured under
            each ablation too (e.g. task accuracies).

    Returns:
        Tidy ``method, condition, draw, heads, split, metric, value``; ``condition`` is
        ``clean``, ``top`` or ``random``.
    """
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    rows: list[dict] = []

    def measure(method: str, condition: str, draw: int, heads: Sequence[Head]) -> None:
        found = [{"split": "repeat", "metric": m, "value": v} for m, v in H.repeat_loss(model, tokens, half).items()]
        found += extra(model) if extra else []
        label = " ".join(f"L{layer}H{h}" for layer, h in heads)
        rows.extend({"method": method, "condition": condition, "draw": draw, "heads": label, **r} for r in found)

    measure("none", "clean", 0, [])
    for method in methods:
        with ablate(model, top, method, tokens):
            measure(method, "top", 0, top)
        for d in range(n_random):
            rand = random_heads(shape, len(top), seed + d, exclude=top)
            with ablate(model, rand, method, tokens):
                measure(method, "random", d, rand)
    return pd.DataFrame(rows, columns=["method", "condition", "draw", "heads", "split", "metric", "value"])


def ablation_summary(table: pd.DataFrame, metric: str = "loss_repeat_half", split: str = "repeat") -> pd.DataFrame:
    """Per method: clean value, top-k ablated, mean of the random draws, and both increases.

    (A ratio of the increases is not reported: a random draw can lower the loss.)
    """
    sub = table[(table.metric == metric) & (table.split == split)]
    clean = float(sub[sub.condition == "clean"].value.iloc[0])
    rows = []
    for method, m in sub[sub.condition != "clean"].groupby("method"):
        top = float(m[m.condition == "top"].value.mean())
        rand = float(m[m.condition == "random"].value.mean())
        rows.append(
            {
                "method": method,
                "clean": clean,
                "top": top,
                "random": rand,
                "top_increase": top - clean,
                "random_increase": rand - clean,
            }
        )
    return pd.DataFrame(rows)
