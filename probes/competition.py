"""ICL vs IWL over training: the competition table and automatic transition detection.

Detection on a curve ``value(step)`` (e.g. ICL accuracy):

* **emergence**: the rise from the initial value to the peak must be at least
  ``min_rise``. The abrupt part of it is the ``window``-decade span of log-step (a quarter
  decade by default) over which the curve gains most; the emergence step is the first
  checkpoint in that span at which the curve has covered half of the span's gain. A wide
  window keeps checkpoint noise from counting as a rise, and looking for the steepest span
  separates an induction-head jump from a slow earlier climb. ``onset``/``completion`` are
  the first checkpoints at 10% / 90% of the whole rise; ``sharpness`` is the span's gain per
  decade.
* **peak**: the maximum, and its step.
* **transience**: after the peak the curve loses at least ``min_drop`` (absolute) and at
  least a quarter of its rise, while the training loss at the end is below the training
  loss at the peak (Singh et al. 2023: ICL fades while the loss keeps falling).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

#: Least rise of a curve (initial -> peak) that counts as emergence (accuracy units).
MIN_RISE = 0.2


@dataclasses.dataclass(frozen=True)
class Transition:
    """What happened to one curve over training (steps are checkpoint steps)."""

    name: str
    initial: float
    peak: float
    peak_step: int
    final: float
    emerged: bool
    emergence_step: int | None
    onset_step: int | None
    completion_step: int | None
    sharpness: float | None
    transient: bool
    drop: float

    def describe(self) -> str:
        if not self.emerged:
            return f"{self.name}: no emergence ({self.initial:.2f} -> peak {self.peak:.2f} at step {self.peak_step})"
        text = (
            f"{self.name}: emerges at step {self.emergence_step} (onset {self.onset_step}, "
            f"complete {self.completion_step}; {self.initial:.2f} -> {self.peak:.2f}), peak "
            f"{self.peak:.2f} at step {self.peak_step}, final {self.final:.2f}"
        )
        return text + (f"; TRANSIENT: falls by {self.drop:.2f} after its peak" if self.transient else "; persists")


def detect_transition(
    curve: pd.Series,
    train_loss: pd.Series | None = None,
    name: str = "curve",
    min_rise: float = MIN_RISE,
    min_drop: float = 0.1,
    window: float = 0.25,
) -> Transition:
    """Emergence, peak and transience of ``curve`` (indexed by step).

    Args:
        curve: values indexed by checkpoint step.
        train_loss: training loss indexed by step, for the transience condition.
        name: label used in :meth:`Transition.describe`.
        min_rise: smallest rise (initial -> peak) that counts as emergence.
        min_drop: smallest post-peak fall that counts as transience.
        window: width in decades of log-step of the span searched for the abrupt rise.
    """
    curve = curve.sort_index().astype(float)
    if curve.empty:
        raise ValueError(f"{name}: empty curve")
    steps = curve.index.to_numpy()
    vals = curve.to_numpy()
    initial = float(vals[0])
    i_peak = int(np.argmax(vals))
    peak, peak_step, final = float(vals[i_peak]), int(steps[i_peak]), float(vals[-1])
    rise = peak - initial
    emerged = rise >= min_rise

    def first_crossing(frac: float) -> int | None:
        hit = np.nonzero(vals[: i_peak + 1] >= initial + frac * rise)[0]
        return int(steps[hit[0]]) if len(hit) else None

    onset = first_crossing(0.1) if emerged else None
    done = first_crossing(0.9) if emerged else None
    mid, sharp = _steepest_span(steps[: i_peak + 1], vals[: i_peak + 1], window) if emerged else (None, None)
    drop = peak - final
    loss_falls = True
    if train_loss is not None and not train_loss.empty:
        tl = train_loss.sort_index()
        at_peak = float(tl.loc[:peak_step].iloc[-1])
        loss_falls = float(tl.iloc[-1]) < at_peak
    transient = emerged and drop >= max(min_drop, 0.25 * rise) and loss_falls
    return Transition(name, initial, peak, peak_step, final, emerged, mid, onset, done, sharp, transient, drop)


def _steepest_span(steps: np.ndarray, vals: np.ndarray, window: float) -> tuple[int, float]:
    """Midpoint step and gain per decade of the ``window``-decade span that gains most."""
    logs = np.log10(steps.astype(float) + 1.0)
    best_i, best_j, best_gain = 0, len(vals) - 1, -np.inf
    for i in range(len(vals)):
        j = min(max(int(np.searchsorted(logs, logs[i] + window, side="right")) - 1, i + 1), len(vals) - 1)
        gain = vals[i : j + 1].max() - vals[i]
        if gain > best_gain:
            best_i, best_j, best_gain = i, j, gain
    target = vals[best_i] + 0.5 * best_gain
    k = best_i + int(np.argmax(vals[best_i : best_j + 1] >= target))
    span = max(logs[best_j] - logs[best_i], window)
    return int(steps[k]), float(best_gain / span)


def competition_table(df: pd.DataFrame, icl_split: str, iwl_split: str, ciwl_split: str | None = None) -> pd.DataFrame:
    """One row per step: ICL / IWL / CIWL accuracy, train loss, best head scores, ablations.

    Args:
        df: output of :func:`probes.over_training.analyze_run` joined with the run's
            training metrics (``split == "train"``) if available.
    """
    clean = df[df.condition == "clean"]
    acc = clean[(clean.metric == "acc") & clean.layer.isna()]
    cols = {"ICL": icl_split, "IWL": iwl_split}
    if ciwl_split:
        cols["CIWL"] = ciwl_split
    out = pd.DataFrame({name: acc[acc.split == split].set_index("step").value for name, split in cols.items()})
    heads = clean[clean.layer.notna()]
    for metric in ("task_induction", "prev_token", "induction_strength"):
        sub = heads[heads.metric == metric]
        if not sub.empty:
            out[f"max_{metric}"] = sub.groupby("step").value.max()
    train = df[(df.split == "train") & (df.metric == "loss")]
    if not train.empty:
        out["train_loss"] = train.set_index("step").value
    ablated = df[(df.condition != "clean") & (df.metric == "acc")]
    for (cond, split), sub in ablated.groupby(["condition", "split"]):
        if split in (icl_split, iwl_split):
            out[f"{split}_acc|{cond}"] = sub.set_index("step").value
    return out.sort_index()


def summarize(table: pd.DataFrame) -> dict[str, Transition]:
    """Transitions of the ICL, IWL (and CIWL) accuracy columns of a competition table."""
    loss = table["train_loss"] if "train_loss" in table else None
    return {
        name: detect_transition(table[name].dropna(), loss, name) for name in ("ICL", "IWL", "CIWL") if name in table
    }
