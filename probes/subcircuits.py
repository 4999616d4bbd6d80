"""Named subcircuits (heads, MLPs, the direct path) and their ablation effects on every split.

A :class:`Subcircuit` is ablated as a whole by :func:`ablate_subcircuit`:

* heads through ``blocks.{l}.attn.hook_z`` (see :mod:`probes.ablation`);
* MLP layers through ``blocks.{l}.hook_mlp_out`` (``[batch, pos, d_model]``);
* the direct path, i.e. the query token's own embedding reaching the readout through the
  residual stream without passing through any attention head or MLP. At the query (last)
  position of ``ln_final.hook_in`` the query's ``hook_embed`` (+ ``hook_pos_embed`` when the
  model has one; rotary models do not) is subtracted and its replacement added: 0 (``zero``),
  its mean over the reference batch (``mean``), or another reference sequence's (``resample``).
  The embedding is read from the same forward pass, and every layer still sees the real
  query embedding, so attention and MLPs that read the query are untouched. With a final
  LayerNorm the edit happens before it, so the norm is recomputed on the edited residual.

All replacements come from one reference pass on entry (see :func:`probes.ablation.reference_cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.metrics import query_metrics
from icl_circuits.models.build import ICLNativeModel, chunks, query_logits, query_readout
from probes.ablation import (
    METHODS,
    Head,
    HookFn,
    check_heads,
    check_layer,
    check_method,
    head_ablation_hooks,
    reference_cache,
    replacer,
    z_name,
)

EMBED_NAMES = ("hook_embed", "hook_pos_embed")


@dataclasses.dataclass(frozen=True)
class Subcircuit:
    """A set of components ablated together.

    Attributes:
        name: label of the subcircuit in result tables.
        heads: ``((layer, head), ...)`` attention heads.
        mlps: layers whose MLP output is ablated.
        direct_path: ablate the query token's own embedding on its way to the readout.
    """

    name: str
    heads: tuple[Head, ...] = ()
    mlps: tuple[int, ...] = ()
    direct_path: bool = False


def icl_circuit(
    prev_token_heads: Iterable[Head], induction_heads: Iterable[Head], name: str = "ICL circuit"
) -> Subcircuit:
    """The induction circuit: previous-token heads and the induction heads that read them."""
    heads = tuple(dict.fromkeys(tuple(h) for h in (*prev_token_heads, *induction_heads)))
    return Subcircuit(name, heads=heads)


def iwl_path(model, name: str = "IWL path") -> Subcircuit:
    """The in-weight path: the query's direct path to the readout plus every MLP layer (if any)."""
    mlps = () if model.cfg.attn_only else tuple(range(model.cfg.n_layers))
    return Subcircuit(name, mlps=mlps, direct_path=True)


def mlp_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def _embed_names(model) -> list[str]:
    return [n for n in EMBED_NAMES if n in model.hook_dict]


def subcircuit_names(model, subcircuit: Subcircuit) -> set[str]:
    """The hook names whose reference activations ablating ``subcircuit`` reads (its components
    checked against the model first: ValueError as :func:`ablate_subcircuit` raises it)."""
    heads = check_heads(model, subcircuit.heads) if subcircuit.heads else []
    for layer in subcircuit.mlps:
        check_layer(model, layer)
    if subcircuit.mlps and model.cfg.attn_only:
        raise ValueError(f"mlps: the model is attention-only, got MLP layers {list(subcircuit.mlps)}")
    names = {z_name(layer) for layer, _ in heads} | {mlp_name(layer) for layer in subcircuit.mlps}
    return names | set(_embed_names(model) if subcircuit.direct_path else [])


@contextlib.contextmanager
def ablate_subcircuit(
    model,
    subcircuit: Subcircuit,
    method: str = "mean",
    reference: Batch | Tensor | None = None,
    seed: int = 0,
    ref_cache: dict[str, Tensor] | None = None,
) -> Iterator:
    """Ablate every component of ``subcircuit`` in each forward pass inside the context.

    Args:
        model: a TransformerBridge in eval mode.
        subcircuit: the components (see the module docstring for how each is ablated).
        method: ``zero``, ``mean`` or ``resample``.
        reference: Batch or int32 tokens for ``mean`` / ``resample`` (same sequence length).
        seed: resample seed.
        ref_cache: the activations of ``reference`` already computed (:func:`subcircuit_names`
            of this subcircuit at least), so several subcircuits share one reference pass.

    Yields:
        The model.

    Raises:
        ValueError: bad method / reference, components out of range, or MLPs asked of an
            attention-only model.
    """
    heads = check_heads(model, subcircuit.heads) if subcircuit.heads else []
    for layer in subcircuit.mlps:
        check_layer(model, layer)
    if subcircuit.mlps and model.cfg.attn_only:
        raise ValueError(f"mlps: the model is attention-only, got MLP layers {list(subcircuit.mlps)}")
    check_method(method, reference)
    embed_names = _embed_names(model) if subcircuit.direct_path else []
    names = {z_name(layer) for layer, _ in heads} | {mlp_name(layer) for layer in subcircuit.mlps}
    wanted = names | set(embed_names)
    if ref_cache is not None and method != "zero":
        ref = {n: ref_cache[n] for n in wanted}
    else:
        ref = reference_cache(model, reference if method != "zero" else None, wanted)

    hooks: list[tuple[str, HookFn]] = head_ablation_hooks(model, heads, method, ref, seed)

    def ablate_mlp(name: str) -> HookFn:
        replace = replacer(method, ref.get(name), seed)

        def hook(out: Tensor, hook) -> Tensor:
            # out: [batch, pos, d_model]
            return replace(out).expand_as(out)

        return hook

    hooks += [(mlp_name(layer), ablate_mlp(mlp_name(layer))) for layer in sorted(set(subcircuit.mlps))]

    if embed_names:
        ref_direct = sum(ref[n][:, -1] for n in embed_names) if ref else None  # [n_ref, d_model]
        replace_direct = replacer(method, ref_direct, seed)
        direct: dict[str, Tensor] = {}

        def grab(name: str) -> HookFn:
            def hook(act: Tensor, hook) -> Tensor:
                direct[name] = act[:, -1]
                return act

            return hook

        def edit_final(resid: Tensor, hook) -> Tensor:
            # resid: [batch, pos, d_model]; only the query position's direct path changes.
            own = sum(direct.pop(n) for n in embed_names)  # [batch, d_model]
            rep = replace_direct(own).expand_as(own)
            resid = resid.clone()
            resid[:, -1] = resid[:, -1] - own + rep
            return resid

        hooks += [(n, grab(n)) for n in embed_names] + [("ln_final.hook_in", edit_final)]

    with model.hooks(fwd_hooks=hooks):
        yield model


def _first_block(subcircuit: Subcircuit) -> int:
    """The first block whose computation ablating ``subcircuit`` changes (0: the embedding stage
    on, as the direct path edits with the query's own embedding)."""
    layers = [layer for layer, _ in subcircuit.heads] + list(subcircuit.mlps)
    return 0 if subcircuit.direct_path or not layers else min(layers)


@torch.no_grad()
def subcircuit_effects(
    model,
    eval_batches: dict[str, Batch],
    n_labels: int,
    subcircuits: Sequence[Subcircuit],
    method: str = "mean",
    reference: Batch | Tensor | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics of every evaluation split, clean and with each subcircuit ablated.

    Each condition is one pass over every split at once, in chunks of sequences
    (:func:`icl_circuits.models.build.chunks`; ``resample``'s ablated passes whole, as its
    donors depend on a row's index). With a ``reference``, a subcircuit whose components all
    sit in block ``l > 0`` or above (no direct path) runs from the clean pass's residual stream
    entering block ``l`` (:meth:`icl_circuits.models.build.ICLNativeModel.forward_from`): the
    blocks below compute what they computed clean. When ``reference`` is one of
    ``eval_batches``' batches (the same object), the clean pass also records its activations,
    so no reference pass of its own is run.

    Args:
        model: a TransformerBridge in eval mode.
        eval_batches: ``{split: batch}``, e.g. from :func:`icl_circuits.metrics.eval_sets`.
        n_labels: label vocabulary.
        subcircuits: the subcircuits to compare (names must be unique and not ``clean``).
        method: ``zero``, ``mean`` or ``resample``.
        reference: the reference batch for ``mean`` / ``resample``. None means each split is
            its own reference (the mean over, or donors from, that split's batch).
        seed: resample seed.

    Returns:
        Tidy DataFrame with columns ``condition`` (``clean`` or a subcircuit name), ``split``,
        ``metric``, ``value``; metrics from :func:`query_metrics`.
    """
    names = [s.name for s in subcircuits]
    if len(set(names)) != len(names) or "clean" in names:
        raise ValueError(f"subcircuits: names must be unique and not 'clean', got {names}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    rows_out: list[dict] = []

    def record(condition: str, split: str, batch: Batch) -> None:
        for metric, value in query_metrics(query_logits(model, batch.tokens()), batch, n_labels).items():
            rows_out.append({"condition": condition, "split": split, "metric": metric, "value": value})

    splits = list(eval_batches)
    every = Batch.cat([eval_batches[s] for s in splits]) if splits else None
    bounds = torch.tensor([0] + [len(eval_batches[s]) for s in splits]).cumsum(0).tolist()
    tokens = every.tokens() if every is not None else None
    reads = {sub.name: subcircuit_names(model, sub) for sub in subcircuits}  # checks every subcircuit
    # A subcircuit that leaves the embedding stage and the blocks below ``first`` untouched is
    # run from the clean pass's residual stream entering block ``first`` (the same values).
    native = getattr(model, "original_model", None)
    resumable = reference is not None and isinstance(native, ICLNativeModel)
    first = {sub.name: _first_block(sub) if resumable else 0 for sub in subcircuits}
    starts = {start for start in first.values() if start}
    resid: dict[int, Tensor] = {}  # block -> the clean residual stream entering it, every row

    def logits_of(rows: slice, start: int) -> Tensor:
        if not start:
            return query_logits(model, tokens[rows])
        with query_readout(model):
            return native.forward_from(resid[start][rows], start)[:, -1]

    def record_all(condition: str, start: int = 0) -> None:
        # Every split in chunks that fit a core's cache: zero and mean ablations read no row's
        # place in the batch, so chunks change no value; resample draws its donors by row
        # index, so its ablated passes run as one forward.
        whole = [slice(0, len(tokens))]
        one_pass = method == "resample" and condition != "clean"
        rows = whole if one_pass else chunks(len(tokens), tokens.shape[1], model.cfg.d_model)
        logits = torch.cat([logits_of(r, start) for r in rows])
        for i, split in enumerate(splits):
            batch = eval_batches[split]
            for metric, value in query_metrics(logits[bounds[i] : bounds[i + 1]], batch, n_labels).items():
                rows_out.append({"condition": condition, "split": split, "metric": metric, "value": value})

    # One reference pass serves every subcircuit and every split: the clean pass itself when
    # the reference is one of the splits' batches. The clean pass also keeps the residual
    # stream where a subcircuit's run starts.
    wanted: set[str] = set()
    if reference is not None and method != "zero":
        wanted = set().union(*reads.values())
    among = [i for i, split in enumerate(splits) if eval_batches[split] is reference]
    recorded = (wanted if among else set()) | {f"blocks.{start}.hook_resid_pre" for start in starts}
    taken: dict[str, list[Tensor]] = {name: [] for name in recorded}

    def take(name: str) -> HookFn:
        def hook(act: Tensor, hook) -> Tensor:
            taken[name].append(act.detach())
            return act

        return hook

    with model.hooks(fwd_hooks=[(name, take(name)) for name in sorted(recorded)]):
        record_all("clean")
    resid.update({start: torch.cat(taken[f"blocks.{start}.hook_resid_pre"]) for start in starts})
    shared = None
    if wanted and among:
        lo, hi = bounds[among[0]], bounds[among[0] + 1]
        shared = {name: torch.cat(taken[name])[lo:hi] for name in wanted}
    elif wanted:
        shared = reference_cache(model, reference, wanted)
    for sub in subcircuits:
        if reference is not None:
            with ablate_subcircuit(model, sub, method, reference, seed, ref_cache=shared):
                record_all(sub.name, first[sub.name])
            continue
        for split, batch in eval_batches.items():
            with ablate_subcircuit(model, sub, method, batch, seed):
                record(sub.name, split, batch)
    return pd.DataFrame(rows_out, columns=["condition", "split", "metric", "value"])
