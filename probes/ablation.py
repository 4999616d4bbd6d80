"""Head ablations through ``hook_z``: one head set at a time, or every head in one batched pass.

The TransformerLens 4 bridge has no ``use_attn_result`` (no per-head ``hook_result``), so a
head is removed where its output still exists per head: ``blocks.{l}.attn.hook_z``
(``[batch, pos, head_index, d_head]``, the attention-weighted values right before ``W_O``).
Replacing a head's slice there replaces exactly its contribution ``z @ W_O[l, h]`` to the
residual stream (the output bias ``b_O`` is shared by all heads and kept).

Methods:
    ``zero``: the head's ``z`` is set to 0.
    ``mean``: its mean over the reference batch, per position and head (the model still sees
        the head's average output, so off-distribution effects of zeroing are avoided).
    ``resample``: each sequence gets the head's ``z`` from a random *other* sequence of the
        reference batch (seeded; see :func:`resample_index`).

Reference activations are computed once, on entering a context, with whatever hooks are
already active at that moment: nesting order matters.

Every context manager yields the model and removes the hooks it added on exit, also when
the body raises (``model.hooks`` removes them in a ``finally``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor

from icl_circuits.data.batch import Batch
from icl_circuits.metrics import query_metrics
from icl_circuits.models.build import query_logits

METHODS = ("zero", "mean", "resample")

#: ``layer`` and ``head`` of the clean rows of :func:`all_heads_ablation`.
CLEAN = -1

Head = tuple[int, int]
HookFn = Callable[[Tensor, object], Tensor]


# ----------------------------------------------------------------------------- helpers
def as_tokens(x: Batch | Tensor) -> Tensor:
    """The int32 model input of a :class:`Batch`, or ``x`` itself when it already is tokens."""
    if isinstance(x, Batch):
        return x.tokens()
    if isinstance(x, Tensor):
        if x.dtype != torch.int32:
            raise ValueError(f"tokens: expected int32 tokens from Batch.tokens(), got {x.dtype}")
        return x
    raise TypeError(f"expected a Batch or an int32 tokens tensor, got {type(x).__name__}")


def check_method(method: str, reference: Batch | Tensor | None, allowed: Sequence[str] = METHODS) -> None:
    """Raise a ValueError for an unknown ``method`` or a missing ``reference``."""
    if method not in allowed:
        raise ValueError(f"method: expected one of {list(allowed)}, got {method!r}")
    if method != "zero" and reference is None:
        raise ValueError(f"method={method!r} needs a reference batch (reference=Batch or int32 tokens)")


def check_layer(model, layer: int) -> int:
    n_layers = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer: expected an int in [0, {n_layers - 1}] (n_layers={n_layers}), got {layer!r}")
    return layer


def check_heads(model, heads: Iterable[Head] | Head) -> list[Head]:
    """Validated ``[(layer, head), ...]``; a single ``(layer, head)`` pair is accepted too."""
    heads = list(heads)
    if len(heads) == 2 and all(isinstance(x, int) for x in heads):
        heads = [tuple(heads)]
    n_heads = model.cfg.n_heads
    out = []
    for item in heads:
        layer, head = item
        check_layer(model, layer)
        if not isinstance(head, int) or not 0 <= head < n_heads:
            raise ValueError(
                f"head: expected an int in [0, {n_heads - 1}] (n_heads={n_heads}) at layer {layer}, got {head!r}"
            )
        out.append((layer, head))
    return out


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@torch.no_grad()
def reference_cache(model, reference: Batch | Tensor | None, names: Iterable[str]) -> dict[str, Tensor]:
    """Activations ``names`` of the model on ``reference`` (empty when ``reference`` is None)."""
    names = sorted(set(names))
    if reference is None or not names:
        return {}
    _, cache = model.run_with_cache(as_tokens(reference), names_filter=names)
    return {n: cache[n].detach() for n in names}


def resample_index(batch_size: int, n_ref: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """``[batch]`` indices into the reference batch; row ``i < n_ref`` never gets ``i`` itself.

    Depends only on ``(batch_size, n_ref, seed)``, so a batch repeated for a batched sweep
    draws the same donors as the unrepeated batch.
    """
    if n_ref < 2:
        raise ValueError(f"reference: resample needs at least 2 sequences, got {n_ref}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n_ref, (batch_size,), generator=gen)
    # Shifting a self-pick by 1..n_ref-1 keeps the donor uniform over the other sequences.
    shift = torch.randint(1, n_ref, (batch_size,), generator=gen)
    own = idx == torch.arange(batch_size)
    idx = torch.where(own, (idx + shift) % n_ref, idx)
    return idx.to(device)


def replacement(method: str, ref: Tensor | None, like: Tensor, seed: int) -> Tensor:
    """What replaces activation ``like [batch, pos, ...]`` under ``method``.

    Args:
        method: ``zero``, ``mean`` or ``resample``.
        ref: the same activation on the reference batch, ``[n_ref, pos, ...]`` (unused for zero).
        like: the activation being replaced.
        seed: resample seed.

    Returns:
        A tensor broadcastable to ``like``.
    """
    if method == "zero":
        return torch.zeros_like(like)
    assert ref is not None
    if ref.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"reference: activation shape {tuple(ref.shape[1:])} (per sequence) does not match the run's "
            f"{tuple(like.shape[1:])}; use a reference with the same sequence length"
        )
    ref = ref.to(like.dtype)
    if method == "mean":
        return ref.mean(0, keepdim=True)
    return ref[resample_index(like.shape[0], ref.shape[0], seed, ref.device)]


def replacer(method: str, ref: Tensor | None, seed: int) -> Callable[[Tensor], Tensor]:
    """``like -> replacement(method, ref, like, seed)``, a ``mean`` computed once per dtype and shape.

    A hook fires at every forward (and every chunk of one); the mean over the reference batch
    is the same each time, so it is taken once.
    """
    if method != "mean":
        return lambda like: replacement(method, ref, like, seed)
    memo: dict[tuple, Tensor] = {}

    def rep(like: Tensor) -> Tensor:
        key = (like.dtype, tuple(like.shape[1:]))
        if key not in memo:
            memo[key] = replacement(method, ref, like, seed)
        return memo[key]

    return rep


def head_ablation_hooks(
    model, heads: list[Head], method: str, ref: dict[str, Tensor], seed: int
) -> list[tuple[str, HookFn]]:
    """``hook_z`` hooks replacing ``heads`` in every forward pass (``ref`` from :func:`reference_cache`)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(layer: int, hs: list[int]) -> HookFn:
        replace = replacer(method, ref.get(z_name(layer)), seed)

        def hook(z: Tensor, hook) -> Tensor:
            # z: [batch, pos, head_index, d_head]
            rep = replace(z).expand_as(z)
            z = z.clone()
            z[:, :, hs] = rep[:, :, hs]
            return z

        return hook

    return [(z_name(layer), make(layer, hs)) for layer, hs in sorted(by_layer.items())]


# ----------------------------------------------------------------------------- public API
@contextlib.contextmanager
def ablate_heads(
    model,
    heads: Iterable[Head] | Head,
    method: str = "zero",
    reference: Batch | Tensor | None = None,
    seed: int = 0,
) -> Iterator:
    """Ablate ``heads`` in every forward pass run inside the context.

    Args:
        model: a TransformerBridge in eval mode.
        heads: ``(layer, head)`` pairs (or one pair).
        method: ``zero``, ``mean`` or ``resample`` (see the module docstring).
        reference: Batch or int32 tokens whose ``hook_z`` gives the mean / the donors;
            required for ``mean`` and ``resample``, same sequence length as the runs.
        seed: resample seed.

    Yields:
        The model.

    Raises:
        ValueError: unknown method, missing reference, or a layer / head out of range.

    Example::

        with ablate_heads(model, [(1, 0)], "mean", reference=ic_batch):
            logits = model(batch.tokens())
    """
    heads = check_heads(model, heads)
    check_method(method, reference)
    ref = reference_cache(model, reference if method != "zero" else None, {z_name(layer) for layer, _ in heads})
    with model.hooks(fwd_hooks=head_ablation_hooks(model, heads, method, ref, seed)):
        yield model


@torch.no_grad()
def all_heads_ablation(
    model,
    batch: Batch,
    n_labels: int,
    method: str = "zero",
    reference: Batch | Tensor | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Metrics with each head ablated alone, all heads in one batched forward pass.

    The batch is repeated ``n_layers * n_heads + 1`` times along the batch dimension; copy 0
    is clean and copy ``1 + layer * n_heads + head`` has that head ablated (a per-copy mask
    inside the ``hook_z`` hooks). The result equals looping :func:`ablate_heads` over heads,
    for ``resample`` too (donors depend only on the seed and the batch size).

    Args:
        model: a TransformerBridge in eval mode.
        batch: evaluation batch.
        n_labels: label vocabulary (for :func:`query_metrics`).
        method: ``zero``, ``mean`` or ``resample``.
        reference: required for ``mean`` / ``resample`` (see :func:`ablate_heads`).
        seed: resample seed.

    Returns:
        Tidy DataFrame with columns ``layer, head_index, metric, value``; the clean model's rows
        have ``layer == head == -1`` (:data:`CLEAN`). Effects are ``value`` minus the clean
        value of the same metric.
    """
    check_method(method, reference)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    n_copies = n_layers * n_heads + 1
    b = len(batch)
    ref = reference_cache(model, reference if method != "zero" else None, [z_name(lay) for lay in range(n_layers)])

    def make(layer: int) -> HookFn:
        def hook(z: Tensor, hook) -> Tensor:
            # z: [copy * batch, pos, head_index, d_head]
            rep = replacement(method, ref.get(z_name(layer)), z[:b], seed).expand_as(z[:b])
            z = z.clone().view(n_copies, b, *z.shape[1:])
            for head in range(n_heads):
                z[1 + layer * n_heads + head, :, :, head] = rep[:, :, head]
            return z.view(n_copies * b, *z.shape[2:])

        return hook

    tokens = batch.tokens()
    with model.hooks(fwd_hooks=[(z_name(layer), make(layer)) for layer in range(n_layers)]):
        logits = query_logits(model, tokens.repeat(n_copies, *([1] * (tokens.dim() - 1))))
    logits = logits.view(n_copies, b, -1)
    rows = []
    for copy in range(n_copies):
        layer, head = divmod(copy - 1, n_heads) if copy else (CLEAN, CLEAN)
        for metric, value in query_metrics(logits[copy], batch, n_labels).items():
            rows.append({"layer": layer, "head_index": head, "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["layer", "head_index", "metric", "value"])
