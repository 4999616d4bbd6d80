"""Phase diagrams: a final metric over two grid axes, averaged over seeds (and any other axes)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from icl_circuits.errors import ICLError  # noqa: E402
from icl_circuits.fileio import write_atomic  # noqa: E402
from icl_circuits.runs import layout  # noqa: E402

SEED_AXIS = "seed"


def final_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its last checkpoint (``kind == metrics``)."""
    df = results[results["kind"] == "metrics"] if "kind" in results else results
    last = df.groupby("point")["step"].transform("max")
    return df[df["step"] == last]


def _axis_columns(results: pd.DataFrame) -> list[str]:
    fixed = {"point", "kind", "step", "split", "metric", "layer", "head_index", "value"}
    return [c for c in results.columns if c not in fixed]


def _is_pow2(values) -> bool:
    try:
        return all(float(v) > 0 and float(v) == int(v) and int(v) & (int(v) - 1) == 0 for v in values)
    except (TypeError, ValueError):
        return False


def _labels(values) -> list[str]:
    if _is_pow2(values) and len(values) > 1:
        return [f"$2^{{{int(math.log2(int(v)))}}}$" for v in values]
    return [f"{v:g}" if isinstance(v, float) else str(v) for v in values]


def _sorted_values(series: pd.Series) -> list:
    values = list(pd.unique(series))
    try:
        return sorted(values)
    except TypeError:
        return values


def phase_table(results: pd.DataFrame, x: str, y: str | None, split: str, metric: str = "acc") -> pd.DataFrame:
    """Final ``split``/``metric`` per (``y``, ``x``) cell: mean over seeds and every other axis."""
    axes = _axis_columns(results)
    for axis in (x, y):
        if axis is not None and axis not in axes:
            raise ICLError(f"phase diagram: {axis!r} is not a grid axis (axes: {', '.join(axes)})")
    df = final_rows(results)
    df = df[(df["split"] == split) & (df["metric"] == metric)]
    if df.empty:
        have = sorted(set(results["split"].dropna()))
        raise ICLError(f"phase diagram: no final {split}/{metric} values (splits: {', '.join(map(str, have))})")
    keys = [y, x] if y is not None else [x]
    table = df.groupby(keys)["value"].mean()
    if y is None:
        return table.to_frame().T.rename(index={"value": ""})
    table = table.unstack(x)
    return table.reindex(index=_sorted_values(df[y]), columns=_sorted_values(df[x]))


def phase_diagram(results: pd.DataFrame, x: str, y: str | None = None, split: str = "IC", metric: str = "acc", ax=None):
    """Heatmap of each run's final ``split``/``metric`` over axes ``x`` and ``y``.

    Cells average over seeds and every other grid axis; axes whose values are powers of two
    get ``2^k`` tick labels (the grid cells are then evenly spaced in log2). Missing cells
    (runs not finished) stay blank.

    Args:
        results: ``results.csv`` of a sweep (:func:`icl_circuits.sweeps.read_results`).
        x, y: grid axes (columns of ``results``); ``y=None`` gives a single row.
        split, metric: e.g. ``"IC"``/``"acc"`` (the run's ICL split) or ``"IW"``/``"acc"``.
        ax: draw into this matplotlib axes instead of a new figure.

    Returns:
        The matplotlib figure.
    """
    table = phase_table(results, x, y, split, metric)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * max(3, table.shape[1]), 1.4 + 0.6 * max(3, table.shape[0])))
    else:
        fig = ax.figure
    values = table.to_numpy(dtype=float)
    bounded = metric in ("acc",) or (np.nanmin(values) >= 0 and np.nanmax(values) <= 1)
    im = ax.imshow(
        np.ma.masked_invalid(values),
        origin="lower",
        aspect="auto",
        cmap="viridis",
        vmin=0.0 if bounded else None,
        vmax=1.0 if bounded else None,
    )
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(table.shape[1]), _labels(list(table.columns)))
    ax.set_xlabel(x)
    if y is None:
        ax.set_yticks([])
    else:
        ax.set_yticks(range(table.shape[0]), _labels(list(table.index)))
        ax.set_ylabel(y)
    others = [a for a in _axis_columns(results) if a not in (x, y)]
    note = ""
    if others:
        n = {a: results[a].nunique() for a in others}
        note = " (mean over " + ", ".join(f"{v} {a}{'s' * (v != 1 and a == SEED_AXIS)}" for a, v in n.items()) + ")"
    ax.set_title(f"final {split} {metric}{note}", fontsize=10)
    fig.colorbar(im, ax=ax, label=f"{split} {metric}")
    fig.tight_layout()
    return fig


def phase_axes(axes: list[str]) -> tuple[str, str | None] | None:
    """The first two non-seed axes (x, y); ``(x, None)`` with one; None with none."""
    grid = [a for a in axes if a != SEED_AXIS]
    if not grid:
        return None
    return grid[0], (grid[1] if len(grid) > 1 else None)


def write_phase_diagrams(out: Path, results: pd.DataFrame, points) -> list[Path]:
    """``phase_<split>.png`` of the final accuracy on the ICL and IWL splits of the first point's data."""
    chosen = phase_axes(list(points[0].values))
    if chosen is None:
        return []
    x, y = chosen
    cfg = points[0].config
    source = cfg.data.source_class()  # the split names; no need to build the data
    paths = []
    for split in dict.fromkeys([source.icl_split, source.iwl_split]):
        if not ((results["split"] == split) & (results["metric"] == "acc")).any():
            continue
        fig = phase_diagram(results, x=x, y=y, split=split, metric="acc")
        path = Path(out) / layout.SWEEP_PHASE.format(split=split)
        png = io.BytesIO()
        fig.savefig(png, dpi=120, format="png")
        plt.close(fig)
        write_atomic(path, png.getvalue(), overwrite=True)
        paths.append(path)
    return paths
