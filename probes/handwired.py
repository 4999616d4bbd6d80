"""A hand-wired two-layer induction circuit: ground truth for every probe.

The residual stream is split into four subspaces (``normalization="none"``, no biases)::

    X     [d_in]     the exemplar (the encoder is the identity onto it)
    LAB   [n_labels] one-hot label at label positions (the label embedding)
    POS   [n_ctx]    one-hot position (the positional embedding)
    PREV  [d_in]     written by the previous-token head: the preceding token's X

Layer 0, head 0 is a previous-token head: each label token at position i attends to i - 1
(query from POS i, key from POS i - 1) and copies X into PREV, so it carries its exemplar;
exemplar tokens (the query included) attend to position 0.
Layer 1, head 0 is an induction head: the query's X is matched against PREV, so it attends
to the label tokens that follow exemplars like the query, and copies their LAB, which the
unembedding reads. All other heads attend to position 0 and write nothing: their task
induction and previous-token scores are ~0. The model has no in-weight memory at all.
"""

from __future__ import annotations

import torch
from transformer_lens.model_bridge.sources.native import NativeModel

from icl_circuits.models.build import build_native
from icl_circuits.models.config import ModelConfig

PREV_TOKEN_HEAD = (0, 0)
INDUCTION_HEAD = (1, 0)


def bare_model(
    d_model: int,
    n_heads: int,
    d_head: int,
    d_in: int,
    n_labels: int,
    n_ctx: int,
    n_layers: int = 2,
    positional: str = "standard",
    layout: str = "interleaved",
):
    """An attention-only native model without norms, to be wired by hand; its config too."""
    cfg = ModelConfig(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_head,
        attn_only=True,
        normalization="none",
        positional=positional,
        encoder="linear",
        readout="linear",
    )
    return cfg, build_native(cfg, d_in, n_labels, n_ctx, seed=0, layout=layout)


def induction_circuit_model(
    d_in: int, n_labels: int, n_pairs: int, n_heads: int = 2, sharpness: float = 40.0, logit_scale: float = 10.0
) -> NativeModel:
    """Build the hand-wired model for sequences of ``n_pairs`` pairs.

    Args:
        d_in: exemplar dimension (exemplars should have norm ~1, as the Gaussian family's do).
        n_labels: label vocabulary.
        n_pairs: context pairs (sequence length ``2 * n_pairs + 1``).
        n_heads: heads per layer; heads other than head 0 are inert.
        sharpness: attention logit of a match; larger is closer to hard attention.
        logit_scale: logit of the copied label.

    Returns:
        A plain native model; wrap it with :func:`icl_circuits.models.to_bridge`.
    """
    n_ctx = 2 * n_pairs + 1
    d_head = max(d_in + 1, n_ctx, n_labels)
    X, LAB, POS = 0, d_in, d_in + n_labels
    PREV = POS + n_ctx
    d_model = PREV + d_in
    cfg, model = bare_model(d_model, n_heads, d_head, d_in, n_labels, n_ctx)
    scale = d_head**0.5  # the native attention divides scores by sqrt(d_head)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        enc = model.tok_embed.encoder
        enc.weight[X : X + d_in] = torch.eye(d_in)
        model.tok_embed.weight[:, LAB : LAB + n_labels] = torch.eye(n_labels)
        model.pos.weight[:, POS : POS + n_ctx] = torch.eye(n_ctx)

        def head_slice(h: int) -> slice:
            return slice(h * d_head, (h + 1) * d_head)

        # Layer 0 head 0: previous token. q_i = e_i, k_j = e_{j+1}: score 1 iff j = i - 1.
        a0 = model.layers[0].attn
        hs = head_slice(0)
        q_map = torch.eye(n_ctx)
        # Exemplar positions (even) look at position 0 instead, as the key of position 0
        # carries dimension 1: only label tokens fetch their predecessor.
        q_map[:, 0::2] = 0
        q_map[1, 0::2] = 1
        a0.q.weight[hs][:n_ctx, POS : POS + n_ctx] = q_map * sharpness * scale
        a0.k.weight[hs][1:n_ctx, POS : POS + n_ctx - 1] = torch.eye(n_ctx - 1)
        a0.v.weight[hs][:d_in, X : X + d_in] = torch.eye(d_in)
        a0.o.weight[PREV : PREV + d_in, hs][:, :d_in] = torch.eye(d_in)

        # Layer 1 head 0: induction. q = X of the query, k = PREV, v = LAB -> LAB.
        a1 = model.layers[1].attn
        a1.q.weight[hs][:d_in, X : X + d_in] = torch.eye(d_in) * sharpness * scale
        a1.k.weight[hs][:d_in, PREV : PREV + d_in] = torch.eye(d_in)
        a1.v.weight[hs][:n_labels, LAB : LAB + n_labels] = torch.eye(n_labels)
        a1.o.weight[LAB : LAB + n_labels, hs][:, :n_labels] = torch.eye(n_labels)
        # Exemplar tokens' PREV holds position 0's exemplar (see layer 0); a constant query
        # dimension against the even positions keeps the induction head on label tokens.
        a1.q.bias[hs][d_in] = sharpness * scale
        a1.k.weight[hs][d_in, POS : POS + n_ctx : 2] = -2.0

        # Inert heads: every query looks at position 0 and writes nothing.
        for attn in (a0, a1):
            for h in range(1, n_heads):
                attn.q.weight[head_slice(h)][0, POS : POS + n_ctx] = sharpness * scale
                attn.k.weight[head_slice(h)][0, POS] = 1.0

        model.head.weight[:, LAB : LAB + n_labels] = torch.eye(n_labels) * logit_scale
    return model.eval()


#: The only edge of :func:`in_weight_model`: the query's exemplar straight into the readout.
IWL_EDGES = ("emb.x->readout",)
#: The edges of :func:`induction_circuit_model` (graph of :func:`probes.graph.build_graph`).
INDUCTION_EDGES = (
    "emb.x->L0H0.v",  # the previous-token head copies each exemplar ...
    "L0H0->L1H0.k",  # ... into PREV, which the induction head's keys read,
    "emb.x->L1H0.q",  # matched against the query's exemplar,
    "emb.y->L1H0.v",  # copying the label,
    "L1H0->readout",  # which the readout reads.
)


def in_weight_model(
    label_vectors: torch.Tensor, n_pairs: int, n_heads: int = 2, logit_scale: float = 10.0
) -> NativeModel:
    """A hand-wired in-weight model: the readout recalls the query's label from its exemplar alone.

    The residual stream holds the exemplar ``X`` (identity encoder) and a one-hot position;
    labels embed to nothing. Every head of both layers attends to position 0 and writes
    nothing, so the only computation is ``logits = logit_scale * X_query @ label_vectors.T``:
    with ``label_vectors[l]`` the mean of the class labelled ``l`` (e.g. a Gaussian source's
    ``means`` with ``K == L``) the model answers trained classes from memory and ignores its
    context (IW accuracy ~1, IC accuracy at chance). Ground truth edges: :data:`IWL_EDGES`.

    Args:
        label_vectors: ``[n_labels, d_in]`` the exemplar direction of each label.
        n_pairs: context pairs (sequence length ``2 * n_pairs + 1``).
        n_heads: heads per layer (all inert).
        logit_scale: readout gain.

    Returns:
        A plain native model; wrap it with :func:`icl_circuits.models.to_bridge`.
    """
    n_labels, d_in = label_vectors.shape
    n_ctx = 2 * n_pairs + 1
    X, POS = 0, d_in
    d_model = d_in + n_ctx
    cfg, model = bare_model(d_model, n_heads, max(n_ctx, 1), d_in, n_labels, n_ctx)
    d_head = cfg.head_dim
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.tok_embed.encoder.weight[X : X + d_in] = torch.eye(d_in)
        model.pos.weight[:, POS : POS + n_ctx] = torch.eye(n_ctx)
        for layer in model.layers:
            for h in range(n_heads):
                hs = slice(h * d_head, (h + 1) * d_head)
                layer.attn.q.weight[hs][0, POS : POS + n_ctx] = 40.0
                layer.attn.k.weight[hs][0, POS] = 1.0
        model.head.weight[:, X : X + d_in] = label_vectors * logit_scale
    return model.eval()
