"""Figures of the Chan et al. 2024 reproduction (accuracy vs N, transformer next to the gate, noise)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from probes.figures import save  # noqa: E402

#: Split groups of the accuracy-vs-N figure: panel title -> (any, high, low) splits.
GROUPS = {
    "IBD": ("IBD", "IBD-high", "IBD-low"),
    "OOBD (paper's)": ("OOBD", "OOBD-high", "OOBD-low"),
    "OOBD-rel": ("OOBD-rel", "OOBD-rel-high", "OOBD-rel-low"),
    "IBD-irr": ("IBD-irr", "IBD-irr-high", "IBD-irr-low"),
}


def _log2_axis(ax: plt.Axes, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([f"$2^{{{int(math.log2(n))}}}$" for n in ns], fontsize=7)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def _line(ax: plt.Axes, table: pd.DataFrame, split: str, metric: str, p: float, **kw) -> None:
    """Seed mean of ``metric`` on ``split`` against N, with the seeds' range shaded."""
    rows = table[(table["split"] == split) & (table["metric"] == metric) & np.isclose(table["p_relevant"], p)]
    if rows.empty:
        return
    stats = rows.groupby("N")["value"].agg(["mean", "min", "max"]).sort_index()
    (line,) = ax.plot(stats.index, stats["mean"], marker="o", ms=3, **kw)
    if rows["seed"].nunique() > 1:
        ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)


def accuracy_figure(table: pd.DataFrame, metric: str, title: str, path: Path) -> Path:
    """Accuracy vs N: rows = training p_relevant, columns = split groups, lines = any/high/low query."""
    ps = sorted(table["p_relevant"].unique())
    ns = sorted(table["N"].unique())
    fig, axes = plt.subplots(len(ps), len(GROUPS), figsize=(3.2 * len(GROUPS), 2.6 * len(ps)), squeeze=False)
    for i, p in enumerate(ps):
        for j, (group, splits) in enumerate(GROUPS.items()):
            ax = axes[i][j]
            for split, label in zip(splits, ("any", "high", "low"), strict=True):
                _line(ax, table, split, metric, p, label=f"{label} queries")
            _log2_axis(ax, ns)
            ax.set_title(f"{group}, p_rel {p:g}", fontsize=9)
            if i == len(ps) - 1:
                ax.set_xlabel("training-set size N")
            if j == 0:
                ax.set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
    return path


def side_by_side_figure(t: pd.DataFrame, g: pd.DataFrame, path: Path) -> Path:
    """Left: rare-class ICL of the transformer and of the gate's f; right: the gate's alpha; against N."""
    ns = sorted(set(t["N"]) | set(g["N"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    colors = {p: f"C{i}" for i, p in enumerate(sorted(set(t["p_relevant"]) | set(g["p_relevant"])))}
    for p in sorted(t["p_relevant"].unique()):
        _line(left, t, "OOBD-low", "acc", p, color=colors[p], label=f"transformer, p_rel {p:g}")
    for p in sorted(g["p_relevant"].unique()):
        _line(left, g, "OOBD-low", "acc_f", p, color=colors[p], ls="--", label=f"gating model f, p_rel {p:g}")
    left.set_title("Rare-class ICL: OOBD accuracy on low-frequency queries")
    left.set_ylabel("accuracy")
    for p in sorted(g["p_relevant"].unique()):
        for split, style in (("IBD-low", "-"), ("IBD-high", "--")):
            label = f"{split[4:]} queries, p_rel {p:g}"
            _line(right, g, split, "alpha", p, color=colors[p], ls=style, label=label)
    right.set_title("Gating model (Algorithm 1): IWL share alpha")
    right.set_ylabel("mean alpha(x)")
    for ax in (left, right):
        _log2_axis(ax, ns)
        ax.set_xlabel("training-set size N")
    left.legend(fontsize=7)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save(fig, path)
    return path


def noise_figure(t: pd.DataFrame, p: float, path: Path) -> Path:
    """Rare-class ICL (OOBD-low) and rare-class IWL (IBD-irr-low) against N, one line per sigma."""
    rows = t[np.isclose(t["p_relevant"], p)]
    ns = sorted(rows["N"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, (split, title) in zip(
        axes, (("OOBD-low", "ICL: OOBD-low"), ("IBD-irr-low", "IWL: IBD-irr-low")), strict=True
    ):
        for i, sigma in enumerate(sorted(rows["sigma"].unique())):
            sub = rows[np.isclose(rows["sigma"], sigma)]
            _line(ax, sub, split, "acc", p, color=f"C{i}", label=f"sigma {sigma:g}")
        _log2_axis(ax, ns)
        ax.set_title(f"{title}, p_rel {p:g}", fontsize=10)
        ax.set_xlabel("training-set size N")
        ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    return path
