"""The statistics the behavioural claims are judged by (scipy), as pure functions of tables.

* bimodality: Sarle's bimodality coefficient ``(g^2 + 1) / (k + 3 (n-1)^2 / ((n-2)(n-3)))``
  from ``scipy.stats.skew`` and ``scipy.stats.kurtosis`` (bias-corrected); above 5/9, the
  value of a uniform distribution, it indicates two modes;
* the tail of t_ICL: ``scipy.stats.skewtest`` on t_ICL (right tail: skew > 0, one-sided);
* log-log slopes with 95% intervals: ``scipy.stats.bootstrap`` (paired, percentile) of
  ``scipy.stats.linregress``'s slope;
* the sigmoid's quality: the R^2 of :func:`kinetics.fit_sigmoid` on the seed-mean accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin

#: Sarle's threshold: a uniform distribution's coefficient; above it, two modes are indicated.
BIMODAL_BC = 5 / 9
ALPHA = 0.05
N_BOOT = 2000


def bimodality_coefficient(x) -> float:
    """Sarle's bimodality coefficient of ``x`` (NaN for fewer than 4 values or no spread)."""
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 4 or np.ptp(x) == 0:
        return math.nan
    g = stats.skew(x, bias=False)
    k = stats.kurtosis(x, bias=False)  # excess kurtosis
    return float((g**2 + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def tail_test(t) -> dict:
    """Skewness of ``t`` and the one-sided p-value of ``skewtest`` for a right tail (n >= 8)."""
    t = np.asarray(t, dtype=float)
    t = t[np.isfinite(t)]
    if t.size < 8 or np.ptp(t) == 0:
        return {"n": int(t.size), "skew": math.nan, "p": math.nan}
    res = stats.skewtest(t, alternative="greater")
    return {"n": int(t.size), "skew": float(stats.skew(t, bias=False)), "p": float(res.pvalue)}


def loglog_slope(x, y, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """Slope of ``log10 y`` on ``log10 x`` over paired points, with a 95% bootstrap interval."""
    lx, ly = np.log10(np.asarray(x, dtype=float)), np.log10(np.asarray(y, dtype=float))
    ok = np.isfinite(lx) & np.isfinite(ly)
    lx, ly = lx[ok], ly[ok]
    if lx.size < 3 or np.ptp(lx) == 0:
        return {"slope": math.nan, "lo": math.nan, "hi": math.nan, "n": int(lx.size)}

    def slope(a, b, axis=-1):
        a, b = np.asarray(a), np.asarray(b)
        am, bm = a.mean(axis, keepdims=True), b.mean(axis, keepdims=True)
        var = ((a - am) ** 2).sum(axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(var > 0, ((a - am) * (b - bm)).sum(axis) / var, np.nan)

    res = stats.bootstrap(
        (lx, ly), slope, paired=True, vectorized=True, n_resamples=n_boot, method="percentile", random_state=seed
    )
    ci = res.confidence_interval
    return {
        "slope": float(stats.linregress(lx, ly).slope),
        "lo": float(ci.low),
        "hi": float(ci.high),
        "n": int(lx.size),
    }


def sigmoid_quality(runs: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Per N: the sigmoid of :func:`kinetics.fit_sigmoid` on every run, its R^2 on the seed-mean
    accuracy per K, its width and its 10-90% span (both in decades of K)."""
    rows = []
    for n, part in runs[np.isfinite(runs["K"]) & (runs["K"] > 0)].groupby("N"):
        x0, width = kin.fit_sigmoid(np.log10(part["K"]), part["icl_acc"], chance, 1.0)
        mean = part.groupby("K")["icl_acc"].mean()
        pred = chance + (1 - chance) / (1 + np.exp(-(np.log10(mean.index.to_numpy(float)) - x0) / width))
        resid = ((mean.to_numpy() - pred) ** 2).sum()
        total = ((mean.to_numpy() - mean.mean()) ** 2).sum()
        rows.append(
            {
                "N": int(n),
                "r2": float(1 - resid / total) if total > 0 else math.nan,
                "width": width,
                "span_10_90": 2 * math.log(9) * width,
                "log10_kstar": x0,
            }
        )
    return pd.DataFrame(rows)
