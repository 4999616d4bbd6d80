"""Essential dynamics: the principal components of a model's outputs over training.

After Hoogland et al. 2024: each checkpoint's query log-probabilities on a fixed probe batch
(the ICL and IWL splits' evaluation sequences, half each) are flattened into one vector; the
vectors of all checkpoints are centred and reduced by PCA (an SVD). The trajectory through
the first components bends where the model's behaviour changes direction: its turning points
(:func:`turning_points`) are candidate stage boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icl_circuits.data import build_source
from icl_circuits.models.build import query_logits
from icl_circuits.runs.read import load_config, load_native
from probes.over_training import resolve_steps

FIG = "essential_dynamics.png"


def probe_tokens(source, n: int = 256) -> torch.Tensor:
    """The fixed probe batch: ``n // 2`` sequences of the ICL split, then of the IWL split."""
    half = max(1, n // 2)
    return torch.cat([source.eval_batch(s, half).tokens() for s in (source.icl_split, source.iwl_split)])


@torch.no_grad()
def outputs(model: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """Query log-probabilities of ``model`` on ``tokens``, flattened: ``[n * n_labels]``."""
    return torch.log_softmax(query_logits(model, tokens).float(), -1).flatten().numpy()


def pca(vectors: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(projections [T, k], explained variance ratio [k])`` of the rows of ``vectors`` (centred)."""
    centred = vectors - vectors.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(k, len(s))
    var = s**2
    return u[:, :k] * s[:k], var[:k] / max(var.sum(), 1e-30)


def turning_points(points: np.ndarray, min_angle: float = 60.0, smooth: int = 3, straight: float = 0.6) -> list[int]:
    """Indices where the trajectory ``points [T, k]`` turns by at least ``min_angle`` degrees.

    The turning angle at ``t`` is the angle between the displacements ``t - smooth -> t`` and
    ``t -> t + smooth`` (fewer checkpoints at the ends). Both must be directed motion, not
    wandering: each displacement at least ``straight`` of the path length it spans (a random
    walk, as late in training when the outputs only sharpen, turns at random). A turning
    point is a local maximum of the angle (over ``t - 1 .. t + 1``) at or above ``min_angle``.
    """
    n = len(points)
    if n < 3:
        return []
    seg = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    extent = max(seg[-1], 1e-30)
    angles = np.zeros(n)
    for t in range(1, n - 1):
        lo, hi = max(0, t - smooth), min(n - 1, t + smooth)
        a, b = points[t] - points[lo], points[hi] - points[t]
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if min(na, nb) < 1e-3 * extent:
            continue
        if na < straight * (seg[t] - seg[lo]) or nb < straight * (seg[hi] - seg[t]):
            continue
        angles[t] = np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0)))
    return [
        t
        for t in range(1, n - 1)
        if angles[t] >= min_angle and angles[t] >= angles[t - 1] and angles[t] >= angles[t + 1]
    ]


def essential_dynamics(
    run: Path | str, steps: Sequence[int] | None = None, n: int = 256, k: int = 3, min_angle: float = 60.0
) -> pd.DataFrame:
    """The PCA trajectory of ``run``'s checkpoints (or ``steps``).

    Returns:
        One row per checkpoint: ``step``, ``pc1`` ... ``pc{k}``, ``turning`` (a turning point
        of the trajectory in the first ``k`` components, :func:`turning_points`);
        ``attrs["explained"]``: each component's share of the variance.
    """
    run = Path(run)
    cfg = load_config(run)
    steps = resolve_steps(run, steps)
    tokens = probe_tokens(build_source(cfg.data, cfg.seed, "cpu"), n)
    vectors = np.stack([outputs(load_native(run, s), tokens) for s in steps])
    proj, explained = pca(vectors, k)
    table = pd.DataFrame(proj, columns=[f"pc{i + 1}" for i in range(proj.shape[1])])
    table.insert(0, "step", steps)
    turns = set(turning_points(proj, min_angle))
    table["turning"] = [i in turns for i in range(len(steps))]
    table.attrs["explained"] = [float(e) for e in explained]
    return table


def figure(table: pd.DataFrame):
    """The trajectory in (PC1, PC2) and (PC1, PC3), coloured by log step, turning points marked."""
    import matplotlib.pyplot as plt

    pcs = [c for c in table.columns if c.startswith("pc")]
    pairs = [(pcs[0], p) for p in pcs[1:3]] or [(pcs[0], pcs[0])]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    colour = np.log10(table.step.to_numpy() + 1)
    explained = table.attrs.get("explained", [])
    for ax, (x, y) in zip(axes[0], pairs, strict=True):
        ax.plot(table[x], table[y], color="0.7", lw=1, zorder=1)
        sc = ax.scatter(table[x], table[y], c=colour, cmap="viridis", s=18, zorder=2)
        turns = table[table.turning]
        ax.scatter(turns[x], turns[y], marker="x", color="red", s=70, zorder=3, label="turning point")
        for r in turns.itertuples():
            ax.annotate(
                str(r.step), (getattr(r, x), getattr(r, y)), fontsize=8, xytext=(4, 4), textcoords="offset points"
            )

        def label(c: str) -> str:
            i = int(c[2:]) - 1
            return f"{c.upper()} ({100 * explained[i]:.0f}%)" if i < len(explained) else c.upper()

        ax.set_xlabel(label(x))
        ax.set_ylabel(label(y))
        ax.legend(loc="best", fontsize=8)
    fig.colorbar(sc, ax=axes[0].tolist(), label="log10(step + 1)")
    fig.suptitle("Essential dynamics: PCA of query outputs over training")
    return fig
