"""The claims of the Chan et al. 2024 reproduction, measured from its tidy tables.

Pure functions of the tables that :mod:`icl_circuits.papers.chan2024.reproduce` writes (columns
``N, p_relevant[, sigma], seed, split, metric, value``); each claim on the transformer names the
checkpoint rule its table was read with, and each states its threshold.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from icl_circuits.reproduce.common import Claim

#: The training p_relevant the paper's headline curves use.
MAIN_P = 0.9
#: The main grid's input noise, the noise sweep's largest, and the gap "clearly above" asks for.
SIGMA, NOISY, NOISE_GAP = 0.2, 0.4, 0.2
#: "Above" in the "alpha_high above alpha_low" claim: by more than this (both are ~equal where g
#: knows both groups or neither, so the claim counts the N where they differ).
GAP_TOL = 0.01
#: A curve "rises" (or "falls") with N when its Spearman rank correlation with N has a one-sided
#: p-value (scipy) below RISE_P and no step between neighbouring N goes the other way by more
#: than STEP_TOL (so a U-shape does not pass).
RISE_P, STEP_TOL = 0.05, 0.05
#: Curves of up to this many N get an exact permutation p-value (8! orderings).
EXACT_N = 8
#: "Present" in the parallel-strategies claim: accuracy at least twice chance (1/10 over 10 labels).
PRESENT = 0.2


def by_n(table: pd.DataFrame, split: str, metric: str, p: float, sigma: float = SIGMA) -> pd.Series:
    """Seed-mean ``metric`` on ``split`` at training p_relevant ``p`` (and ``sigma``), indexed by N."""
    rows = table[(table["split"] == split) & (table["metric"] == metric) & np.isclose(table["p_relevant"], p)]
    if "sigma" in rows.columns:
        rows = rows[np.isclose(rows["sigma"], sigma)]
    return rows.groupby("N")["value"].mean().sort_index()


def spearman(curve: pd.Series) -> float:
    """Spearman rank correlation of a curve (indexed by N) with N; 0 for a flat or one-point curve."""
    if len(curve) < 2 or curve.nunique() < 2:
        return 0.0
    return float(stats.spearmanr(curve.index.to_numpy(), curve.to_numpy()).statistic)


def trend(curve: pd.Series, direction: int) -> tuple[bool, str]:
    """Whether ``curve`` rises (``direction`` +1) or falls (-1) with N, and the numbers that say so.

    It does when its Spearman correlation with N has the sign of ``direction`` with a one-sided
    p-value below :data:`RISE_P` and no step between neighbouring N goes against it by more than
    :data:`STEP_TOL`. The p-value is a permutation test (exact up to :data:`EXACT_N` points), so
    a handful of points cannot pass on the t approximation: 3 rising points give p = 1/6.
    """
    if len(curve) < 3 or curve.nunique() < 2:
        return False, "too few N to judge"
    n = curve.index.to_numpy()
    test = stats.permutation_test(
        (curve.to_numpy(),),
        lambda y: stats.spearmanr(n, y).statistic,
        permutation_type="pairings",
        alternative="greater" if direction > 0 else "less",
        n_resamples=np.inf if len(curve) <= EXACT_N else 9999,
        rng=0,
    )
    against = float((-direction * curve.diff().dropna()).max())
    ok = bool(test.pvalue < RISE_P and against <= STEP_TOL)
    word = "down" if direction > 0 else "up"
    return (
        ok,
        f"Spearman {test.statistic:+.2f} (one-sided p {test.pvalue:.3f}); largest step {word} {max(against, 0):.2f}",
    )


def fmt_curve(curve: pd.Series) -> str:
    return ", ".join(f"2^{int(round(math.log2(n)))}: {v:.2f}" for n, v in curve.items())


def _n(n: float) -> str:
    return f"2^{int(round(math.log2(n)))}"


def _fall(curve: pd.Series) -> float:
    """The first N after the peak at which the curve is below half its peak (inf if never)."""
    after = curve[curve.index > curve.idxmax()]
    below = after[after < curve.max() / 2]
    return float(below.index.min()) if len(below) else math.inf


def peaked(curve: pd.Series) -> tuple[bool, float]:
    """Whether ``curve`` rises to its peak and falls after it (no step against either by more than
    :data:`STEP_TOL`), and the largest step against."""
    peak = curve.index.get_loc(curve.idxmax())
    up, down = curve.iloc[: peak + 1].diff().dropna(), curve.iloc[peak:].diff().dropna()
    against = max([0.0, *(-up).tolist(), *down.tolist()])
    return against <= STEP_TOL, against


def transformer_claims(t: pd.DataFrame, rule: str = "last") -> list[Claim]:
    """The transformer's claims, each read at the checkpoint ``rule`` chose (named in the claim)."""
    at = f" [checkpoint: {rule}]"
    claims = []
    low = by_n(t, "OOBD-low", "acc", MAIN_P)
    if len(low):
        peak_n, peak, last = low.idxmax(), low.max(), low.iloc[-1]
        shaped, against = peaked(low)
        claims.append(
            Claim(
                f"Transformer, p_rel {MAIN_P}: rare-class ICL (OOBD-low) rises with N to a peak >= 0.5 at some "
                f"N <= 2^12, then falls to <= 0.1 at the largest N (no step against the rise or the fall larger "
                f"than {STEP_TOL}){at}",
                "rises, then falls with N (transient in N)",
                f"{fmt_curve(low)}; peak {peak:.2f} at N = {_n(peak_n)}; largest step against {against:.2f}",
                bool(low[low.index <= 2**12].max() >= 0.5 and last <= 0.1 and peak_n > low.index[0] and shaped),
            )
        )
    iwl_low = by_n(t, "IBD-irr-low", "acc", MAIN_P)
    if len(iwl_low):
        ok, how = trend(iwl_low, +1)
        claims.append(
            Claim(
                f"Transformer, p_rel {MAIN_P}: in-weight accuracy on low-frequency classes (IBD-irr-low) rises with N "
                f"(Spearman one-sided p < {RISE_P}, no step down larger than {STEP_TOL}){at}",
                "IWL on rare classes takes over as N grows",
                f"{fmt_curve(iwl_low)}; {how}",
                ok,
            )
        )
    high = by_n(t, "OOBD-high", "acc", MAIN_P)
    if len(high):
        claims.append(
            Claim(
                f"Transformer, p_rel {MAIN_P}: high-frequency classes are learned in weight "
                f"(OOBD-high accuracy <= 0.2 at every N above the smallest){at}",
                "IWL on high-frequency classes",
                f"{fmt_curve(high)}",
                bool(high[high.index > high.index.min()].max() <= 0.2),
            )
        )
    if len(high) and len(low):
        nh, nl = _fall(high), _fall(low)
        claims.append(
            Claim(
                f"Transformer, p_rel {MAIN_P}: IWL takes over first for frequent classes: ICL on high-frequency "
                f"queries (OOBD-high) falls below half its peak at a smaller N than on low-frequency ones{at}",
                "as N grows, IWL takes over first for the frequent classes",
                f"OOBD-high falls at N = {nh:g}, OOBD-low at N = {nl:g}; OOBD-high: {fmt_curve(high)}",
                bool(math.isfinite(nh) and nh < nl),
            )
        )
    irr = by_n(t, "OOBD-rel-low", "acc", 0.0)
    if len(irr):
        claims.append(
            Claim(
                f"Transformer, p_rel 0 (context never relevant): no ICL at any N (OOBD-rel-low <= 0.2){at}",
                "no ICL without relevant contexts",
                f"max {irr.max():.3f}",
                bool(irr.max() <= 0.2),
            )
        )
    rel = by_n(t, "OOBD-low", "acc", 1.0)
    if len(rel):
        formed = rel[rel >= 0.5]
        after = rel[rel.index >= formed.index.min()] if len(formed) else rel.iloc[:0]
        claims.append(
            Claim(
                "Transformer, p_rel 1 (context always relevant): rare-class ICL persists at every N from the "
                f"first N where it forms (OOBD-low >= 0.5 there and at every larger N){at}",
                "ICL persists when the context always holds the answer",
                f"{fmt_curve(rel)}",
                bool(len(formed) and after.min() >= 0.5),
            )
        )
    return claims + noise_claims(t, rule)


def noise_claims(t: pd.DataFrame, rule: str) -> list[Claim]:
    """The noise sweep (the paper's Fig. 3): more input noise, more rare-class ICL at the largest N."""
    at = f" [checkpoint: {rule}]"
    noisy, clean = by_n(t, "OOBD-low", "acc", MAIN_P, NOISY), by_n(t, "OOBD-low", "acc", MAIN_P)
    if not len(noisy) or not len(clean) or noisy.index.max() not in clean.index:
        return []
    n = noisy.index.max()
    quiet = by_n(t, "OOBD-low", "acc", MAIN_P, 0.0)
    at_n = f"N = {_n(n)}: sigma 0: {quiet.get(n, float('nan')):.2f}, {SIGMA}: {clean[n]:.2f}, {NOISY}: {noisy[n]:.2f}"
    kept = noisy[n] / noisy.max() if noisy.max() > 0 else 0.0
    return [
        Claim(
            f"Transformer, p_rel {MAIN_P}: more input noise keeps more rare-class ICL at the largest N (OOBD-low "
            f"there at sigma {NOISY} at least {NOISE_GAP} above sigma {SIGMA}, and sigma 0 not above sigma {SIGMA}){at}",
            "as sigma grows the in-weight predictor gets worse and ICL is kept",
            at_n,
            bool(noisy[n] - clean[n] >= NOISE_GAP and quiet.get(n, 0.0) <= clean[n]),
        ),
        Claim(
            f"Transformer, p_rel {MAIN_P}: at sigma {NOISY} rare-class ICL is not transient (OOBD-low at the largest "
            f"N at least half its peak over the sweep's {len(noisy)} values of N){at}",
            "as sigma grows ICL is no longer transient",
            f"sigma {NOISY}: {fmt_curve(noisy)}; the largest N keeps {kept:.2f} of the peak",
            bool(kept >= 0.5),
        ),
    ]


def together_claim(t: pd.DataFrame, g: pd.DataFrame, rule: str) -> list[Claim]:
    """The transformer's rare-class ICL and the gate's f fall at the same N of the grid."""
    low, f_low = by_n(t, "OOBD-low", "acc", MAIN_P), by_n(g, "OOBD-low", "acc_f", MAIN_P)
    if len(low) < 2 or len(f_low) < 2:
        return []

    nt, ng = _fall(low), _fall(f_low)
    return [
        Claim(
            f"Transformer and gating model, p_rel {MAIN_P}: rare-class ICL falls below half its peak at the same N "
            f"(the same point of the grid) [transformer checkpoint: {rule}]",
            "the stylized model predicts the transformer's transient rare-class ICL",
            f"transformer falls at N = {_n(nt) if math.isfinite(nt) else 'never'}, gate's f at N = "
            f"{_n(ng) if math.isfinite(ng) else 'never'}",
            bool(math.isfinite(nt) and nt == ng),
        )
    ]


def parallel_claim(t: pd.DataFrame, g: pd.DataFrame, rule: str) -> list[Claim]:
    """Both strategies in the transformer where the gate's two predictors are equally good.

    N* is the grid point where the gating model's in-weight predictor g and in-context
    predictor h, trained on the same training sets, are closest in IBD accuracy; the claim is
    that the transformer there shows both rare-class ICL (OOBD-low) and rare-class IWL
    (IBD-irr-low), each at least :data:`PRESENT`.
    """
    acc_g, acc_h = by_n(g, "IBD", "acc_g", MAIN_P), by_n(g, "IBD", "acc_h", MAIN_P)
    icl, iwl = by_n(t, "OOBD-low", "acc", MAIN_P), by_n(t, "IBD-irr-low", "acc", MAIN_P)
    common = acc_g.index.intersection(acc_h.index).intersection(icl.index).intersection(iwl.index)
    if not len(common):
        return []
    gap = (acc_g[common] - acc_h[common]).abs()
    n = gap.idxmin()
    return [
        Claim(
            f"Transformer and gating model, p_rel {MAIN_P}: where the gate's in-weight and in-context predictors are "
            f"closest in IBD accuracy (N*, a grid point), the transformer uses both strategies: rare-class ICL "
            f"(OOBD-low) and rare-class IWL (IBD-irr-low) each >= {PRESENT} at N* [transformer checkpoint: {rule}]",
            "ICL and IWL present in parallel when both can achieve the same performance",
            f"N* = {_n(n)} (g {acc_g[n]:.2f}, h {acc_h[n]:.2f}); there OOBD-low {icl[n]:.2f}, IBD-irr-low {iwl[n]:.2f}",
            bool(icl[n] >= PRESENT and iwl[n] >= PRESENT),
        )
    ]


#: How far below the gating model's IBD accuracy the transformer's may be and still "follow" it.
IBD_TOL = 0.02


def ibd_theory_claim(t: pd.DataFrame, g: pd.DataFrame, rule: str) -> list[Claim]:
    """Where the transformer's IBD falls short of 0.95, the paper's own stylized model does too.

    At small N the gating model's in-weight predictor g has not learned the classes, so its
    prediction f is the in-context predictor h, whose IBD accuracy is the share of IBD sequences
    whose context holds the query's class (0.915 at p_relevant 0.9, L = 1): the ceiling of any
    in-context solution. The claim: at every N above the smallest, the transformer's IBD is at
    most :data:`IBD_TOL` below f's, and wherever it is below 0.95, f's is below 0.95 too.
    """
    ibd, f_ibd = by_n(t, "IBD", "acc", MAIN_P), by_n(g, "IBD", "acc_f", MAIN_P)
    h_ibd = by_n(g, "IBD", "acc_h", MAIN_P)
    common = ibd.index.intersection(f_ibd.index)
    common = common[common > common.min()] if len(common) else common
    if not len(common):
        return []
    gap = ibd[common] - f_ibd[common]
    short = [n for n in common if ibd[n] < 0.95]
    ok = bool(gap.min() >= -IBD_TOL and all(f_ibd[n] < 0.95 for n in short))
    return [
        Claim(
            f"Transformer and gating model, p_rel {MAIN_P}: IBD accuracy at every N above the smallest is at most "
            f"{IBD_TOL} below the stylized model's f, and falls short of 0.95 only where f does (its in-context "
            f"ceiling, h's IBD accuracy, is the share of IBD contexts holding the query's class) "
            f"[transformer checkpoint: {rule}]",
            "the stylized model: ICL (alpha ~ 0) at small N, IWL at large N",
            f"transformer {fmt_curve(ibd[common])}; f {fmt_curve(f_ibd[common])}; h (ceiling) "
            f"{fmt_curve(h_ibd[h_ibd.index.isin(common)])}; below 0.95 at "
            f"{', '.join(_n(n) for n in short) or 'no N'}",
            ok,
        )
    ]


def gating_claims(g: pd.DataFrame) -> list[Claim]:
    claims = []
    a_low, a_high = by_n(g, "IBD-low", "alpha", MAIN_P), by_n(g, "IBD-high", "alpha", MAIN_P)
    if len(a_low):
        ok, how = trend(a_low, +1)
        claims.append(
            Claim(
                f"Gating model, p_rel {MAIN_P}: the gate's IWL share alpha on low-frequency queries rises with N "
                f"(Spearman one-sided p < {RISE_P}, no step down larger than {STEP_TOL})",
                "IWL takes over as N grows",
                f"{fmt_curve(a_low)}; {how}",
                ok,
            )
        )
        gap = a_high - a_low
        above, below = int((gap > GAP_TOL).sum()), int((gap < -GAP_TOL).sum())
        claims.append(
            Claim(
                f"Gating model, p_rel {MAIN_P}: alpha on high-frequency queries is above alpha on low-frequency "
                f"queries at most N (above by more than {GAP_TOL} at more than half of the N, below by more than "
                f"{GAP_TOL} at none)",
                "IWL for frequent classes first",
                f"alpha_high - alpha_low: {fmt_curve(gap)}; above at {above} of {len(gap)} N, below at {below}",
                bool(above > len(gap) / 2 and below == 0),
            )
        )
    f_low = by_n(g, "OOBD-low", "acc_f", MAIN_P)
    if len(f_low):
        ok, how = trend(f_low, -1)
        claims.append(
            Claim(
                f"Gating model, p_rel {MAIN_P}: its OOBD-low accuracy is >= 0.5 at the smallest N and falls with N "
                f"(Spearman one-sided p < {RISE_P}, no step up larger than {STEP_TOL})",
                "the stylized model predicts the transformer's transient rare-class ICL",
                f"{fmt_curve(f_low)}; {how}",
                bool(f_low.iloc[0] >= 0.5 and ok),
            )
        )
    a_irr = by_n(g, "IBD", "alpha", 0.0)
    if len(a_irr):
        claims.append(
            Claim(
                "Gating model, p_rel 0 (context never relevant): the gate picks the in-weight predictor (alpha > 0.5)",
                "irrelevant contexts give IWL",
                f"min alpha over N {a_irr.min():.3f}",
                bool(a_irr.min() > 0.5),
            )
        )
    return claims
