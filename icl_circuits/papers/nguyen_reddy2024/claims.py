"""The claims of the Nguyen & Reddy 2024 reproduction: the paper's numbers next to ours."""

from __future__ import annotations

import math

import numpy as np

from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin
from icl_circuits.papers.nguyen_reddy2024 import stats as st
from icl_circuits.papers.nguyen_reddy2024.figures import ICL_THRESHOLD, MEM_THRESHOLD, MID_BAND
from icl_circuits.reproduce.common import Claim


def _fmt_k(row) -> str:
    ci = ""
    if "log10_kstar_lo" in row and math.isfinite(row.get("log10_kstar_lo", math.nan)):
        ci = f" [{10 ** row['log10_kstar_lo']:.0f}, {10 ** row['log10_kstar_hi']:.0f}]"
    grid = f" (grid bracket {row['bracket_lo']:.0f}-{row['bracket_hi']:.0f})" if "bracket_lo" in row else ""
    return f"N={int(row['N'])}: {row['kstar']:.0f}{ci}{grid}"


#: The sigmoid in log K fits the seed-mean accuracy with at least this R^2 at every N.
MIN_R2 = 0.9


def claims(runs, thr, expo, t_sum, near, mem_fit, model, chance, trans, inf, mem, bimodal, tail_ns) -> list[Claim]:
    out = []
    texts, ok, ok_fit = [], [], []
    quality = st.sigmoid_quality(runs, chance).set_index("N")
    for _, th in thr.iterrows():
        means = runs[runs["N"] == th["N"]].groupby("K")["icl_acc"].mean()
        inside = means.index.min() <= th["kstar"] <= means.index.max()
        # On the scale 0 = chance, 1 = perfect: below 0.3 at the smallest K, above 0.7 at the largest.
        lo_n, hi_n = ((means.iloc[[0, -1]] - chance) / (1 - chance)).tolist()
        q = quality.loc[int(th["N"])]
        ok.append(bool(lo_n < 0.3 and hi_n > 0.7 and inside))
        ok_fit.append(bool(q["r2"] >= MIN_R2))
        texts.append(
            f"N={int(th['N'])}: mean acc {means.iloc[0]:.2f} (K={means.index[0]}) -> {means.iloc[-1]:.2f} "
            f"(K={means.index[-1]}), R^2 {q['r2']:.2f}, 10-90% span {q['span_10_90']:.2f} decades"
        )
    transitions = bool(ok) and all(ok)
    out.append(
        Claim(
            f"ICL accuracy is a sigmoid of log K at every N (from memorising to generalising; the fit's R^2 on the "
            f"seed-mean accuracy >= {MIN_R2})",
            "sharp sigmoid at N = 50..250 (and at N = 100 over K)",
            "; ".join(texts) + f"; chance {chance:.3f}",
            (transitions and all(ok_fit)) if ok else None,
        )
    )
    ks = thr.sort_values("N")["kstar"].to_numpy()
    out.append(
        Claim(
            f"the threshold K* (sigmoid midpoint, 95% bootstrap over seeds) grows with N ({len(ks)} values of N)",
            "K* grows with N",
            "; ".join(_fmt_k(r) for _, r in thr.sort_values("N").iterrows()),
            bool(len(ks) >= 2 and np.all(np.diff(ks) > 0)),
        )
    )
    lo, hi = expo["exponent_lo"], expo["exponent_hi"]
    g_lo, g_hi = expo.get("exponent_grid_lo", math.nan), expo.get("exponent_grid_hi", math.nan)
    # Holds when 1.43 lies in the seed-bootstrap interval; the range the K grid leaves open
    # (every K* anywhere in its bracket) is reported beside it.
    out.append(
        Claim(
            f"K* ~ N^b with b = the paper's 1/nu (N = {int(thr['N'].min())}..{int(thr['N'].max())}, {len(thr)} values)",
            f"b = 1/nu = {kin.PAPER_EXPONENT:.2f} (nu ~ 0.7)",
            f"b = {expo['exponent']:.2f}; seed bootstrap [{lo:.2f}, {hi:.2f}]; K-grid range [{g_lo:.2f}, {g_hi:.2f}]",
            # Without a transition at every N there is no exponent to compare.
            bool(lo <= kin.PAPER_EXPONENT <= hi) if transitions and math.isfinite(lo) else None,
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
    ok_mem = mem.dropna(subset=["t_mem"]) if len(mem) else mem
    ok_mem = ok_mem[ok_mem["t_mem"] > 0] if len(ok_mem) else ok_mem
    nu_ci = st.loglog_slope(ok_mem["K"], ok_mem["t_mem"]) if len(ok_mem) else {"lo": math.nan, "hi": math.nan}
    inv_lo, inv_hi = (1 / nu_ci["hi"], 1 / nu_ci["lo"]) if nu_ci["lo"] > 0 else (math.nan, math.nan)
    # Both ways on the bootstrap intervals: 1/nu inside b's, and b inside 1/nu's (where it has one).
    inside = lo <= inv <= hi
    inside_back = inv_lo <= expo["exponent"] <= inv_hi if math.isfinite(inv_lo) else True
    out.append(
        Claim(
            "the K* exponent equals 1/nu of the memorisation law (the paper's mechanism): 1/nu inside b's 95% seed "
            "bootstrap interval, and b inside 1/nu's 95% bootstrap interval (over the memorisation runs)",
            "b = 1/nu",
            f"1/nu = {inv:.2f} [{inv_lo:.2f}, {inv_hi:.2f}] vs b = {expo['exponent']:.2f} [{lo:.2f}, {hi:.2f}]",
            bool(inside and inside_back) if transitions and math.isfinite(inv * lo) else None,
        )
    )
    med = t_sum.sort_values("N")
    desc = "; ".join(
        f"N={r.N}: {'>' + str(r.steps) if not math.isfinite(r.median) else f'{r.median:.0f}'} "
        f"({r.reached}/{r.runs} reached, K={r.K})"
        for r in med.itertuples()
    )
    medians = med["median"].to_numpy()
    fin = med[np.isfinite(med["median"])]
    slope = kin.fit_power_law(fin["N"], fin["median"])[0] if len(fin) >= 2 else math.nan
    out.append(
        Claim(
            f"median t_ICL (first checkpoint with ICL acc > {ICL_THRESHOLD}, K = inf) grows with N",
            "grows linearly with N (fig. 6b, K = inf); long-tailed over seeds",
            desc + f"; log-log slope {slope:.2f}",
            # Non-decreasing (ties at the checkpoint spacing allowed) and larger at the largest N.
            bool(len(medians) >= 2 and math.isfinite(medians[-1]) and np.all(np.diff(medians) >= 0))
            and bool(medians[-1] > medians[0]),
        )
    )
    reached = inf.dropna(subset=["t_icl"])
    fit = st.loglog_slope(reached["N"], reached["t_icl"])
    out.append(
        Claim(
            "t_ICL (K = inf) is linear in N: 1 inside the 95% bootstrap interval of the log-log slope over every run "
            "that reached ICL",
            "linear in N (fig. 6b)",
            f"slope {fit['slope']:.2f} [{fit['lo']:.2f}, {fit['hi']:.2f}] over {fit['n']} runs "
            f"({len(inf) - len(reached)} never reached)",
            bool(fit["lo"] <= 1 <= fit["hi"]) if math.isfinite(fit["lo"]) else None,
        )
    )
    for N in tail_ns:
        t = inf[inf["N"] == N]["t_icl"]
        tail = st.tail_test(t)
        out.append(
            Claim(
                f"t_ICL at K = inf is long-tailed over seeds (N = {N}): skewness > 0, one-sided skewtest p < {st.ALPHA}",
                "long-tailed over seeds (fig. 6b)",
                f"{tail['n']} seeds reached ({int(t.isna().sum())} never); median {t.median():.0f}, max "
                f"{t.max():.0f}; skewness {tail['skew']:.2f}, p = {tail['p']:.3f}",
                bool(tail["skew"] > 0 and tail["p"] < st.ALPHA) if math.isfinite(tail["p"]) else None,
            )
        )
    # On the scale 0 = chance, 1 = perfect (memorising runs sit at chance on novel items).
    near = near.assign(icl_acc=(near["icl_acc"] - chance) / (1 - chance))
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
            f"{MID_BAND[0]}-{MID_BAND[1]} of the way from chance to 1)",
            "bimodal outcomes near K*",
            "memorise/in between/generalise: " + "; ".join(per_k) + f"; {mid:.0%} in between",
            bool(any(split) and mid < 1 / 3) if len(acc) else None,
        )
    )
    for N, g in bimodal.items():
        for K, part in g.groupby("K"):
            bc = st.bimodality_coefficient(part["icl_acc"])
            norm = ((part["icl_acc"] - chance) / (1 - chance)).round(2).sort_values().tolist()
            out.append(
                Claim(
                    f"ICL accuracy over seeds is bimodal at the K nearest K* (N = {N}): Sarle's bimodality coefficient "
                    f"(scipy skew and kurtosis) above {st.BIMODAL_BC:.3f}",
                    "bimodal outcomes near K*",
                    f"K = {K}, {len(part)} seeds: coefficient {bc:.3f}; accuracies (0 = chance, 1 = perfect): {norm}",
                    bool(bc > st.BIMODAL_BC) if math.isfinite(bc) else None,
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
    for name, decay in (("transience", "3e-3 (the paper's)"), ("transience-strong", "3e-2 (ours, 10x)")):
        t = trans[trans["sweep"] == name] if len(trans) else trans
        if not len(t):
            continue
        fades = [
            f"K={r.K} s{r.seed}: ICL >= {ICL_THRESHOLD} at {r.t_icl:.0f}, peak {r.peak_icl:.2f}@{r.peak_step} -> "
            f"{r.final_icl:.2f} at {r.final_step}, IWL {r.final_iwl:.2f}"
            for r in t.itertuples()
        ]
        out.append(
            Claim(
                f"weight decay {decay} on the attention only (LayerNorm + QKV) makes ICL transient: "
                "it emerges, then fades",
                "transient ICL (fig. 2e: K = 10,000, decay 3e-3, up to 50,000 epochs)",
                "; ".join(fades),
                bool(((t["peak_icl"] >= ICL_THRESHOLD) & (t["final_icl"] < 0.75)).all()),
            )
        )
    return out
