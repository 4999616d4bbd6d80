"""Matplotlib figures over training (log-step axes), for notebooks and papers alike."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.scale import SymmetricalLogTransform  # noqa: E402

from probes.competition import Transition  # noqa: E402

COLORS = {"ICL": "tab:blue", "IWL": "tab:orange", "CIWL": "tab:green"}
#: Ablation conditions: colour, line style and how the legend names them.
CONDITION_STYLE = {
    "clean": ("black", "-", "clean (nothing ablated)"),
    "ICL circuit": ("tab:blue", "-", "ICL circuit ablated"),
    "random heads": ("tab:gray", "--", "as many random heads outside the circuit ablated (mean)"),
    "complement": ("tab:gray", ":", "every head outside the circuit ablated"),
    "IWL path": ("tab:orange", "-", "IWL path ablated"),
}
#: Colour range of per-head scores that are attention masses (shared by every heatmap).
ATTENTION_SCORES = ("task_induction", "prev_token", "prefix_matching")


def _log_x(ax, steps) -> None:
    """Symlog step axis from step 0 to the last step: no empty negative range."""
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(float(np.max(steps)), 1.0))
    ax.set_xlabel("training step")


def competition_figure(table: pd.DataFrame, transitions: dict[str, Transition] | None = None):
    """ICL / IWL / CIWL accuracy and training loss against step.

    Only detected transitions are marked: the emergence step (dashed line) and the peak
    (star) of a curve that emerged, and the drop of a transient one.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("ICL", "IWL", "CIWL"):
        if name in table:
            ax.plot(table.index, table[name], label=f"{name} accuracy", color=COLORS[name], marker=".", ms=3)
    for name, tr in (transitions or {}).items():
        color = COLORS.get(name, "k")
        if not tr.emerged:
            continue
        if tr.emergence_step is not None:
            ax.axvline(tr.emergence_step, color=color, ls="--", lw=1)
            ax.annotate(f"{name} emerges", (tr.emergence_step, 0.02), color=color, fontsize=8, rotation=90)
        ax.plot([tr.peak_step], [tr.peak], marker="*", ms=12, color=color, ls="none", label=f"{name} peak")
        if tr.transient:
            ax.annotate(
                f"{name} transient (-{tr.drop:.2f})", (table.index.max(), tr.final), color=color, fontsize=8, ha="right"
            )
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    _log_x(ax, table.index)
    handles, labels = ax.get_legend_handles_labels()
    if "train_loss" in table:
        ax2 = ax.twinx()
        (line,) = ax2.plot(table.index, table["train_loss"], color="gray", lw=1, alpha=0.7, label="train loss")
        ax2.set_ylabel("train loss", color="gray")
        handles, labels = handles + [line], labels + ["train loss (right axis)"]
    ax.legend(handles, labels, loc="center left", fontsize=8)
    ax.set_title("ICL vs IWL over training")
    fig.tight_layout()
    return fig


def _cell_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between checkpoints on the symlog step axis (first and last at the steps)."""
    tr = SymmetricalLogTransform(10, 1, 1)
    pos = tr.transform(steps)
    if len(pos) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (pos[:-1] + pos[1:]) / 2
    return np.concatenate([[steps[0]], tr.inverted().transform(mids), [steps[-1]]])


def head_heatmap(df: pd.DataFrame, metric: str, condition: str = "clean", vmin=None, vmax=None):
    """Per-head ``metric`` over training: rows are heads (LlHh), columns checkpoints at their steps.

    Args:
        df: tidy table of :func:`probes.over_training.analyze_run`.
        metric: a per-head score.
        condition: which condition's rows.
        vmin, vmax: colour range; default 0..1 for attention-mass scores (so every such
            heatmap shares one range), else the data's range.
    """
    sub = df[(df.metric == metric) & (df.condition == condition) & df.layer.notna()]
    if sub.empty:
        raise ValueError(f"metric: no per-head values for {metric!r}")
    sub = sub.assign(name=[f"L{int(layer)}H{int(h)}" for layer, h in zip(sub.layer, sub.head_index, strict=True)])
    grid = sub.pivot_table(index="name", columns="step", values="value")
    if metric in ATTENTION_SCORES:
        vmin = 0.0 if vmin is None else vmin
        vmax = 1.0 if vmax is None else vmax
    edges = _cell_edges(grid.columns.to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(grid) + 1.6))
    mesh = ax.pcolormesh(
        edges, np.arange(len(grid) + 1) - 0.5, grid.to_numpy(), cmap="viridis", vmin=vmin, vmax=vmax, shading="flat"
    )
    ax.set_yticks(range(len(grid)), grid.index)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("training step")
    ax.set_ylabel("head")
    ax.set_title(f"{metric} per head")
    fig.colorbar(mesh, ax=ax, label=f"{metric} score")
    fig.tight_layout()
    return fig


def ablation_figure(df: pd.DataFrame, splits: list[str], metric: str = "acc"):
    """``metric`` on each split against step: clean and with each subcircuit ablated.

    The legend says what was ablated (the circuit's heads when ``df.attrs`` has them).
    """
    circuit = df.attrs.get("circuit")
    names = {cond: label for cond, (_, _, label) in CONDITION_STYLE.items()}
    if circuit is not None and getattr(circuit, "heads", ()):
        heads = ", ".join(f"L{layer}H{h}" for layer, h in circuit.heads)
        names["ICL circuit"] = f"ICL circuit ablated ({heads})"
        names["random heads"] = f"{len(circuit.heads)} random heads outside it ablated (mean)"
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.8), squeeze=False)
    rows = df[(df.metric == metric) & df.layer.isna()]
    for ax, split in zip(axes[0], splits, strict=True):
        here = rows[rows.split == split]
        order = [c for c in CONDITION_STYLE if c in set(here.condition)]
        for cond in order + sorted(set(here.condition) - set(order)):
            color, ls, _ = CONDITION_STYLE.get(cond, (None, "-." if cond.startswith("head ") else "-", cond))
            sub = here[here.condition == cond].sort_values("step")
            ax.plot(sub.step, sub.value, label=names.get(cond, f"{cond} ablated"), color=color, ls=ls, marker=".", ms=3)
        ax.set_title(split)
        ax.set_ylim(-0.02, 1.02)
        _log_x(ax, rows.step)
    axes[0][0].set_ylabel(metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle("accuracy over training, clean and with each subcircuit ablated")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def save(fig, path) -> None:
    """Save as PNG (or SVG/PDF by extension) and close; the box fits every label (none clipped)."""
    fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
