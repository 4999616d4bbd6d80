"""K* against the MLP's width and against the MLP-to-attention learning-rate ratio.

Two accounts of what sets K*, with their predictions stated before measuring:

* **kinetic** (the paper; :mod:`.kinetics`): ICL is acquired when the memoriser's
  integrated error, ``~ K^nu / eta_mem``, covers the ICL plateau, ``~ N / eta_icl``; so
  ``K* ~ (N eta_mem / eta_icl)^(1/nu)``: log-log slope ``1/nu`` in the rate ratio
  ``r = eta_mem / eta_icl`` (between 1/0.88 = 1.14, our memorisation law, and 1/0.7 = 1.43,
  the paper's) and 0 in the MLP's width (the rates, not the size, matter);
* **capacity**: the MLP can store about as many items as it has parameters, so K* is
  proportional to its parameter count (log-log slope 1 in it) and does not depend on ``r``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin

#: The kinetic prediction's slope in the rate ratio: 1/nu for nu from 0.88 (ours) to 0.7 (the paper's).
THEORY_SLOPE = (1 / 0.88, 1 / 0.7)
#: The capacity account's slope in the MLP's parameter count.
CAPACITY_SLOPE = 1.0
N_BOOT = 300


def lr_scale_override(r: float) -> str:
    """``train.lr_scale`` for ratio ``r``: attention ``r^-1/2``, MLP and readout ``r^1/2``, embedding 1."""
    a, m = r**-0.5, r**0.5
    return f"train.lr_scale=[{a:.6g},{m:.6g},1.0,{m:.6g}]"


def mlp_params(width, d_in: int = 65) -> np.ndarray:
    """Parameters of the MLP readout ``d_in -> width -> width -> 1`` (weights and biases)."""
    w = np.asarray(width, dtype=float)
    return d_in * w + w + w * w + w + w + 1


def kstar_table(runs: pd.DataFrame, by: str, chance: float, n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """K* per value of ``by`` (the sigmoid fit of :func:`kinetics.fit_sigmoid` on every run's
    final ICL accuracy), with a bootstrap over the runs (resampled with replacement, refitted):
    columns ``by, kstar, log10_kstar, sigmoid_width, log10_kstar_lo, log10_kstar_hi, boot``."""
    rng = np.random.default_rng(seed)
    rows = []
    for value, part in runs.groupby(by):
        x, y = np.log10(part["K"].to_numpy(float)), part["icl_acc"].to_numpy(float)
        x0, spread = kin.fit_sigmoid(x, y, chance, 1.0)
        boot = []
        for _ in range(n_boot):
            i = rng.integers(0, len(x), len(x))
            if np.ptp(x[i]) == 0:
                continue
            boot.append(kin.fit_sigmoid(x[i], y[i], chance, 1.0)[0])
        boot = np.asarray(boot)
        rows.append(
            {
                by: value,
                "kstar": 10**x0,
                "log10_kstar": x0,
                "sigmoid_width": spread,
                "log10_kstar_lo": float(np.percentile(boot, 2.5)),
                "log10_kstar_hi": float(np.percentile(boot, 97.5)),
                "boot": boot,
            }
        )
    return pd.DataFrame(rows)


def slope_with_ci(x, table: pd.DataFrame) -> tuple[float, float, float]:
    """Least-squares slope of ``log10 K*`` on ``log10 x`` and its 95% bootstrap interval
    (replicate ``b`` of every row refitted together)."""
    lx = np.log10(np.asarray(x, dtype=float))
    slope = float(np.polyfit(lx, table["log10_kstar"].to_numpy(float), 1)[0])
    n = min(len(b) for b in table["boot"])
    reps = np.stack([b[:n] for b in table["boot"]])  # [rows, boot]
    slopes = np.polyfit(lx, reps, 1)[0]
    return slope, float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))


def fits(kw: pd.DataFrame, kr: pd.DataFrame) -> dict:
    """Measured slopes (K* against parameter count, against rate ratio) with intervals, and
    the two accounts' predicted slopes."""
    sw, sw_lo, sw_hi = slope_with_ci(kw["params"], kw)
    sr, sr_lo, sr_hi = slope_with_ci(kr["ratio"], kr)
    return {
        "slope_params": sw,
        "slope_params_lo": sw_lo,
        "slope_params_hi": sw_hi,
        "slope_ratio": sr,
        "slope_ratio_lo": sr_lo,
        "slope_ratio_hi": sr_hi,
        "theory_params": 0.0,
        "capacity_params": CAPACITY_SLOPE,
        "theory_ratio_lo": THEORY_SLOPE[0],
        "theory_ratio_hi": THEORY_SLOPE[1],
        "capacity_ratio": 0.0,
        "kstar_range_width": float(kw["kstar"].max() / kw["kstar"].min()),
        "params_range": float(kw["params"].max() / kw["params"].min()),
        "kstar_range_ratio": float(kr["kstar"].max() / kr["kstar"].min()),
    }


def _err(table: pd.DataFrame) -> np.ndarray:
    k = table["kstar"].to_numpy(float)
    return np.abs(
        np.stack([10 ** table["log10_kstar_lo"].to_numpy(float), 10 ** table["log10_kstar_hi"].to_numpy(float)]) - k
    )


def figure(out: Path, kw: pd.DataFrame, kr: pd.DataFrame, f: dict) -> Path:
    """K* against the MLP width and against the rate ratio, both predictions overlaid."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ref_w = kw.loc[kw["mlp_width"].idxmax()]
    a.errorbar(kw["mlp_width"], kw["kstar"], yerr=_err(kw), fmt="o", color="k", capsize=3, label="measured K*")
    w = np.geomspace(kw["mlp_width"].min(), kw["mlp_width"].max(), 50)
    a.plot(
        w,
        ref_w["kstar"] * mlp_params(w) / mlp_params(ref_w["mlp_width"]),
        "--",
        color="C3",
        label="capacity: K* ∝ MLP params",
    )
    a.plot(w, np.full_like(w, ref_w["kstar"]), "-", color="C0", label="kinetic: no width dependence")
    a.set(
        xscale="log",
        yscale="log",
        xlabel="MLP width (two hidden layers)",
        ylabel="K*",
        title=f"slope in params {f['slope_params']:.2f}",
    )
    a.legend(fontsize=8)
    ref_r = kr.loc[(kr["ratio"] - 1.0).abs().idxmin()]
    b.errorbar(kr["ratio"], kr["kstar"], yerr=_err(kr), fmt="o", color="k", capsize=3, label="measured K*")
    r = np.geomspace(kr["ratio"].min(), kr["ratio"].max(), 50)
    for s, style in zip(THEORY_SLOPE, ("-", ":"), strict=True):
        b.plot(r, ref_r["kstar"] * (r / ref_r["ratio"]) ** s, style, color="C0", label=f"kinetic: K* ∝ r^{s:.2f}")
    b.plot(r, np.full_like(r, ref_r["kstar"]), "--", color="C3", label="capacity: no rate dependence")
    b.set(
        xscale="log",
        yscale="log",
        xlabel="MLP / attention learning-rate ratio r",
        ylabel="K*",
        title=f"slope {f['slope_ratio']:.2f}",
    )
    b.legend(fontsize=8)
    fig.tight_layout()
    path = out / "kstar_rates_capacity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt_slope(s: float, lo: float, hi: float) -> str:
    return f"{s:.2f} [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else f"{s:.2f}"
