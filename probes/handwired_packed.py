"""A hand-wired one-layer model for the packed layout: ground truth for the packed probes.

In the packed layout (``data.layout = "packed"``) each context item is one token holding its
exemplar and its label, and the query is the last token with its label part zeroed. One
attention layer then suffices for in-context learning: the query attends to the item
holding its class and copies that item's label. The residual stream
(``normalization="none"``, no positional code) is split into three subspaces::

    X    [d_in]     the exemplar (the encoder is the identity onto it)
    LAB  [n_labels] the item's one-hot label (zero at the query)
    HAS  [1]        1 at context items (the label embedding writes it), 0 at the query

Head 0 is the induction-like head: its score of key ``i`` is
``sharpness * (<x_q, x_i> + has_i / 2)``: ``1.5 sharpness`` on the items of the query's class,
``sharpness`` on the query itself and ``~ sharpness / 2`` on other items. So the query attends
to the items holding its class, and to itself (label part zero: nothing copied) when none
does; its value and output copy ``LAB``, which the unembedding reads. Other heads attend uniformly and
write nothing. With ``label_vectors`` the unembedding also reads ``X`` through them: an
in-weight path that recalls a trained class's label from the query alone (the IWL
subcircuit), next to the attention path (the ICL subcircuit).
"""

from __future__ import annotations

import torch
from transformer_lens.model_bridge.sources.native import NativeModel

from probes.handwired import bare_model

#: The induction-like head of :func:`packed_induction_model`.
PACKED_INDUCTION_HEAD = (0, 0)


def packed_induction_model(
    d_in: int,
    n_labels: int,
    n_pairs: int,
    n_heads: int = 1,
    sharpness: float = 40.0,
    logit_scale: float = 10.0,
    label_vectors: torch.Tensor | None = None,
    iwl_scale: float = 10.0,
) -> NativeModel:
    """Build the hand-wired one-layer packed model for sequences of ``n_pairs`` items.

    Args:
        d_in: exemplar dimension (exemplars of norm ~1, as the Gaussian family's).
        n_labels: label vocabulary.
        n_pairs: context items (sequence length ``n_pairs + 1``).
        n_heads: heads; heads other than head 0 are inert.
        sharpness: attention logit of a match; larger is closer to hard attention.
        logit_scale: logit of the copied label.
        label_vectors: ``[n_labels, d_in]`` optional in-weight path: the unembedding adds
            ``iwl_scale * X_query @ label_vectors.T`` (e.g. a Gaussian source's ``means``
            with ``K == L``).
        iwl_scale: gain of that path.

    Returns:
        A plain native model; wrap it with :func:`icl_circuits.models.to_bridge`.
    """
    n_ctx = n_pairs + 1
    X, LAB, HAS = 0, d_in, d_in + n_labels
    d_model = HAS + 1
    d_head = d_model
    _, model = bare_model(
        d_model, n_heads, d_head, d_in, n_labels, n_ctx, n_layers=1, positional="none", layout="packed"
    )
    scale = d_head**0.5  # the native attention divides scores by sqrt(d_head)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.tok_embed.encoder.weight[X : X + d_in] = torch.eye(d_in)
        model.tok_embed.weight[:, LAB : LAB + n_labels] = torch.eye(n_labels)
        model.tok_embed.weight[:, HAS] = 1.0
        attn = model.layers[0].attn
        hs = slice(0, d_head)
        attn.q.weight[hs][:d_in, X : X + d_in] = torch.eye(d_in) * sharpness * scale
        attn.q.bias[hs][d_in] = 0.5 * sharpness * scale
        attn.k.weight[hs][:d_in, X : X + d_in] = torch.eye(d_in)
        attn.k.weight[hs][d_in, HAS] = 1.0
        attn.v.weight[hs][:n_labels, LAB : LAB + n_labels] = torch.eye(n_labels)
        attn.o.weight[LAB : LAB + n_labels, hs][:, :n_labels] = torch.eye(n_labels)
        model.head.weight[:, LAB : LAB + n_labels] = torch.eye(n_labels) * logit_scale
        if label_vectors is not None:
            model.head.weight[:, X : X + d_in] = label_vectors * iwl_scale
    return model.eval()
