"""Measurements of the Nguyen & Reddy 2024 reproduction, from sweeps' results tables.

One row per run (final accuracies, first crossings), accuracy curves, censored medians of
t_ICL, the memorisation exponent, the spread of log t_ICL, the runs near K*, and the
transience run's summary. Pure functions of tables: tested without training.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin
from icl_circuits.papers.nguyen_reddy2024.figures import ICL_THRESHOLD, MEM_THRESHOLD


def refine_ks(coarse: pd.DataFrame, level: float, n: int) -> list[int]:
    """``n`` K values spaced evenly in log K inside the bracket where the mean ICL accuracy
    of the coarse runs first rises through ``level`` (new values only)."""
    lo, hi = kin.crossing_bracket(coarse.groupby("K")["icl_acc"].mean(), level)
    ks = {int(round(lo * (hi / lo) ** (j / (n + 1)))) for j in range(1, n + 1)}
    return sorted(ks - set(coarse["K"]))


def first_crossing(curve: pd.DataFrame, level: float) -> float:
    """First checkpoint step whose value exceeds ``level`` (NaN if none: censored)."""
    above = curve[curve["value"] > level]
    return float(above["step"].min()) if len(above) else math.nan


def per_run(results: pd.DataFrame, N: int) -> pd.DataFrame:
    """One row per run: ``N, K, seed, icl_acc, iw_acc`` (final) and ``t_icl`` (NaN: never)."""
    acc = results[(results["kind"] == "metrics") & (results["metric"] == "acc")]
    rows = []
    for (k, seed), g in acc.groupby(["data.n_classes", "seed"]):
        ic = g[g["split"] == "IC"].sort_values("step")
        iw = g[g["split"] == "IW"].sort_values("step")
        rows.append(
            {
                "N": N,
                "K": int(k),
                "seed": int(seed),
                "icl_acc": float(ic["value"].iloc[-1]),
                "iw_acc": float(iw["value"].iloc[-1]),
                "t_icl": first_crossing(ic, ICL_THRESHOLD),
                "t_mem": first_crossing(iw, MEM_THRESHOLD),
            }
        )
    return pd.DataFrame(rows)


def accuracy_curves(results: pd.DataFrame, N: int) -> pd.DataFrame:
    """Tidy ``N, K, seed, step, split, acc`` of the IC and IW accuracies at every checkpoint."""
    acc = results[(results["kind"] == "metrics") & (results["metric"] == "acc") & results["split"].isin(["IC", "IW"])]
    out = acc[["data.n_classes", "seed", "step", "split", "value"]].rename(
        columns={"data.n_classes": "K", "value": "acc"}
    )
    return out.assign(N=N)[["N", "K", "seed", "step", "split", "acc"]].astype({"K": int, "seed": int})


def censored_median(t: pd.Series) -> float:
    """Median with never-reached runs (NaN) counted as later than all others (inf)."""
    return float(np.median(t.fillna(np.inf))) if len(t) else math.nan


def _censored_quantile(t: pd.Series, q: float) -> float:
    """Lower-interpolated quantile with never-reached runs last (inf once they are reached)."""
    return float(np.quantile(t.fillna(np.inf), q, method="lower")) if len(t) else math.nan


def t_icl_summary(runs: pd.DataFrame, top: dict[int, list[int]], steps: int) -> pd.DataFrame:
    rows = []
    for N, ks in top.items():
        t = runs[(runs["N"] == N) & runs["K"].isin(ks)]["t_icl"]
        reached = t.dropna()
        rows.append(
            {
                "N": N,
                "K": "/".join(map(str, ks)),
                "runs": len(t),
                "reached": len(reached),
                "median": censored_median(t),
                "q25": _censored_quantile(t, 0.25),
                "q75": _censored_quantile(t, 0.75),
                "min": float(reached.min()) if len(reached) else math.nan,
                "max_reached": float(reached.max()) if len(reached) else math.nan,
                "steps": steps,
            }
        )
    return pd.DataFrame(rows)


def memorisation_exponent(mem: pd.DataFrame) -> dict:
    """``t_mem ~ K^nu`` by least squares on the runs that memorised."""
    ok = mem.dropna(subset=["t_mem"])
    ok = ok[ok["t_mem"] > 0]
    if ok["K"].nunique() < 2:
        return {"nu": math.nan, "points": len(ok)}
    nu, _ = kin.fit_power_law(ok["K"], ok["t_mem"])
    return {"nu": nu, "points": len(ok)}


def log_t_spread(runs: pd.DataFrame, top: dict[int, list[int]]) -> float:
    """Pooled std of ``log t_ICL`` about each N's mean: the model's ``beta_std`` (t ~ e^-beta0)."""
    dev = []
    for N, ks in top.items():
        t = runs[(runs["N"] == N) & runs["K"].isin(ks)]["t_icl"].dropna()
        if len(t) >= 2:
            lt = np.log(t.to_numpy())
            dev += list(lt - lt.mean())
    return float(np.sqrt(np.mean(np.square(dev)) * len(dev) / (len(dev) - 1))) if len(dev) >= 3 else math.nan


def bimodality(runs: pd.DataFrame, refined: dict[int, list[int]]) -> pd.DataFrame:
    """The runs at the refined K values (inside the coarse bracket of each N's K*)."""
    parts = [runs[(runs["N"] == N) & runs["K"].isin(ks)] for N, ks in refined.items()]
    return pd.concat(parts, ignore_index=True) if parts else runs.iloc[:0]


def transience(curves: pd.DataFrame) -> pd.DataFrame:
    """Per run of the transience sweep: peak ICL accuracy (and its step), final ICL and IWL
    accuracy, and the first step with ICL accuracy >= ``ICL_THRESHOLD`` (NaN: never)."""
    rows = []
    for (k, seed), g in curves.groupby(["K", "seed"]):
        ic = g[g["split"] == "IC"].sort_values("step")
        iw = g[g["split"] == "IW"].sort_values("step")
        peak = ic.loc[ic["acc"].idxmax()]
        reached = ic[ic["acc"] >= ICL_THRESHOLD]
        rows.append(
            {
                "K": int(k),
                "seed": int(seed),
                "t_icl": float(reached["step"].min()) if len(reached) else math.nan,
                "peak_icl": float(peak["acc"]),
                "peak_step": int(peak["step"]),
                "final_icl": float(ic["acc"].iloc[-1]),
                "final_iwl": float(iw["acc"].iloc[-1]),
                "final_step": int(ic["step"].iloc[-1]),
            }
        )
    return pd.DataFrame(rows)
