"""Matplotlib figures over training (log-step axes), for notebooks and papers alike."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from probes.competition import Transition  # noqa: E402

COLORS = {"ICL": "tab:blue", "IWL": "tab:orange", "CIWL": "tab:green"}


def _log_x(ax) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step")


def competition_figure(table: pd.DataFrame, transitions: dict[str, Transition] | None = None):
    """ICL / IWL / CIWL accuracy and training loss against step, transitions marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("ICL", "IWL", "CIWL"):
        if name in table:
            ax.plot(table.index, table[name], label=f"{name} accuracy", color=COLORS[name], marker=".", ms=3)
    for name, tr in (transitions or {}).items():
        color = COLORS.get(name, "k")
        if tr.emerged and tr.emergence_step is not None:
            ax.axvline(tr.emergence_step, color=color, ls="--", lw=1)
            ax.annotate(f"{name} emerges", (tr.emergence_step, 0.02), color=color, fontsize=8, rotation=90)
        ax.plot([tr.peak_step], [tr.peak], marker="*", ms=12, color=color)
        if tr.transient:
            ax.annotate(
                f"{name} transient (-{tr.drop:.2f})", (table.index.max(), tr.final), color=color, fontsize=8, ha="right"
            )
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    _log_x(ax)
    if "train_loss" in table:
        ax2 = ax.twinx()
        ax2.plot(table.index, table["train_loss"], color="gray", lw=1, alpha=0.7, label="train loss")
        ax2.set_ylabel("train loss", color="gray")
    ax.legend(loc="center left", fontsize=8)
    ax.set_title("ICL vs IWL over training")
    fig.tight_layout()
    return fig


def head_heatmap(df: pd.DataFrame, metric: str, condition: str = "clean"):
    """Per-head ``metric`` over training: rows are heads (LlHh), columns checkpoints."""
    sub = df[(df.metric == metric) & (df.condition == condition) & df.layer.notna()]
    if sub.empty:
        raise ValueError(f"metric: no per-head values for {metric!r}")
    sub = sub.assign(name=[f"L{int(layer)}H{int(h)}" for layer, h in zip(sub.layer, sub["head"], strict=True)])
    grid = sub.pivot_table(index="name", columns="step", values="value")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(grid) + 1.5))
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(grid)), grid.index)
    steps = grid.columns.to_numpy()
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(8, len(steps))).astype(int))
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks], rotation=45)
    ax.set_xlabel("checkpoint step")
    ax.set_title(f"{metric} per head")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def ablation_figure(df: pd.DataFrame, splits: list[str], metric: str = "acc"):
    """``metric`` on each split against step: clean and with each subcircuit ablated."""
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.5), squeeze=False)
    rows = df[(df.metric == metric) & df.layer.isna()]
    for ax, split in zip(axes[0], splits, strict=True):
        for cond, sub in rows[rows.split == split].groupby("condition"):
            sub = sub.sort_values("step")
            ax.plot(sub.step, sub.value, label=cond, marker=".", ms=3)
        ax.set_title(split)
        ax.set_ylim(-0.02, 1.02)
        _log_x(ax)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("subcircuit ablations over training")
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    """Save as PNG (or SVG/PDF by extension) and close."""
    fig.savefig(path, dpi=120)
    plt.close(fig)
