"""The two paths of Nguyen & Reddy's one-layer model, ablated one at a time and together.

The model's readout is ``MLP(x_q + sa_q)``: the query's own (normalised) token ``x_q`` and
the attention head's output at the query ``sa_q``. The paper's two sub-circuits are:

* the **generalising path**: the head, which copies the label of the context item that
  matches the query (``sa_q``);
* the **memorising path**: the MLP's response to the query's own item (``x_q``).

Each is removed by mean ablation over a reference batch, at the query only:

* ``no_attention``: ``sa_q`` replaced by its mean (the head's ``hook_z``, through
  :func:`probes.ablation.ablate_heads`; with no output projection ``hook_z`` is ``sa``);
* ``no_memory``: ``x_q`` replaced by its mean on its way into the MLP (the residual stream
  after the block at the query, ``x_q + sa_q``, becomes ``mean(x_q) + sa_q``), the
  attention output kept; the head still reads the real ``x_q`` as its query;
* ``neither``: both;
* ``no_memory_self``: ``no_memory``, and the head's value at the query's own position
  replaced by its mean: the causal head attends from the query to itself, so ``sa_q`` also
  carries the query's item (the pattern is kept).

With the margin ``m`` (the logit of the right label minus the other's), the additive form
the theory assumes is ``m = base + c_attn + c_mem``; the interaction term is
``m(clean) - m(no_memory) - m(no_attention) + m(neither)``, against the paths' own
contributions ``c_attn = m(no_memory) - m(neither)`` and ``c_mem = m(no_attention) - m(neither)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.fileio import write_atomic
from icl_circuits.models.build import query_logits
from icl_circuits.runs import layout
from icl_circuits.runs.read import iter_checkpoints, load_source
from icl_circuits.runs.store import list_checkpoints
from probes.ablation import ablate_heads, reference_cache

CONDITIONS = ("clean", "no_attention", "no_memory", "neither", "no_memory_self")
RESID_PRE = "blocks.0.hook_resid_pre"
RESID_POST = "blocks.0.hook_resid_post"
VALUE = "blocks.0.attn.hook_v"


@contextlib.contextmanager
def ablate_memory(model, reference: Tensor) -> Iterator:
    """Mean-ablate the query's own token on its way into the MLP readout; attention kept.

    Args:
        model: a bridge of the one-layer packed model (one block, readout on the query).
        reference: tokens whose mean normalised query token replaces the query's.

    Yields:
        The model; the hooks are removed on exit.
    """
    mean = reference_cache(model, reference, {RESID_PRE})[RESID_PRE][:, -1].mean(0)
    seen: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> Tensor:
        seen["x_q"] = x[:, -1].detach().clone()
        return x

    def swap(resid: Tensor, hook) -> Tensor:
        resid = resid.clone()
        resid[:, -1] = resid[:, -1] - seen["x_q"] + mean
        return resid

    with model.hooks(fwd_hooks=[(RESID_PRE, keep), (RESID_POST, swap)]):
        yield model


@contextlib.contextmanager
def ablate_self_value(model, reference: Tensor) -> Iterator:
    """Mean-ablate the head's value at the query's own position (its attention to itself is kept).

    The causal head attends from the query to the query too, so its output carries the
    query's own item; this removes that route (the pattern is unchanged).
    """
    mean = reference_cache(model, reference, {VALUE})[VALUE][:, -1].mean(0)

    def swap(v: Tensor, hook) -> Tensor:
        v = v.clone()
        v[:, -1] = mean
        return v

    with model.hooks(fwd_hooks=[(VALUE, swap)]):
        yield model


@contextlib.contextmanager
def ablate_paths(model, condition: str, reference: Tensor) -> Iterator:
    """The model with ``condition``'s paths mean-ablated (one of :data:`CONDITIONS`)."""
    if condition not in CONDITIONS:
        raise ValueError(f"condition: expected one of {', '.join(CONDITIONS)}, got {condition!r}")
    with contextlib.ExitStack() as stack:
        if condition in ("no_attention", "neither"):
            stack.enter_context(ablate_heads(model, [(0, 0)], "mean", reference=reference))
        if condition in ("no_memory", "neither", "no_memory_self"):
            stack.enter_context(ablate_memory(model, reference))
        if condition == "no_memory_self":
            stack.enter_context(ablate_self_value(model, reference))
        yield model


@torch.no_grad()
def margins(model, batch: Batch) -> dict[str, np.ndarray]:
    """Per-sequence margin (right label's logit minus the other's) under every condition.

    The reference for every mean is ``batch`` itself.
    """
    tokens, target = batch.tokens(), batch.target
    out = {}
    for condition in CONDITIONS:
        with ablate_paths(model, condition, tokens):
            logits = query_logits(model, tokens)
        right = logits.gather(1, target[:, None])[:, 0]
        other = logits.masked_fill(torch.nn.functional.one_hot(target, logits.shape[1]).bool(), -torch.inf)
        out[condition] = (right - other.max(1).values).numpy()
    return out


def path_rows(model, batches: dict[str, Batch]) -> list[dict]:
    """Tidy rows ``split, condition, acc, margin`` plus one ``interaction`` row per split.

    The interaction row holds the means of ``interaction``, ``c_attn`` and ``c_mem`` and of
    their absolute values (``abs_*``), per sequence.
    """
    rows = []
    for split, batch in batches.items():
        m = margins(model, batch)
        for condition, v in m.items():
            rows.append(
                {"split": split, "condition": condition, "acc": float((v > 0).mean()), "margin": float(v.mean())}
            )
        inter = m["clean"] - m["no_memory"] - m["no_attention"] + m["neither"]
        c_attn, c_mem = m["no_memory"] - m["neither"], m["no_attention"] - m["neither"]
        rows.append(
            {
                "split": split,
                "condition": "interaction",
                "interaction": float(inter.mean()),
                "c_attn": float(c_attn.mean()),
                "c_mem": float(c_mem.mean()),
                "abs_interaction": float(np.abs(inter).mean()),
                "abs_c_attn": float(np.abs(c_attn).mean()),
                "abs_c_mem": float(np.abs(c_mem).mean()),
            }
        )
    return rows


def paths_over_training(run: Path, n: int, steps: list[int] | None = None) -> pd.DataFrame:
    """:func:`path_rows` at every checkpoint of ``run`` (or ``steps``), on ``n`` sequences of
    its ICL and IWL evaluation splits; columns ``step, split, condition, ...``.

    Each checkpoint's rows are cached in the run's analysis folder (``paths{len(CONDITIONS)}-n{n}-step{step}.csv``),
    so a rerun (or a resumed reproduction) reads them instead of recomputing.
    """
    source = load_source(run)
    batches = {s: source.eval_batch(s, n) for s in (source.icl_split, source.iwl_split)}
    cache = Path(run) / layout.ANALYSIS
    parts, todo = [], []
    for step in list_checkpoints(run) if steps is None else steps:
        path = cache / f"paths{len(CONDITIONS)}-n{n}-step{step}.csv"
        (parts.append(pd.read_csv(path)) if path.exists() else todo.append(step))
    for step, model in iter_checkpoints(run, todo) if todo else ():
        cache.mkdir(exist_ok=True)
        model.eval()
        table = pd.DataFrame([r | {"step": step} for r in path_rows(model, batches)])
        write_atomic(cache / f"paths{len(CONDITIONS)}-n{n}-step{step}.csv", table.to_csv(index=False), overwrite=True)
        parts.append(table)
    return pd.concat(parts, ignore_index=True).sort_values(["step", "split"], kind="stable", ignore_index=True)
