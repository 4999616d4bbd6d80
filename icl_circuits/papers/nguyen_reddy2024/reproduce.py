"""Nguyen & Reddy 2024: the task-diversity threshold K*(N), time to ICL, bimodality, kinetics.

The paper trains a 1-layer transformer on binary-labelled items (N = 50..250 context items,
one token per item) and reports: ICL accuracy is a sigmoid of log K with midpoint K* that
grows as ``K* ~ N^(1/nu)``, ``1/nu ~ 1.43``, because memorisation takes a time ``~ K^nu``
while ICL takes a time ``~ N``; the time to ICL (first step with ICL accuracy > 0.95) is
long-tailed and its median grows linearly with N; near K* runs end either memorising or
generalising (bimodal). Its minimal model has a generalising and a memorising subcircuit
learning at different rates on a shared loss (:mod:`icl_circuits.papers.nguyen_reddy2024.kinetics`).

What we train instead (interleaved tokens ``x_1 y_1 ... x_N y_N x_q``, where one attention
layer cannot bind an exemplar to the label after it): the ``demo`` architecture, 2
attention-only layers x 2 heads with an MLP readout, on Gaussian classes with B = 1 (the
query's class appears once among N distinct context classes, like the paper's contexts),
32 labels (chance 1/32). The K grid is adaptive, per N: (1) a coarse grid (factors of 2
around ``k_center * N``, found in pilots) with few seeds; (2) K values inside the coarse
bracket where mean ICL accuracy crosses its midpoint, with more seeds (the transition is
sharp: K* is resolved by K points more than by seeds); (3) more seeds at the largest K for
the distribution of t_ICL. Besides, we measure the memorisation scaling law directly, with
non-bursty training (``p_B = 0``, where the context never helps): ``t_mem ~ K^nu``.

The minimal model (depth-3 memoriser, so its integrated error converges as in the paper)
takes the measured ``nu`` and seed spread of ``t_ICL``; its two rates are calibrated on
the middle N (its K* and median t_ICL); it then predicts K* at the other N and the exponent.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd

from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin
from icl_circuits.papers.nguyen_reddy2024.figures import (
    ICL_THRESHOLD,
    MEM_THRESHOLD,
    MID_BAND,
    fig_bimodality,
    fig_icl_vs_k,
    fig_kstar,
    fig_memorisation,
    fig_t_icl,
)
from icl_circuits.reproduce.common import Claim, Reproduction, pick, run_grid


def settings(scale: str) -> dict:
    small = ["model.d_model=32", "model.readout_hidden=[64,64]", "train.batch_size=64", "data.d=32"]
    return {
        "preset": "demo",
        "Ns": pick(scale, [2, 4], [2, 4, 8], [4, 8, 16, 32]),
        # Stage 1: a coarse K grid centred on k_center * N (pilots put K* near it).
        "k_center": pick(scale, 8, 64, 64),
        "coarse": pick(scale, [0.5, 2.0], [0.25, 0.5, 1.0, 2.0, 4.0], [2.0**i for i in range(-3, 4)]),
        "coarse_seeds": pick(scale, [0], [0, 1], [0, 1, 2]),
        # Stage 2: n_refine K values evenly (in log K) inside the coarse bracket of K*.
        "n_refine": pick(scale, 1, 2, 3),
        "refine_seeds": pick(scale, [0, 1], [0, 1, 2, 3, 4], list(range(10))),
        # Stage 3: more seeds at the largest K, for the distribution of t_ICL.
        "top_seeds": pick(scale, [1], [2, 3, 4, 5], list(range(3, 10))),
        "steps": pick(scale, 30, 2500, 20_000),
        "mem_Ks": pick(scale, [8, 16], [32, 64, 128, 256, 512, 1024], [64, 128, 256, 512, 1024, 2048, 4096]),
        "mem_steps": pick(scale, 30, 1600, 10_000),
        "mem_every": pick(scale, 10, 20, 100),
        "common": [
            "data.burst=1",
            "data.n_labels=32",
            "data.noise=0.1",
            f"train.n_checkpoints={pick(scale, 6, 20, 40)}",
            f"train.eval_size={pick(scale, 64, 256, 1024)}",
            f"train.device={pick(scale, 'cpu', 'cpu', 'auto')}",
            *pick(scale, [*small, "model.d_model=16", "model.readout_hidden=[16]"], small, []),
        ],
        "every": pick(scale, 10, 100, 250),
        "model_seeds": pick(scale, 8, 64, 128),
    }


def k_values(s: dict, N: int, factors: list[float]) -> list[int]:
    return [int(round(s["k_center"] * N * f)) for f in factors]


def refine_ks(coarse: pd.DataFrame, level: float, n: int) -> list[int]:
    """``n`` K values spaced evenly in log K inside the bracket where the mean ICL accuracy
    of the coarse runs first rises through ``level`` (new values only)."""
    lo, hi = kin.crossing_bracket(coarse.groupby("K")["icl_acc"].mean(), level)
    ks = {int(round(lo * (hi / lo) ** (j / (n + 1)))) for j in range(1, n + 1)}
    return sorted(ks - set(coarse["K"]))


# --------------------------------------------------------------------------- measurements
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


# --------------------------------------------------------------------------- run
def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    s = settings(scale)
    chance = 1.0 / 32
    level = 0.5 * (chance + 1.0)
    every = f"train.checkpoint_every={s['every']}"

    curves = []

    def sweep(name: str, N: int, ks: list[int], seeds: list[int]) -> pd.DataFrame:
        over = [*s["common"], every, f"train.steps={s['steps']}", f"data.n_pairs={N}"]
        res = run_grid(out, name, s["preset"], over, {"data.n_classes": ks, "seed": seeds}, workers, progress)
        curves.append(accuracy_curves(res, N))
        return per_run(res, N)

    # Largest N first: its runs are the longest, so the workers' tails stay short.
    Ns = sorted(s["Ns"], reverse=True)
    coarse = {N: sweep(f"N{N}-coarse", N, k_values(s, N, s["coarse"]), s["coarse_seeds"]) for N in Ns}
    refined = {N: refine_ks(coarse[N], level, s["n_refine"]) for N in Ns}
    top = {N: max(k_values(s, N, s["coarse"])) for N in Ns}
    tables = list(coarse.values())
    for N in Ns:
        if refined[N]:
            tables.append(sweep(f"N{N}-refine", N, refined[N], s["refine_seeds"]))
        tables.append(sweep(f"N{N}-top", N, [top[N]], s["top_seeds"]))
    runs = pd.concat(tables, ignore_index=True).sort_values(["N", "K", "seed"], ignore_index=True)
    curves = pd.concat(curves, ignore_index=True)

    mem_over = [*s["common"], f"train.checkpoint_every={s['mem_every']}", f"train.steps={s['mem_steps']}"]
    mem_over += ["data.n_pairs=2", "data.p_bursty=0.0"]
    mem_res = run_grid(
        out, "memorisation", s["preset"], mem_over, {"data.n_classes": s["mem_Ks"], "seed": [0]}, workers, progress
    )
    mem = per_run(mem_res, 2)[["K", "seed", "iw_acc", "t_mem"]]
    mem_fit = memorisation_exponent(mem)

    thr = kin.threshold_table(runs, lo=chance, n_boot=pick(scale, 10, 200, 500))
    expo = kin.exponent_with_ci(thr)
    tops = {N: [k] for N, k in top.items()}
    t_sum = t_icl_summary(runs, tops, s["steps"])
    model = fit_model(s, runs, thr, t_sum, tops, mem_fit)
    near = bimodality(runs, refined)

    figures = [
        fig_icl_vs_k(out, runs, thr, model, chance),
        fig_kstar(out, thr, expo, model),
        fig_t_icl(out, runs, tops, s["steps"], model),
        fig_bimodality(out, near, curves),
        fig_memorisation(out, mem, mem_fit),
    ]
    kstar = pd.concat(
        [
            thr.drop(columns="boot", errors="ignore").assign(source="transformer"),
            model["thresholds"].assign(source="model"),
        ],
        ignore_index=True,
    )
    extra = {"refined_K": refined, "top_K": top, "model": model["config"], "memorisation_fit": mem_fit}
    rep = Reproduction("nguyen-reddy2024", scale, s | extra)
    rep.tables = {
        "runs": runs,
        "kstar": kstar,
        "exponent": pd.DataFrame([expo | {"source": "transformer"}, model["exponent"] | {"source": "model"}]),
        "t_icl": t_sum,
        "memorisation": mem,
        "model_runs": model["sim"],
        "curves": curves,
    }
    rep.figures = figures
    rep.claims = claims(runs, thr, expo, t_sum, near, mem_fit, model, chance)
    return rep


def fit_model(s: dict, runs, thr, t_sum, top, mem_fit) -> dict:
    """Calibrate the minimal model on the middle N; predict K* (and t_ICL) at every N."""
    Ns = sorted(s["Ns"])
    n_ref = Ns[len(Ns) // 2]
    nu = mem_fit["nu"] if math.isfinite(mem_fit["nu"]) else 1.0
    spread = log_t_spread(runs, top)
    base = kin.KineticsConfig(
        nu=float(np.clip(nu, 0.3, 3.0)),
        mem_depth=3,
        beta_std=float(np.clip(spread, 0.1, 2.0)) if math.isfinite(spread) else 0.5,
        steps=s["steps"],
    )
    ref = thr[thr["N"] == n_ref].iloc[0]
    t_ref = float(t_sum.loc[t_sum["N"] == n_ref, "median"].iloc[0])
    # A censored median only bounds t_ICL from below: use the training length then.
    t_ref = t_ref if math.isfinite(t_ref) else float(s["steps"])
    k_time = float(np.exp(np.mean(np.log(top[n_ref]))))
    lo_k, hi_k = runs["K"].min() / 8, runs["K"].max() * 8
    Ks = list(np.geomspace(lo_k, hi_k, int(3 * math.log2(hi_k / lo_k)) + 1))
    cfg = kin.calibrate(base, n_ref, float(ref["kstar"]), t_ref, k_time, Ks, n_seeds=32)
    # Up to twice the largest N: beyond, the model's own t_ICL approaches the training length.
    n_fine = sorted(set(Ns) | set(np.unique(np.geomspace(Ns[0], Ns[-1] * 2, 9).round().astype(int)).tolist()))
    model_thr = kin.model_thresholds(cfg, n_fine, Ks, n_seeds=32)
    at_ns = model_thr[model_thr["N"].isin(Ns)]
    sim = kin.simulate(cfg, Ns, sorted({k for ks in top.values() for k in ks} | set(runs["K"])), s["model_seeds"])
    return {
        "config": cfg.to_dict() | {"n_ref": n_ref, "kstar_ref": float(ref["kstar"]), "t_icl_ref": t_ref},
        "thresholds": model_thr,
        "exponent": kin.exponent_with_ci(at_ns)
        | {"exponent_wide_N": kin.fit_power_law(model_thr["N"], model_thr["kstar"])[0]},
        "sim": sim,
        "n_ref": n_ref,
    }


# --------------------------------------------------------------------------- claims
def _fmt_k(row) -> str:
    ci = ""
    if "log10_kstar_lo" in row and math.isfinite(row.get("log10_kstar_lo", math.nan)):
        ci = f" [{10 ** row['log10_kstar_lo']:.0f}, {10 ** row['log10_kstar_hi']:.0f}]"
    grid = f" (grid bracket {row['bracket_lo']:.0f}-{row['bracket_hi']:.0f})" if "bracket_lo" in row else ""
    return f"N={int(row['N'])}: {row['kstar']:.0f}{ci}{grid}"


def claims(runs, thr, expo, t_sum, near, mem_fit, model, chance) -> list[Claim]:
    out = []
    texts, ok = [], []
    for _, th in thr.iterrows():
        means = runs[runs["N"] == th["N"]].groupby("K")["icl_acc"].mean()
        inside = means.index.min() <= th["kstar"] <= means.index.max()
        ok.append(bool(means.iloc[0] < 0.3 and means.iloc[-1] > 0.7 and inside))
        texts.append(
            f"N={int(th['N'])}: mean acc {means.iloc[0]:.2f} (K={means.index[0]}) -> {means.iloc[-1]:.2f} (K={means.index[-1]})"
        )
    transitions = bool(ok) and all(ok)
    out.append(
        Claim(
            "ICL accuracy is a sigmoid of log K at every N (from memorising to generalising)",
            "sharp sigmoid at N = 50..250",
            "; ".join(texts) + f"; chance {chance:.3f}",
            transitions if ok else None,
        )
    )
    ks = thr.sort_values("N")["kstar"].to_numpy()
    out.append(
        Claim(
            "the threshold K* (sigmoid midpoint, 95% bootstrap over seeds) grows with N",
            "K* grows with N",
            "; ".join(_fmt_k(r) for _, r in thr.sort_values("N").iterrows()),
            bool(len(ks) >= 2 and np.all(np.diff(ks) > 0)),
        )
    )
    lo, hi = expo["exponent_lo"], expo["exponent_hi"]
    g_lo, g_hi = expo.get("exponent_grid_lo", math.nan), expo.get("exponent_grid_hi", math.nan)
    # Consistent with the paper when 1.43 lies in the seed bootstrap interval or in the range
    # the K grid leaves open (every K* anywhere in its bracket).
    wide_lo, wide_hi = np.nanmin([lo, g_lo]), np.nanmax([hi, g_hi])
    out.append(
        Claim(
            f"K* ~ N^b with b consistent with the paper's 1/nu (only {len(thr)} N values: a rough exponent)",
            f"b = 1/nu = {kin.PAPER_EXPONENT:.2f} (nu ~ 0.7)",
            f"b = {expo['exponent']:.2f}; seed bootstrap [{lo:.2f}, {hi:.2f}]; K-grid range [{g_lo:.2f}, {g_hi:.2f}]",
            # Without a transition at every N there is no exponent to compare.
            bool(wide_lo <= kin.PAPER_EXPONENT <= wide_hi) if transitions and math.isfinite(wide_lo) else None,
        )
    )
    nu = mem_fit["nu"]
    out.append(
        Claim(
            f"memorisation scaling law: time to memorise (IW acc > {MEM_THRESHOLD}, non-bursty training) ~ K^nu",
            "nu ~ 0.7 (sub-linear)",
            f"nu = {nu:.2f} from {mem_fit['points']} K values",
            bool(0.55 <= nu <= 0.85) if math.isfinite(nu) else None,
        )
    )
    inv = 1 / nu if math.isfinite(nu) and nu > 0 else math.nan
    out.append(
        Claim(
            "the K* exponent equals 1/nu of the memorisation law (the paper's mechanism)",
            "b = 1/nu",
            f"1/nu = {inv:.2f} vs b = {expo['exponent']:.2f} (intervals as above)",
            bool(wide_lo <= inv <= wide_hi) if transitions and math.isfinite(inv * wide_lo) else None,
        )
    )
    med = t_sum.sort_values("N")
    desc = "; ".join(
        f"N={r.N}: {'>' + str(r.steps) if not math.isfinite(r.median) else f'{r.median:.0f}'} "
        f"({r.reached}/{r.runs} reached, K={r.K})"
        for r in med.itertuples()
    )
    medians = med["median"].to_numpy()
    out.append(
        Claim(
            f"median t_ICL (first step with ICL acc > {ICL_THRESHOLD}) grows with N",
            "grows linearly with N; long-tailed over seeds",
            desc,
            bool(len(medians) >= 2 and math.isfinite(medians[-1]) and np.all(np.diff(medians) > 0)),
        )
    )
    acc = near["icl_acc"]
    mid = float(((acc > MID_BAND[0]) & (acc < MID_BAND[1])).mean()) if len(acc) else math.nan
    split, per_k = [], []
    for (N, K), g in near.groupby(["N", "K"]):
        low, high = int((g["icl_acc"] <= MID_BAND[0]).sum()), int((g["icl_acc"] >= MID_BAND[1]).sum())
        per_k.append(f"N={N} K={K}: {low}/{len(g) - low - high}/{high}")
        split.append(low > 0 and high > 0)
    out.append(
        Claim(
            f"near K* seeds split between memorising and generalising (some K with both; < 1/3 in "
            f"{MID_BAND[0]}-{MID_BAND[1]})",
            "bimodal outcomes near K*",
            "memorise/in between/generalise: " + "; ".join(per_k) + f"; {mid:.0%} in between",
            bool(any(split) and mid < 1 / 3) if len(acc) else None,
        )
    )
    mt = model["thresholds"].set_index("N")["kstar"]
    texts, ok = [], []
    for _, th in thr.sort_values("N").iterrows():
        pred = mt.get(th["N"], math.nan)
        ref = " (calibrated)" if th["N"] == model["n_ref"] else ""
        texts.append(f"N={int(th['N'])}: model {pred:.0f} vs {th['kstar']:.0f}{ref}")
        if th["N"] != model["n_ref"]:
            ok.append(abs(math.log10(pred / th["kstar"])) <= math.log10(1.5))
    me = model["exponent"]
    out.append(
        Claim(
            "the minimal model's K* matches the measured one within x1.5 at the N it was not calibrated on",
            "theory K* ~ N^(1/nu) e^(-beta0/nu)",
            "; ".join(texts)
            + f"; model exponent {me['exponent']:.2f} (N up to 2x larger: {me['exponent_wide_N']:.2f})",
            bool(all(ok)) if ok else None,
        )
    )
    return out


# --------------------------------------------------------------------------- figures
