"""The computational graph of a model, as senders, receivers and the edges between them.

Circuit discovery (:mod:`probes.eap`, :mod:`probes.discovery`) scores *edges*: the direct
contribution of one component's output to one component's input, all other paths left as
they are (Conmy et al. 2023; Syed et al. 2023). For our native TransformerLens models:

Senders (nodes that write into the residual stream):
    ``emb.x``: the token embedding at exemplar positions (even positions, the query included);
    ``emb.y``: the token embedding at label positions (odd positions). A model without the
    bursty layout (``split_embed=False``) has one node ``emb``. The position embedding is the
    same in a clean and a corrupted input, so its edges cannot be scored by patching; it is
    kept in every circuit and is not a node.
    ``L{l}H{h}``: head ``h`` of layer ``l``, its output ``z[:, :, h] @ W_O[l, h]``.
    ``M{l}``: the MLP of block ``l`` (absent in attention-only models).

Receivers (inputs that read the residual stream):
    ``L{l}H{h}.q``, ``.k``, ``.v``: the query, key and value inputs of a head;
    ``M{l}``: an MLP's input; ``readout``: the final norm and readout (unembedding or MLP
    readout) at the query position.

An edge ``sender -> receiver`` exists when the sender writes before the receiver reads:
embeddings feed everything, a head of layer ``l`` feeds heads of later layers, the MLP of its
own and later layers and the readout; an MLP of layer ``l`` feeds later layers and the readout.
Edges are named ``"{sender}->{receiver}"``, e.g. ``"L0H0->L1H0.k"``. Biases (``b_O``, MLP
output biases) are constants, not nodes.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

EMBED_X, EMBED_Y, EMBED = "emb.x", "emb.y", "emb"
READOUT = "readout"
QKV = ("q", "k", "v")


def head_name(layer: int, head: int) -> str:
    """Node name of head ``head`` of layer ``layer``: ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


def mlp_name(layer: int) -> str:
    """Node name of the MLP of block ``layer``: ``M{layer}``."""
    return f"M{layer}"


@dataclasses.dataclass(frozen=True)
class Node:
    """A sender: ``kind`` is ``embed``, ``head`` or ``mlp``; ``layer`` is -1 for embeddings."""

    name: str
    kind: str
    layer: int
    head_index: int = -1


@dataclasses.dataclass(frozen=True)
class Edge:
    """``sender -> receiver``; ``receiver`` names the input (``L1H0.k``, ``M0``, ``readout``).

    Attributes:
        sender: sender node name.
        receiver: receiver input name.
        layer: the receiver's layer (``n_layers`` for the readout).
        head_index: the receiver head (-1 for an MLP or the readout).
        input: ``q``, ``k``, ``v``, ``mlp`` or ``readout``.
    """

    sender: str
    receiver: str
    layer: int
    head_index: int
    input: str

    @property
    def name(self) -> str:
        return f"{self.sender}->{self.receiver}"


@dataclasses.dataclass(frozen=True)
class Graph:
    """Senders and edges of one model; edge ``i`` is ``edges[i]`` (the mask index).

    Attributes:
        n_layers: blocks.
        n_heads: heads per block.
        attn_only: no MLP nodes.
        split_embed: the embedding is split into ``emb.x`` and ``emb.y``.
        nodes: senders in forward order.
        edges: every edge, grouped by receiver in forward order.
    """

    n_layers: int
    n_heads: int
    attn_only: bool
    split_embed: bool
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def edge_names(self) -> list[str]:
        return [e.name for e in self.edges]

    def index(self, edge: str) -> int:
        """Mask index of the edge named ``edge``; a KeyError names the valid form."""
        try:
            return self._index[edge]
        except KeyError:
            raise KeyError(f"unknown edge {edge!r}; edges look like {self.edges[0].name!r}") from None

    @property
    def _index(self) -> dict[str, int]:
        cache = self.__dict__.get("_index_cache")
        if cache is None:
            cache = {e.name: i for i, e in enumerate(self.edges)}
            object.__setattr__(self, "_index_cache", cache)
        return cache

    def embed_nodes(self) -> list[str]:
        return [n.name for n in self.nodes if n.kind == "embed"]

    def senders_before(self, layer: int, mlp: bool = False) -> list[str]:
        """Senders that write before block ``layer``'s attention (or its MLP with ``mlp``)."""
        out = []
        for n in self.nodes:
            if n.kind == "embed" or n.layer < layer or (mlp and n.kind == "head" and n.layer == layer):
                out.append(n.name)
        return out

    def table(self) -> pd.DataFrame:
        """Tidy: one row per edge (``edge, sender, receiver, layer, head_index, input``)."""
        return pd.DataFrame(
            [
                {
                    "edge": e.name,
                    "sender": e.sender,
                    "receiver": e.receiver,
                    "layer": e.layer,
                    "head_index": e.head_index,
                    "input": e.input,
                }
                for e in self.edges
            ]
        )


def build_graph(model, split_embed: bool = True) -> Graph:
    """The graph of ``model`` (a TransformerBridge of a native model, or anything with ``cfg``).

    Args:
        model: provides ``cfg.n_layers``, ``cfg.n_heads`` and ``cfg.attn_only``.
        split_embed: split the embedding into exemplar (``emb.x``) and label (``emb.y``)
            positions, the layout of :class:`icl_circuits.data.Batch`.

    Returns:
        The :class:`Graph`.
    """
    cfg = model.cfg
    n_layers, n_heads, attn_only = int(cfg.n_layers), int(cfg.n_heads), bool(getattr(cfg, "attn_only", False))
    nodes: list[Node] = (
        [Node(EMBED_X, "embed", -1), Node(EMBED_Y, "embed", -1)] if split_embed else [Node(EMBED, "embed", -1)]
    )
    for layer in range(n_layers):
        nodes += [Node(head_name(layer, h), "head", layer, h) for h in range(n_heads)]
        if not attn_only:
            nodes.append(Node(mlp_name(layer), "mlp", layer))
    graph = Graph(n_layers, n_heads, attn_only, split_embed, tuple(nodes), ())
    edges: list[Edge] = []
    for layer in range(n_layers):
        senders = graph.senders_before(layer)
        for h in range(n_heads):
            for inp in QKV:
                receiver = f"{head_name(layer, h)}.{inp}"
                edges += [Edge(s, receiver, layer, h, inp) for s in senders]
        if not attn_only:
            edges += [Edge(s, mlp_name(layer), layer, -1, "mlp") for s in graph.senders_before(layer, mlp=True)]
    edges += [Edge(n.name, READOUT, n_layers, -1, "readout") for n in nodes]
    return dataclasses.replace(graph, edges=tuple(edges))
