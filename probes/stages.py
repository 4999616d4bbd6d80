"""Stages of training from the LLC curve and the essential-dynamics trajectory.

A stage boundary is a step where

* the whole-model LLC turns: a local maximum or minimum of the curve whose prominence is at
  least ``min_prominence`` of the curve's range (Hoogland et al. 2024 place boundaries at
  the LLC's critical points), or where a rise or fall ends in a plateau (the slope per
  decade of steps drops below ``plateau`` of the range), or where a plateau ends
  (:func:`llc_boundaries`);
* the essential-dynamics trajectory turns (:func:`probes.essential_dynamics.turning_points`).

Boundaries within ``merge`` decades of log-step of one another are one boundary (the
earliest step; every reason kept). :func:`stage_table` names the stages between them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BOUNDARY_COLUMNS = ["step", "source", "kind"]
STAGE_COLUMNS = ["stage", "start", "end", "boundary"]


def llc_boundaries(steps, llc, min_prominence: float = 0.1, plateau: float = 0.3, decade: float = 0.1) -> pd.DataFrame:
    """LLC turning points and plateau onsets (``BOUNDARY_COLUMNS``; ``source`` is ``LLC``).

    The curve is first put on a uniform grid of ``decade`` in log10(step + 1) (linear
    interpolation), so that what counts as flat does not depend on how densely the run was
    checkpointed (``refine`` adds checkpoints); each boundary is reported at the checkpoint
    nearest its grid point.

    Args:
        steps: checkpoint steps, ascending.
        llc: the whole-model LLC at each (NaN: unhealthy, skipped).
        min_prominence: a local extremum must stand this share of the range above (max) or
            below (min) the lowest (highest) point between it and the next higher (lower) one.
        plateau: the slope, in shares of the range per decade of steps, below which the curve
            is flat; a plateau begins where two steep grid intervals are followed by a flat one,
            a rise (or fall) where two flat ones are followed by two steep ones.
        decade: the grid's spacing in decades.
    """
    s = pd.Series(np.asarray(llc, dtype=float), index=np.asarray(steps)).dropna()
    if len(s) < 3:
        return pd.DataFrame(columns=BOUNDARY_COLUMNS)
    lx = np.log10(s.index.to_numpy() + 1.0)
    grid = np.arange(lx[0], lx[-1] + 1e-9, decade)
    if len(grid) < 3:
        return pd.DataFrame(columns=BOUNDARY_COLUMNS)
    y = np.interp(grid, lx, s.to_numpy())
    span = float(y.max() - y.min())
    if span <= 0:
        return pd.DataFrame(columns=BOUNDARY_COLUMNS)

    def at(i: int) -> int:
        return int(s.index[np.argmin(np.abs(lx - grid[i]))])

    rows = []
    for i in range(1, len(y) - 1):
        for kind, sign in (("LLC peak", 1.0), ("LLC trough", -1.0)):
            v = sign * y
            if v[i] >= v[i - 1] and v[i] > v[i + 1]:
                left, right = v[: i + 1][::-1], v[i:]
                lo_left = left[: np.argmax(left > v[i]) if (left > v[i]).any() else len(left)].min()
                lo_right = right[: np.argmax(right > v[i]) if (right > v[i]).any() else len(right)].min()
                if v[i] - max(lo_left, lo_right) >= min_prominence * span:
                    rows.append({"step": at(i), "source": "LLC", "kind": kind})
    steep = np.abs(np.diff(y)) / (decade * span) >= plateau
    for i in range(2, len(steep)):
        if steep[i - 2] and steep[i - 1] and not steep[i]:
            rows.append({"step": at(i), "source": "LLC", "kind": "LLC plateau"})
        if not steep[i - 2] and not steep[i - 1] and steep[i] and (i + 1 == len(steep) or steep[i + 1]):
            rows.append({"step": at(i), "source": "LLC", "kind": "LLC rise" if y[i + 1] > y[i] else "LLC fall"})
    out = pd.DataFrame(rows, columns=BOUNDARY_COLUMNS).sort_values("step", kind="stable")
    return out.drop_duplicates().reset_index(drop=True)


def ed_boundaries(ed: pd.DataFrame) -> pd.DataFrame:
    """The turning points of an essential-dynamics table (``BOUNDARY_COLUMNS``)."""
    turns = ed[ed.turning]
    return pd.DataFrame(
        {"step": turns.step.astype(int), "source": "essential dynamics", "kind": "ED turning point"},
        columns=BOUNDARY_COLUMNS,
    ).reset_index(drop=True)


def merge_boundaries(frames: list[pd.DataFrame], merge: float = 0.1) -> pd.DataFrame:
    """One row per boundary: ``step`` (earliest) and ``kind`` (every reason, ``; ``-joined)."""
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["step", "kind"])
    allb = pd.concat(frames).sort_values("step", kind="stable")
    out: list[dict] = []
    for r in allb.itertuples():
        if out and np.log10(r.step + 1) - np.log10(out[-1]["last"] + 1) <= merge:
            out[-1]["kinds"].append(r.kind)
            out[-1]["last"] = r.step
        else:
            out.append({"step": int(r.step), "last": int(r.step), "kinds": [r.kind]})
    return pd.DataFrame({"step": [o["step"] for o in out], "kind": ["; ".join(dict.fromkeys(o["kinds"])) for o in out]})


def stage_table(boundaries: pd.DataFrame, first: int, last: int) -> pd.DataFrame:
    """The stages between ``first`` and ``last`` cut at ``boundaries`` (from :func:`merge_boundaries`)."""
    cuts = [b for b in boundaries.itertuples() if first < b.step < last]
    starts = [first] + [int(b.step) for b in cuts]
    ends = starts[1:] + [last]
    why = ["start"] + [b.kind for b in cuts]
    return pd.DataFrame(
        {"stage": [f"S{i + 1}" for i in range(len(starts))], "start": starts, "end": ends, "boundary": why},
        columns=STAGE_COLUMNS,
    )


def describe(stages: pd.DataFrame) -> list[str]:
    """Summary lines: one per stage, ``S2: steps 434-1241 (from: LLC peak; ED turning point)``."""
    lines = [f"stages: {len(stages)} (boundaries: LLC turning points / plateaus and essential-dynamics turns)"]
    for r in stages.itertuples():
        lines.append(
            f"  {r.stage}: steps {r.start}-{r.end}" + ("" if r.boundary == "start" else f" (from: {r.boundary})")
        )
    return lines
