"""Figures of discovered circuits: the circuit graph and its edges over training."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from probes.graph import READOUT, Graph  # noqa: E402

#: Colour of an edge by the receiver input it feeds.
INPUT_COLORS = {"q": "tab:blue", "k": "tab:green", "v": "tab:red", "mlp": "tab:purple", "readout": "black"}


def _positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """Node name -> (x, y): embeddings at the bottom, one row per layer, the readout on top."""
    pos: dict[str, tuple[float, float]] = {}
    embeds = graph.embed_nodes()
    for i, name in enumerate(embeds):
        pos[name] = (i - (len(embeds) - 1) / 2, 0.0)
    for layer in range(graph.n_layers):
        row = [n.name for n in graph.nodes if n.layer == layer]
        for i, name in enumerate(row):
            pos[name] = (i - (len(row) - 1) / 2, 1.0 + layer)
    pos[READOUT] = (0.0, 1.0 + graph.n_layers)
    return pos


def circuit_figure(graph: Graph, scores: pd.DataFrame, title: str = "", ax=None):
    """Draw a circuit: every node, the circuit's edges coloured by input and sized by score.

    Args:
        graph: the model's graph.
        scores: edge table with ``edge``, ``score`` and ``in_circuit`` (a
            :class:`probes.discovery.Circuit`'s ``scores``, or one step and split of the
            over-training ``edges`` table).
        title: axes title.
        ax: axes to draw on (a new figure when None).

    Returns:
        The figure.
    """
    fig, ax = (
        (ax.figure, ax) if ax is not None else plt.subplots(figsize=(2.2 + 1.3 * graph.n_heads, 2.2 + graph.n_layers))
    )
    pos = _positions(graph)
    kept = scores[scores["in_circuit"].astype(bool)]
    by_name = {e.name: e for e in graph.edges}
    top = float(kept["score"].abs().max()) if len(kept) else 1.0
    for _, row in kept.iterrows():
        e = by_name[row["edge"]]
        x0, y0 = pos[e.sender]
        x1, y1 = pos[e.receiver.split(".")[0]]
        # q / k / v land at slightly different points of the receiver.
        dx = {"q": -0.12, "k": 0.0, "v": 0.12}.get(e.input, 0.0)
        width = 0.5 + 4.0 * abs(float(row["score"])) / (top or 1.0)
        style = "-" if row["score"] >= 0 else ":"
        ax.annotate(
            "",
            xy=(x1 + dx, y1 - 0.12),
            xytext=(x0, y0 + 0.12),
            arrowprops={"arrowstyle": "-|>", "lw": width, "ls": style, "color": INPUT_COLORS.get(e.input, "gray")},
        )
    used = set(kept["edge"].map(lambda n: by_name[n].sender)) | set(
        kept["edge"].map(lambda n: by_name[n].receiver.split(".")[0])
    )
    for name, (x, y) in pos.items():
        ax.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=8,
            bbox={
                "boxstyle": "round",
                "fc": "lightyellow" if name in used else "white",
                "ec": "black" if name in used else "lightgray",
            },
            color="black" if name in used else "gray",
        )
    for inp, color in INPUT_COLORS.items():
        if (graph.attn_only and inp == "mlp") or not len(kept):
            continue
        ax.plot([], [], color=color, label=inp)
    if len(kept):
        ax.legend(loc="upper left", fontsize=7, frameon=False, title="into", title_fontsize=7)
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-0.5, graph.n_layers + 1.5)
    ax.axis("off")
    ax.set_title(title or f"circuit: {len(kept)} of {graph.n_edges} edges", fontsize=9)
    fig.tight_layout()
    return fig


def edge_heatmap(edges: pd.DataFrame, split: str, marks: dict[str, int | None] | None = None, max_edges: int = 30):
    """Edge scores over training for one split; dots mark the steps where an edge is in the circuit.

    Args:
        edges: the ``edges`` table of :func:`probes.circuits_over_training.circuits_over_training`.
        split: the split whose circuit is shown.
        marks: vertical lines, label -> step (e.g. the ICL emergence and peak steps).
        max_edges: show the edges most often in the circuit (then by final |score|).

    Returns:
        The figure.
    """
    sub = edges[edges["split"] == split]
    wide = sub.pivot_table(index="edge", columns="step", values="score")
    inside = sub.pivot_table(index="edge", columns="step", values="in_circuit", aggfunc="max").astype(float)
    order = (inside.sum(1) * 1e6 + wide.iloc[:, -1].abs()).sort_values(ascending=False).index[:max_edges]
    wide, inside = wide.loc[order], inside.loc[order]
    steps = wide.columns.to_numpy()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * len(order)))
    lim = float(np.nanmax(np.abs(wide.to_numpy()))) if wide.size else 1.0
    im = ax.imshow(wide.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    yy, xx = np.nonzero(inside.to_numpy() > 0)
    ax.scatter(xx, yy, s=4, c="black", marker="s", label="in circuit")
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    ax.set_xticks(ticks, [str(int(steps[i])) for i in ticks], fontsize=7)
    ax.set_xlabel("training step (checkpoint index, labelled by step)")
    for i, (label, step) in enumerate((marks or {}).items()):
        if step is None:
            continue
        x = int(np.searchsorted(steps, step))
        ax.axvline(x - 0.5, color=f"C{i + 1}", ls="--", lw=1, label=f"{label} (step {step})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.15, 1.0), frameon=False)
    fig.colorbar(im, ax=ax, label="edge score (logits)", fraction=0.04)
    ax.set_title(f"{split} circuit edges over training", fontsize=9)
    fig.tight_layout()
    return fig
