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
    ``L{l}H{h}.q``, ``.k``, ``.v``: the query, key and value inputs of a head. With grouped-query
    attention (a language model whose ``cfg.n_key_value_heads`` is below ``n_heads``) keys and
    values belong to key-value heads, each shared by ``n_heads / n_key_value_heads`` query
    heads, so their inputs are ``L{l}G{g}.k`` and ``L{l}G{g}.v`` for group ``g`` (query heads
    ``g * n_rep .. (g + 1) * n_rep - 1``, the grouping of ``repeat_kv``);
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

from icl_circuits.models.build import require_interleaved

EMBED_X, EMBED_Y, EMBED = "emb.x", "emb.y", "emb"
READOUT = "readout"
QKV = ("q", "k", "v")


def head_name(layer: int, head: int) -> str:
    """Node name of head ``head`` of layer ``layer``: ``L{layer}H{head}``."""
    return f"L{layer}H{head}"


def kv_name(layer: int, group: int) -> str:
    """Receiver node of key-value head ``group`` of layer ``layer`` (grouped-query attention): ``L{layer}G{group}``."""
    return f"L{layer}G{group}"


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
        head_index: the receiver head (its key-value head for ``k``/``v`` inputs under grouped-query
            attention; -1 for an MLP or the readout).
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
        n_kv_heads: key-value heads per block (``n_heads`` without grouped-query attention).
    """

    n_layers: int
    n_heads: int
    attn_only: bool
    split_embed: bool
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    n_kv_heads: int = 0

    def __post_init__(self) -> None:
        if not self.n_kv_heads:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: key / value inputs are per key-value head (``L{l}G{g}.k``)."""
        return self.n_kv_heads != self.n_heads

    def n_cols(self, inp: str) -> int:
        """Receivers of input ``inp`` per block: heads for ``q``, key-value heads for ``k``/``v``."""
        return self.n_kv_heads if inp in ("k", "v") else self.n_heads

    def receiver_node(self, inp: str, layer: int, col: int) -> str:
        """Name of the node whose input ``inp`` is column ``col`` of block ``layer``."""
        return kv_name(layer, col) if self.grouped and inp in ("k", "v") else head_name(layer, col)

    def reading_heads(self, receiver: str) -> list[str]:
        """The heads that read input ``receiver`` (one, or a key-value group's query heads; [] otherwise)."""
        node = receiver.split(".")[0]
        if node.startswith("L") and "G" in node:
            layer, group = (int(x) for x in node[1:].split("G"))
            rep = self.n_heads // self.n_kv_heads
            return [head_name(layer, h) for h in range(group * rep, (group + 1) * rep)]
        return [node] if node.startswith("L") else []

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
        model: provides ``cfg.n_layers``, ``cfg.n_heads``, ``cfg.attn_only`` and (grouped-query
            attention) ``cfg.n_key_value_heads``.
        split_embed: split the embedding into exemplar (``emb.x``) and label (``emb.y``)
            positions, the layout of :class:`icl_circuits.data.Batch` (False for a language model).

    Returns:
        The :class:`Graph`.
    """
    if split_embed:
        require_interleaved(model, "build_graph", "a packed token holds exemplar and label, emb.x / emb.y cannot split")
    cfg = model.cfg
    n_layers, n_heads, attn_only = int(cfg.n_layers), int(cfg.n_heads), bool(getattr(cfg, "attn_only", False))
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    nodes: list[Node] = (
        [Node(EMBED_X, "embed", -1), Node(EMBED_Y, "embed", -1)] if split_embed else [Node(EMBED, "embed", -1)]
    )
    for layer in range(n_layers):
        nodes += [Node(head_name(layer, h), "head", layer, h) for h in range(n_heads)]
        if not attn_only:
            nodes.append(Node(mlp_name(layer), "mlp", layer))
    graph = Graph(n_layers, n_heads, attn_only, split_embed, tuple(nodes), (), n_kv)
    edges: list[Edge] = []
    for layer in range(n_layers):
        senders = graph.senders_before(layer)
        # head by head (q, k, v); with grouped-query attention, queries first, then keys, values
        cells = (
            [(inp, col) for inp in QKV for col in range(graph.n_cols(inp))]
            if graph.grouped
            else [(inp, h) for h in range(n_heads) for inp in QKV]
        )
        for inp, col in cells:
            receiver = f"{graph.receiver_node(inp, layer, col)}.{inp}"
            edges += [Edge(s, receiver, layer, col, inp) for s in senders]
        if not attn_only:
            edges += [Edge(s, mlp_name(layer), layer, -1, "mlp") for s in graph.senders_before(layer, mlp=True)]
    edges += [Edge(n.name, READOUT, n_layers, -1, "readout") for n in nodes]
    return dataclasses.replace(graph, edges=tuple(edges))
