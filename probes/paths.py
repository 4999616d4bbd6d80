"""Path ablation: cut one head's output out of a later head's keys (K-composition) only.

The native TransformerLens model computes q, k and v of all heads from one ``ln1`` output,
so there is no per-head key input to patch. :func:`ablate_k_path` therefore recomputes the
receiver's key from an edited residual stream and writes it into the receiver's slice of
``blocks.{l2}.attn.hook_k``. That hook is the output of the k projection, reshaped to
``[batch, pos, head_index, d_head]`` and *before* rotary embeddings (the native attention
rotates q and k after the hook), so a pre-rotary key written there is rotated exactly like
the original one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor

from icl_circuits.data.batch import Batch
from probes.ablation import Head, HookFn, check_heads, check_method, reference_cache, replacement, z_name


def _norm_fn(model, layer: int):
    """The receiver block's ``ln1`` as a plain module, so recomputing it fires no hook points."""
    ln1 = model.blocks[layer].ln1
    inner = getattr(ln1, "original_component", None)
    return ln1 if inner is None else inner


@contextlib.contextmanager
def ablate_k_path(
    model,
    sender: Head,
    receiver: Head,
    method: str = "zero",
    reference: Batch | Tensor | None = None,
) -> Iterator:
    """Remove the path from ``sender``'s output into ``receiver``'s keys, and nothing else.

    With sender ``(l1, h1)`` and receiver ``(l2, h2)``, ``l1 < l2``, three hooks act in every
    forward pass inside the context:

    1. ``blocks.{l1}.attn.hook_z`` records the sender's ``z[:, :, h1]`` (unchanged), so its
       output ``z @ W_O[l1, h1]`` (``[batch, pos, d_model]``) is known.
    2. ``blocks.{l2}.hook_resid_pre`` records the receiver block's input residual ``r``.
    3. ``blocks.{l2}.attn.hook_k`` (pre-rotary keys ``[batch, pos, head_index, d_head]``)
       replaces only head ``h2``'s slice by ``k + key(r') - key(r)`` where
       ``r' = r - sender_out + replacement_out``, ``key(x) = ln1(x) @ W_K[l2, h2] + b_K[l2, h2]``
       and ``ln1`` is the block's own normalisation module. Adding the difference keeps the
       unedited key bit-exact when the sender writes nothing.

    ``replacement_out`` is 0 (``zero``) or the sender's mean ``z`` over ``reference`` (per
    position) through ``W_O`` (``mean``). The sender's output still reaches the residual
    stream, every other head, and the receiver's queries and values; intermediate layers
    (``l1 < l < l2``) are untouched, so only the direct sender -> receiver-key path is cut.

    Args:
        model: a TransformerBridge in eval mode.
        sender: ``(layer, head)`` whose output is removed from the keys.
        receiver: ``(layer, head)`` in a later layer.
        method: ``zero`` or ``mean``.
        reference: Batch or int32 tokens for ``mean``.

    Yields:
        The model.

    Raises:
        ValueError: bad heads, sender not in an earlier layer, bad method / reference.
        RuntimeError: the receiver's keys cannot be reproduced from ``ln1`` and ``W_K``
            (e.g. weights processed after wrapping), so the edit would be wrong.
    """
    (l1, h1), (l2, h2) = check_heads(model, [sender, receiver])
    if l1 >= l2:
        raise ValueError(f"sender: expected a layer before the receiver's ({l2}), got layer {l1}")
    check_method(method, reference, allowed=("zero", "mean"))
    ref = reference_cache(model, reference if method == "mean" else None, [z_name(l1)])
    ln1 = _norm_fn(model, l2)
    W_O = model.W_O[l1, h1]  # [d_head, d_model]
    W_K, b_K = model.W_K[l2, h2], model.b_K[l2, h2]  # [d_model, d_head], [d_head]
    state: dict[str, Tensor] = {}

    def key(resid: Tensor) -> Tensor:
        # [batch, pos, d_model] -> [batch, pos, d_head]
        return ln1(resid) @ W_K.to(resid.dtype) + b_K.to(resid.dtype)

    def grab_z(z: Tensor, hook) -> Tensor:
        # z: [batch, pos, head_index, d_head]
        rep = replacement(method, ref.get(z_name(l1)), z, 0).expand_as(z)
        state["delta"] = (rep[:, :, h1] - z[:, :, h1]) @ W_O.to(z.dtype)
        return z

    def grab_resid(resid: Tensor, hook) -> Tensor:
        state["resid"] = resid
        return resid

    def edit_k(k: Tensor, hook) -> Tensor:
        # k: [batch, pos, head_index, d_head], before rotary
        if k.shape[2] != model.cfg.n_heads:
            raise NotImplementedError("ablate_k_path: grouped key/value heads are not supported")
        if "resid" not in state or "delta" not in state:
            raise RuntimeError(
                "ablate_k_path: the sender's hook_z and the receiver's resid_pre must run in the same pass"
            )
        resid, delta = state.pop("resid"), state.pop("delta")
        clean = key(resid)
        err = (clean - k[:, :, h2]).abs().max().item()
        if err > 1e-3 * (1.0 + k[:, :, h2].abs().max().item()):
            raise RuntimeError(
                f"ablate_k_path: cannot reproduce the keys of head {receiver} from ln1 and W_K "
                f"(max error {err:.3g}); were the weights processed after wrapping?"
            )
        k = k.clone()
        k[:, :, h2] = k[:, :, h2] + key(resid + delta) - clean
        return k

    hooks: list[tuple[str, HookFn]] = [
        (z_name(l1), grab_z),
        (f"blocks.{l2}.hook_resid_pre", grab_resid),
        (f"blocks.{l2}.attn.hook_k", edit_k),
    ]
    with model.hooks(fwd_hooks=hooks):
        yield model
