"""How the layer-2 heads of Singh et al. 2024's 2 x 8 model read layer 1.

Three measurements on a trained 2-layer model, each an accuracy on one batch:

* :func:`layer1_ablation`: every layer-1 head ablated (``hook_z`` zeroed or mean-ablated)
  with the layer-2 attention patterns kept (``keep="patterns"``), or with the patterns
  *and* the layer-2 values kept (``keep="patterns+values"``). The second is the paper's
  ablation: ``aadityasingh/icl-dynamics``, ``ih_paper_plots.ipynb`` sets
  ``opto_ablate_heads`` to every layer-0 head together with ``opto_preserve_patterns`` and
  ``opto_preserve_values`` ("ablate all layer 1 heads, but leave the connection to the next
  layer in place"), so it removes only layer 1's direct path to the logits.
* :func:`position_ablation`: the same, with layer 1 zeroed at one kind of position only
  (exemplars, labels or the query).
* :func:`read_paths`: layer 1's output cut from exactly one of layer 2's inputs: its
  queries, keys or values (``blocks.1.attn.hook_q/k/v`` replaced by their values in a run
  with every layer-1 head ablated; ``hook_q``/``hook_k`` are pre-rotary, so the replaced
  ones are rotated as usual), or the direct path to the logits (the paper's ablation).
  The accuracy left after each cut says which way layer 2 reads layer 1: K-composition
  (previous-token information in the label keys), Q-composition or V-composition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.metrics import query_metrics
from icl_circuits.models.build import query_logits
from probes.pattern import pattern_name, preserve_patterns

KEEPS = ("patterns", "patterns+values")
PATHS = ("none", "q", "k", "qk", "v", "direct", "all")
Z1 = "blocks.0.attn.hook_z"


def _name(what: str) -> str:
    return f"blocks.1.attn.hook_{what}"


def _acc(model, batch: Batch, n_labels: int, hooks: list) -> float:
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return query_metrics(query_logits(model, batch.tokens()), batch, n_labels)["acc"]


def _clean(model, tokens: Tensor, names: list[str], hooks: list | None = None) -> dict[str, Tensor]:
    with torch.no_grad(), model.hooks(fwd_hooks=hooks or []):
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return {n: cache[n].detach().clone() for n in names}


def _z_ablation(model, tokens: Tensor, method: str, positions: list[int] | None = None) -> Callable:
    """A ``hook_z`` hook for layer 1: zero, or the mean over the batch (per position)."""
    if method not in ("zero", "mean"):
        raise ValueError(f"method: expected zero or mean, got {method!r}")
    mean = _clean(model, tokens, [Z1])[Z1].mean(0, keepdim=True) if method == "mean" else None

    def hook(z, hook):
        new = torch.zeros_like(z) if mean is None else mean.expand_as(z).clone()
        if positions is None:
            return new
        z = z.clone()
        z[:, positions] = new[:, positions]  # [batch pos head_index d_head]
        return z

    return hook


def _keep(values: dict[str, Tensor]) -> list:
    return [(name, lambda act, hook, v=v: v) for name, v in values.items()]


def layer1_ablation(model, batch: Batch, n_labels: int, method: str = "zero", keep: str = "patterns") -> float:
    """Accuracy with every layer-1 head ablated and layer 2's patterns (and values) kept."""
    if keep not in KEEPS:
        raise ValueError(f"keep: expected one of {', '.join(KEEPS)}, got {keep!r}")
    tokens = batch.tokens()
    if keep == "patterns":
        heads = [(0, h) for h in range(model.cfg.n_heads)]
        with torch.no_grad(), preserve_patterns(model, tokens, heads, method=method, reference=tokens):
            return query_metrics(query_logits(model, tokens), batch, n_labels)["acc"]
    clean = _clean(model, tokens, [pattern_name(1), _name("v")])
    return _acc(model, batch, n_labels, [(Z1, _z_ablation(model, tokens, method)), *_keep(clean)])


def groups(n_pos: int) -> dict[str, list[int]]:
    """Positions of the exemplars, the labels and the query in an interleaved sequence."""
    return {"exemplars": list(range(0, n_pos - 1, 2)), "labels": list(range(1, n_pos - 1, 2)), "query": [n_pos - 1]}


def position_ablation(model, batch: Batch, n_labels: int, keep: str = "patterns") -> dict[str, float]:
    """Accuracy with layer-1 head outputs zeroed at one kind of position only, ``keep`` as above."""
    if keep not in KEEPS:
        raise ValueError(f"keep: expected one of {', '.join(KEEPS)}, got {keep!r}")
    tokens = batch.tokens()
    kept = [pattern_name(1)] + ([_name("v")] if keep == "patterns+values" else [])
    clean = _clean(model, tokens, kept)
    return {
        where: _acc(model, batch, n_labels, [(Z1, _z_ablation(model, tokens, "zero", pos)), *_keep(clean)])
        for where, pos in groups(tokens.shape[1]).items()
    }


def read_paths(model, batch: Batch, n_labels: int, method: str = "zero") -> dict[str, float]:
    """Accuracy with layer 1's output cut from one of layer 2's inputs (keys: :data:`PATHS`).

    ``q``, ``k``, ``v``: that projection of layer 2 takes its value from a run with every
    layer-1 head ablated, everything else clean; ``qk``: both (only the patterns change).
    ``none``: the clean model. ``direct``: layer 1 removed, layer 2's
    patterns and values kept (the paper's ablation). ``all``: layer 1 ablated outright.
    """
    tokens = batch.tokens()
    ablate = (Z1, _z_ablation(model, tokens, method))
    cut = _clean(model, tokens, [_name(w) for w in ("q", "k", "v")], hooks=[ablate])
    out = {"none": _acc(model, batch, n_labels, [])}
    for what in ("q", "k", "v"):
        out[what] = _acc(model, batch, n_labels, _keep({_name(what): cut[_name(what)]}))
    out["direct"] = layer1_ablation(model, batch, n_labels, method, keep="patterns+values")
    qk = {_name(w): cut[_name(w)] for w in ("q", "k")}
    out["qk"] = _acc(model, batch, n_labels, _keep(qk))
    out["all"] = _acc(model, batch, n_labels, [ablate])
    return out


__all__ = ["KEEPS", "PATHS", "groups", "layer1_ablation", "position_ablation", "read_paths"]
