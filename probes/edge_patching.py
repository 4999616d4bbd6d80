"""Exact edge activation patching on TransformerLens 4 hooks, with a (differentiable) edge mask.

An edge mask ``m`` (``[n_edges]``, one entry per edge of a :class:`probes.graph.Graph`) sets
what every receiver reads: receiver ``r`` gets

    input_r = sum_s  m_{s->r} * out_s  +  (1 - m_{s->r}) * patch_s   (+ position embedding, biases)

where ``out_s`` is sender ``s``'s output in *this* (edited) forward pass and ``patch_s`` its
patch value: the sender's mean output over a reference batch per position (``mean``), its
output on a corrupted batch (``corrupt``), or 0 (``zero``). ``m = 1`` everywhere is the clean
model; ``m = 0`` everywhere is the model run on the patch values. Because ``m`` may require
grad, the same forward pass gives EAP / EAP-IG scores (:mod:`probes.eap`).

The native model has no per-head q/k/v input (no ``use_split_qkv_input``), so, as in
:func:`probes.paths.ablate_k_path`, a head's query (key, value) is recomputed from its
block's residual plus the edit ``delta_r = sum_s (1 - m_{s->r}) (patch_s - out_s)``:
``blocks.{l}.attn.hook_q`` gets ``q + f(ln1(resid + delta_r)) - f(ln1(resid))`` with
``f(x) = x @ W_Q[l, h] + b_Q[l, h]`` (pre-rotary, see :mod:`probes.paths`). An MLP's input
and the readout's input are residual streams consumed by nothing else, so the edit is added
at ``blocks.{l}.ln2.hook_in`` and ``ln_final.hook_in``. Senders are read at ``hook_embed``
(split by position parity), ``blocks.{l}.attn.hook_z`` (``z[:, :, h] @ W_O[l, h]``) and
``blocks.{l}.hook_mlp_out``.

:func:`patch_edges` is a context manager that removes its hooks on exit, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from probes.ablation import as_tokens
from probes.graph import EMBED, EMBED_X, EMBED_Y, QKV, READOUT, Graph, head_name, mlp_name
from probes.paths import _norm_fn

PATCH_METHODS = ("mean", "corrupt", "zero")

Metric = Callable[[Tensor], Tensor]


def metric_logits(logits: Tensor, metric: Metric) -> Tensor:
    """The logits ``metric`` reads: every position if ``metric.all_positions``, else the last one."""
    return logits if getattr(metric, "all_positions", False) else logits[:, -1]


# ----------------------------------------------------------------------------- metrics
def logit_diff(target: Tensor) -> Metric:
    """Metric: the target's logit minus the mean logit of the other labels, averaged over sequences.

    Args:
        target: ``[batch]`` label ids.

    Returns:
        A function of query logits ``[batch, n_labels]`` returning a scalar tensor.
    """

    def metric(logits: Tensor) -> Tensor:
        tgt = logits.gather(1, target[:, None].to(logits.device))[:, 0]
        others = (logits.sum(1) - tgt) / (logits.shape[1] - 1)
        return (tgt - others).mean()

    return metric


def answer_diff(target: Tensor, foil: Tensor) -> Metric:
    """Metric of a counterfactual pair: the clean answer's logit minus the corrupted answer's.

    Args:
        target: ``[batch]`` the clean sequences' label ids.
        foil: ``[batch]`` the label the corrupted sequences call for (:func:`label_swap`).
    """

    def metric(logits: Tensor) -> Tensor:
        t = logits.gather(1, target[:, None].to(logits.device))[:, 0]
        f = logits.gather(1, foil[:, None].to(logits.device))[:, 0]
        return (t - f).mean()

    return metric


def label_swap(batch: Batch) -> tuple[Batch, Batch, Tensor]:
    """The label-swap counterfactual of a bursty in-context batch (two classes in context).

    In each sequence the labels of the query's class and of another context class trade
    places, so the in-context answer becomes the other label (the ``foil``); exemplars and
    positions are unchanged. Sequences whose two classes share a label are dropped.

    Returns:
        ``(clean, corrupt, foil)``: the kept clean sequences, their counterfactuals, and
        ``[batch]`` foil labels (the corrupted sequences' targets).
    """
    is_query = batch.classes[:, :-1] == batch.classes[:, -1:]
    other = (~is_query).float().argmax(1)
    foil = batch.context_labels.gather(1, other[:, None])[:, 0]
    keep = (foil != batch.target) & (~is_query).any(1) & is_query.any(1)
    other_cls = batch.classes.gather(1, other[:, None])
    is_other = batch.classes[:, :-1] == other_cls
    clean, foil, is_query, is_other = batch[keep], foil[keep], is_query[keep], is_other[keep]
    labels = torch.where(is_query, foil[:, None], torch.where(is_other, clean.target[:, None], clean.context_labels))
    corrupt = Batch(clean.exemplars, labels, clean.classes, foil, layout=clean.layout)
    return clean, corrupt, foil


def next_token_metric(tokens: Tensor, positions: Tensor) -> Metric:
    """Metric for a language model: the logit of the actual next token minus the mean logit,
    averaged over sequences and the ``positions`` (``[pos]`` bool) it is read at.

    Args:
        tokens: ``[batch, pos]`` token ids; position ``p`` is scored on ``tokens[:, p + 1]``.
        positions: ``[pos]`` bool, True where the prediction is scored (not the last position).

    Returns:
        A function of the full logits ``[batch, pos, d_vocab]`` (``all_positions = True``).
    """
    idx = torch.nonzero(positions).flatten()
    if len(idx) == 0 or int(idx.max()) >= tokens.shape[1] - 1:
        raise ValueError("positions: expected at least one position before the last")

    def metric(logits: Tensor) -> Tensor:
        sel = logits[:, idx]  # [batch, n, d_vocab]
        nxt = tokens[:, idx + 1].to(logits.device)
        return (sel.gather(-1, nxt[..., None])[..., 0] - sel.mean(-1)).mean()

    metric.all_positions = True
    return metric


def next_token_accuracy(tokens: Tensor, positions: Tensor) -> Callable[[Tensor], float]:
    """Share of the ``positions`` where the argmax of the full logits is the actual next token."""
    idx = torch.nonzero(positions).flatten()

    def accuracy(logits: Tensor) -> float:
        return float((logits[:, idx].argmax(-1) == tokens[:, idx + 1].to(logits.device)).float().mean())

    return accuracy


# ----------------------------------------------------------------------------- sender outputs
def _split_embed(graph: Graph, emb: Tensor) -> dict[str, Tensor]:
    # emb: [batch, pos, d_model]
    if not graph.split_embed:
        return {EMBED: emb}
    even = (torch.arange(emb.shape[1], device=emb.device) % 2 == 0).to(emb.dtype)[None, :, None]
    return {EMBED_X: emb * even, EMBED_Y: emb * (1 - even)}


def _head_outputs(W_O: Tensor, z: Tensor) -> Tensor:
    # z: [batch, pos, head_index, d_head], W_O: [head_index, d_head, d_model]
    # -> [batch, pos, head_index, d_model]
    return torch.einsum("bphe,hed->bphd", z, W_O.to(z.dtype))


@torch.no_grad()
def sender_outputs(model, graph: Graph, tokens: Batch | Tensor) -> dict[str, Tensor]:
    """Every sender's output ``[batch, pos, d_model]`` on ``tokens`` (clean model)."""
    names = ["hook_embed"] + [f"blocks.{layer}.attn.hook_z" for layer in range(graph.n_layers)]
    if not graph.attn_only:
        names += [f"blocks.{layer}.hook_mlp_out" for layer in range(graph.n_layers)]
    _, cache = model.run_with_cache(model_input(tokens), names_filter=names)
    out = _split_embed(graph, cache["hook_embed"])
    for layer in range(graph.n_layers):
        heads = _head_outputs(model.W_O[layer].detach(), cache[f"blocks.{layer}.attn.hook_z"])
        for h in range(graph.n_heads):
            out[head_name(layer, h)] = heads[:, :, h]
        if not graph.attn_only:
            out[mlp_name(layer)] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out


def patch_values(
    model, graph: Graph, method: str = "mean", reference: Batch | Tensor | None = None
) -> dict[str, Tensor]:
    """Patch value of every sender.

    Args:
        model: a TransformerBridge in eval mode.
        graph: its graph.
        method: ``mean`` (mean over ``reference`` per position: ``[1, pos, d_model]``),
            ``corrupt`` (the outputs on ``reference``, which must have the clean batch's
            shape) or ``zero``.
        reference: the reference or corrupted batch (not needed for ``zero``).

    Returns:
        ``{sender: tensor broadcastable to [batch, pos, d_model]}``.
    """
    if method not in PATCH_METHODS:
        raise ValueError(f"method: expected one of {list(PATCH_METHODS)}, got {method!r}")
    if reference is None:
        raise ValueError(f"method={method!r} needs a reference batch (the shape of the sequences)")
    outs = sender_outputs(model, graph, reference)
    if method == "zero":
        return {k: torch.zeros_like(v[:1]) for k, v in outs.items()}
    if method == "mean":
        return {k: v.mean(0, keepdim=True) for k, v in outs.items()}
    return outs


def model_input(tokens: Batch | Tensor) -> Tensor:
    """The model input: a :class:`Batch`'s int32 tokens, a language model's ``[batch, pos]`` ids as they are."""
    if isinstance(tokens, Tensor) and tokens.ndim == 2 and not tokens.is_floating_point():
        return tokens
    return as_tokens(tokens)


def qkv_weights(model, layer: int, t: str) -> tuple[Tensor, Tensor]:
    """``(W [heads, d_model, d_head], b [heads, d_head])`` of input ``t`` of block ``layer``.

    ``heads`` is ``n_key_value_heads`` for ``k``/``v`` under grouped-query attention; a
    bias-free projection (the bridge raises for ``b_Q``) gets zeros.
    """
    W = getattr(model, f"W_{t.upper()}")[layer].detach()
    try:
        b = getattr(model, f"b_{t.upper()}")
        b = b[layer].detach() if b is not None else None
    except (AttributeError, ValueError, RuntimeError):
        b = None
    return W, torch.zeros(W.shape[0], W.shape[2], dtype=W.dtype) if b is None else b


# ----------------------------------------------------------------------------- masks
def full_mask(graph: Graph, value: float = 1.0) -> Tensor:
    """``[n_edges]`` mask with every entry ``value`` (1: every edge clean)."""
    return torch.full((graph.n_edges,), float(value))


def mask_of(graph: Graph, keep: Iterable[str]) -> Tensor:
    """Mask that keeps exactly the edges named in ``keep`` and patches every other one."""
    mask = full_mask(graph, 0.0)
    for name in keep:
        mask[graph.index(name)] = 1.0
    return mask


def _groups(graph: Graph) -> dict[str, tuple[list[str], Tensor]]:
    """Per receiver group (``L{l}.q`` .., ``M{l}``, ``readout``): senders and mask indices.

    Head groups have indices ``[n_senders, n_heads]``; MLP and readout groups ``[n_senders, 1]``.
    """
    rows: dict[str, dict[tuple[str, int], int]] = {}
    for i, e in enumerate(graph.edges):
        key = f"L{e.layer}.{e.input}" if e.input in QKV else e.receiver
        rows.setdefault(key, {})[(e.sender, max(e.head_index, 0))] = i
    out = {}
    for key, cells in rows.items():
        senders = list(dict.fromkeys(s for s, _ in cells))
        n_cols = 1 + max(c for _, c in cells)
        idx = torch.tensor([[cells[(s, c)] for c in range(n_cols)] for s in senders], dtype=torch.long)
        out[key] = (senders, idx)
    return out


# ----------------------------------------------------------------------------- the patch
@contextlib.contextmanager
def patch_edges(model, graph: Graph, patch: dict[str, Tensor], mask: Tensor, probes: dict | None = None) -> Iterator:
    """Run every forward pass inside with edge mask ``mask`` (1 keeps an edge, 0 patches it).

    Args:
        model: a TransformerBridge in eval mode whose graph is ``graph``.
        graph: from :func:`probes.graph.build_graph`.
        patch: sender patch values from :func:`patch_values`.
        mask: ``[n_edges]`` floats in [0, 1], or ``[batch, n_edges]`` (one mask per sequence, so
            many patches run in one batched pass); may require grad (values in between
            interpolate).
        probes: when a dict, filled by each forward pass with zero leaf tensors added to every
            receiver input (``eps``) and attention pattern (``eps_pattern``), and the pass's
            sender outputs (``out``), residuals (``resid``), pre-rotary ``q``/``k`` and rotary
            tables (``cos``/``sin``), for gradients with respect to receiver inputs.

    Yields:
        The model.

    Raises:
        ValueError: a mask of the wrong shape, or patch values missing a sender.
        RuntimeError: a receiver's q/k/v cannot be reproduced from ``ln1`` and ``W_Q/W_K/W_V``.
    """
    if mask.ndim not in (1, 2) or mask.shape[-1] != graph.n_edges:
        raise ValueError(
            f"mask: expected shape ({graph.n_edges},) or (batch, {graph.n_edges}), got {tuple(mask.shape)}"
        )
    missing = {n.name for n in graph.nodes} - set(patch)
    if missing:
        raise ValueError(f"patch: no values for senders {sorted(missing)}")
    groups = _groups(graph)
    weights = {(layer, t): qkv_weights(model, layer, t) for layer in range(graph.n_layers) for t in QKV}
    W_O = {layer: model.W_O[layer].detach() for layer in range(graph.n_layers)}
    state: dict = {"out": {}, "resid": {}}
    if probes is not None:
        for key in ("eps", "eps_pattern", "pattern", "q", "k", "cos", "sin"):
            probes[key] = {}
        probes["out"], probes["resid"] = state["out"], state["resid"]

    def delta(key: str, like: Tensor) -> Tensor | None:
        # -> [batch, pos, n_cols, d_model], or None when the group is fully clean
        senders, idx = groups[key]
        w = 1.0 - mask.to(like.device, like.dtype)[..., idx.to(like.device)]  # [(batch,) n_senders, n_cols]
        d = None
        if w.requires_grad or bool((w != 0).any()):
            if not w.requires_grad:  # only the senders some receiver patches
                active = (w != 0).reshape(-1, *w.shape[-2:]).any(0).any(-1)
                senders = [s for s, a in zip(senders, active.tolist(), strict=True) if a]
                w = w[..., active, :]
            diffs = torch.stack([patch[s].to(like.dtype) - state["out"][s] for s in senders])  # [s, b, p, d]
            if w.ndim == 3:
                d = torch.einsum("sbpd,bsh->bphd", diffs, w)
            else:
                d = torch.einsum("sbpd,sh->bphd", diffs, w)
        if probes is not None:
            eps = torch.zeros(*like.shape[:2], idx.shape[1], state["d_model"], dtype=like.dtype, requires_grad=True)
            probes["eps"][key] = eps
            d = eps if d is None else d + eps
        return d

    def grab_embed(x: Tensor, hook) -> Tensor:
        state["d_model"] = x.shape[-1]
        state["out"].update(_split_embed(graph, x))
        return x

    def grab_z(layer: int):
        def hook_fn(z: Tensor, hook) -> Tensor:
            heads = _head_outputs(W_O[layer], z)
            for h in range(graph.n_heads):
                state["out"][head_name(layer, h)] = heads[:, :, h]
            return z

        return hook_fn

    def grab(name, key: str):
        def hook_fn(x: Tensor, hook) -> Tensor:
            state[key][name] = x
            return x

        return hook_fn

    def edit_qkv(layer: int, t: str):
        def hook_fn(act: Tensor, hook) -> Tensor:
            # act: [batch, pos, head_index, d_head] (pre-rotary; key-value heads for k/v)
            d = delta(f"L{layer}.{t}", act)
            if d is not None:
                resid = state["resid"][layer][:, :, None]  # [batch, pos, 1, d_model]
                ln = _norm_fn(model, layer)
                W, b = weights[(layer, t)]  # [head_index, d_model, d_head], [head_index, d_head]

                def f(x: Tensor) -> Tensor:
                    return torch.einsum("bphd,hde->bphe", ln(x), W.to(x.dtype)) + b.to(x.dtype)

                clean = f(resid)
                err = (clean - act).abs().max().item()
                if err > 1e-3 * (1.0 + act.abs().max().item()):
                    raise RuntimeError(
                        f"patch_edges: cannot reproduce blocks.{layer}.attn.hook_{t} from ln1 and W_{t.upper()} "
                        f"(max error {err:.3g}); were the weights processed after wrapping?"
                    )
                act = act + f(resid + d) - clean
            if probes is not None and t in ("q", "k"):
                probes[t][layer] = act
            return act

        return hook_fn

    def edit_pattern(layer: int):
        def hook_fn(pattern: Tensor, hook) -> Tensor:
            # pattern: [batch, head_index, query_pos, key_pos]
            eps = torch.zeros_like(pattern, requires_grad=True)
            probes["eps_pattern"][layer], probes["pattern"][layer] = eps, pattern
            return pattern + eps

        return hook_fn

    def edit_stream(key: str):
        def hook_fn(x: Tensor, hook) -> Tensor:
            # x: [batch, pos, d_model], a residual stream read only by this receiver
            d = delta(key, x)
            return x if d is None else x + d[:, :, 0]

        return hook_fn

    hooks = [("hook_embed", grab_embed)]
    for layer in range(graph.n_layers):
        hooks.append((f"blocks.{layer}.hook_resid_pre", grab(layer, "resid")))
        hooks += [(f"blocks.{layer}.attn.hook_{t}", edit_qkv(layer, t)) for t in QKV]
        hooks.append((f"blocks.{layer}.attn.hook_z", grab_z(layer)))
        if probes is not None:
            hooks.append((f"blocks.{layer}.attn.hook_pattern", edit_pattern(layer)))
            for t in ("cos", "sin"):
                if f"blocks.{layer}.attn.hook_{t}" in model.hook_dict:
                    hooks.append((f"blocks.{layer}.attn.hook_{t}", grab(layer, t)))
        if not graph.attn_only:
            hooks.append((f"blocks.{layer}.ln2.hook_in", edit_stream(mlp_name(layer))))
            hooks.append((f"blocks.{layer}.hook_mlp_out", grab(mlp_name(layer), "out")))
    hooks.append(("ln_final.hook_in", edit_stream(READOUT)))
    if probes is not None:
        for t in ("cos", "sin"):
            state[t] = probes[t]
    with model.hooks(fwd_hooks=hooks):
        yield model


def query_metric(model, tokens: Batch | Tensor, metric: Metric) -> Tensor:
    """``metric`` of the model's query logits (or all logits, see :func:`metric_logits`) on ``tokens``."""
    return metric(metric_logits(model(model_input(tokens)), metric))


def patched_metric(
    model, graph: Graph, tokens: Batch | Tensor, patch: dict[str, Tensor], mask: Tensor, metric: Metric
) -> float:
    """The metric with edge mask ``mask`` (no grad)."""
    with torch.no_grad(), patch_edges(model, graph, patch, mask):
        return float(query_metric(model, tokens, metric))


def groups(graph: Graph) -> dict[str, tuple[list[str], Tensor]]:
    """Receiver groups (``L{l}.q``, ``L{l}.k``, ``L{l}.v``, ``M{l}``, ``readout``): senders and
    mask indices ``[n_senders, n_receivers]`` (columns: heads, key-value heads, or 1)."""
    return _groups(graph)
