"""The claims of ``reproduce nguyen-reddy2024-mechanism``: independent paths, rates not capacity."""

from __future__ import annotations

import pandas as pd

from icl_circuits.papers.nguyen_reddy2024.rates import fmt_slope
from icl_circuits.reproduce.common import Claim

#: How far an accuracy may move (or sit from chance) and still count as "left" (or "removed").
ACC_TOL = 0.05
#: A path counts as learned where its own split's clean accuracy is this far above chance.
LEARNED = 0.1
#: The additive form holds where |interaction| is at most this share of the path's own contribution.
INTERACTION_SHARE = 0.25
#: "Largely independent" circuits: the Jaccard index of their edge sets at most this.
JACCARD_MAX = 0.25
#: "Much less than capacity predicts": the measured slope in the parameter count at most this share of 1.
WIDTH_SHARE = 0.25

PAPER = "the sub-circuits that memorise and that generalise are largely independent"


def final_paths(paths: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean accuracy per regime, split and condition at each run's last checkpoint."""
    last = paths[paths["step"] == paths.groupby(["regime", "seed"])["step"].transform("max")]
    acc = last[last["condition"] != "interaction"]
    return acc.groupby(["regime", "K", "split", "condition"], as_index=False)["acc"].mean()


def independence_claims(paths: pd.DataFrame, chance: float, icl: str = "IC", iwl: str = "IW") -> list[Claim]:
    """Per regime: each ablation removes its own strategy and leaves the other, and the
    interaction term is small against the path's own contribution."""
    acc = final_paths(paths).set_index(["regime", "split", "condition"])["acc"]
    claims = []
    for regime, k in paths.groupby("regime")["K"].first().items():

        def a(split: str, cond: str, regime=regime) -> float:
            return float(acc[(regime, split, cond)])

        has_icl, has_iwl = a(icl, "clean") > chance + LEARNED, a(iwl, "clean") > chance + LEARNED
        where = f"{regime} K* (K = {k:,})"
        text = f"clean IC {a(icl, 'clean'):.3f}, IW {a(iwl, 'clean'):.3f}"
        rows = [
            ("ablating the attention (mean, at the query) removes ICL", has_icl, icl, "no_attention", "chance"),
            ("ablating the attention leaves IWL", has_iwl, iwl, "no_attention", "clean"),
            (
                "ablating the memorising path (the query's own token into the MLP, mean) removes IWL",
                has_iwl,
                iwl,
                "no_memory",
                "chance",
            ),
            ("ablating the memorising path leaves ICL", has_icl, icl, "no_memory", "clean"),
            (
                "ablating the query's own item into the MLP and through the head's own value (mean) removes IWL",
                has_iwl,
                iwl,
                "no_memory_self",
                "chance",
            ),
            ("ablating the query's own item and its own value leaves ICL", has_icl, icl, "no_memory_self", "clean"),
        ]
        for what, applies, split, cond, against in rows:
            target = chance if against == "chance" else a(split, "clean")
            gap = abs(a(split, cond) - target)
            claims.append(
                Claim(
                    f"{what}, {where}: {split} accuracy within {ACC_TOL} of {'chance' if against == 'chance' else 'the clean model'}",
                    PAPER,
                    f"{split} {a(split, cond):.3f} ablated vs {target:.3f} ({text}); gap {gap:.3f}"
                    + ("" if applies else f"; the strategy is not learned here (clean within {LEARNED} of chance)"),
                    bool(gap <= ACC_TOL) if applies else None,
                )
            )
        claims.append(_interaction_claim(paths, regime, where, has_icl, has_iwl, icl, iwl))
    return claims


def _interaction_claim(paths, regime, where, has_icl, has_iwl, icl, iwl) -> Claim:
    inter = paths[(paths["regime"] == regime) & (paths["condition"] == "interaction")]
    per = inter.groupby(["split", "step"])[["abs_interaction", "abs_c_attn", "abs_c_mem"]].mean()
    share = {
        icl: per.loc[icl, "abs_interaction"] / per.loc[icl, "abs_c_attn"],
        iwl: per.loc[iwl, "abs_interaction"] / per.loc[iwl, "abs_c_mem"],
    }
    last = {s: float(v.iloc[-1]) for s, v in share.items()}
    worst = {s: (float(v.max()), int(v.idxmax())) for s, v in share.items()}
    learned = [s for s, ok in ((icl, has_icl), (iwl, has_iwl)) if ok]
    return Claim(
        f"the additive form, {where}: mean |interaction| (logit - attention-only - memorising-only + baseline) at most "
        f"{INTERACTION_SHARE} of the mean |contribution| of the split's own path (attention on {icl}, memorising on {iwl}) "
        "at the last checkpoint, where that path is learned",
        "additive logit of the two sub-circuits (the theory's form)",
        "; ".join(f"{s}: {last[s]:.2f} at the end, largest {worst[s][0]:.2f} (step {worst[s][1]})" for s in (icl, iwl))
        + f"; learned: {', '.join(learned) or 'neither'}",
        bool(all(last[s] <= INTERACTION_SHARE for s in learned)) if learned else None,
    )


def rate_claims(kw: pd.DataFrame, kr: pd.DataFrame, f: dict) -> list[Claim]:
    """K* follows the rate ratio as the kinetic theory predicts; width moves it much less than capacity predicts."""
    widths = ", ".join(f"{int(r.mlp_width)}: {r.kstar:.0f}" for r in kw.itertuples())
    ratios = ", ".join(f"{r.ratio:g}: {r.kstar:.0f}" for r in kr.itertuples())
    lo, hi = f["theory_ratio_lo"], f["theory_ratio_hi"]
    follows = f["slope_ratio_lo"] <= hi and f["slope_ratio_hi"] >= lo
    return [
        Claim(
            f"K* follows the MLP-to-attention learning-rate ratio r as the kinetic theory predicts: the log-log slope's "
            f"95% bootstrap interval overlaps [{lo:.2f}, {hi:.2f}] (1/nu for nu 0.88-0.7; capacity predicts 0), "
            f"{len(kr)} ratios spanning {kr['ratio'].max() / kr['ratio'].min():.0f}x",
            "the relative rates explain the transition",
            f"K* by r: {ratios}; slope {fmt_slope(f['slope_ratio'], f['slope_ratio_lo'], f['slope_ratio_hi'])}",
            bool(follows),
        ),
        Claim(
            f"K* moves with the MLP's width by much less than a capacity account predicts: the log-log slope in the MLP's "
            f"parameter count at most {WIDTH_SHARE} (the upper end of its 95% bootstrap interval; capacity predicts "
            f"{f['capacity_params']:.0f}, the kinetic theory 0), {len(kw)} widths spanning "
            f"{kw['mlp_width'].max() / kw['mlp_width'].min():.0f}x",
            "not capacity constraints",
            f"K* by width: {widths} (parameters x{f['params_range']:.0f}, K* x{f['kstar_range_width']:.2f}); slope "
            f"{fmt_slope(f['slope_params'], f['slope_params_lo'], f['slope_params_hi'])}",
            bool(f["slope_params_hi"] <= WIDTH_SHARE),
        ),
    ]


def _jaccard_text(g: pd.DataFrame) -> str:
    both = g.dropna(subset=["jaccard"])
    learned = [r for r in ("ICL", "IWL") if g[f"{r.lower()}_reported"].any()]
    text = (
        f"{len(both)} of {len(g)} checkpoints ({g['seed'].nunique()} seeds) with both circuits"
        if len(both)
        else f"no checkpoint of {len(g)} ({g['seed'].nunique()} seeds) with both circuits"
    )
    if len(both):
        text += f": Jaccard median {both['jaccard'].median():.2f}, range {both['jaccard'].min():.2f}-{both['jaccard'].max():.2f}"
        last = both[both["step"] == both["step"].max()].iloc[0]
        shared = sorted(set(last["icl_edges"].split()) & set(last["iwl_edges"].split()))
        text += (
            f"; at step {int(last['step'])} (seed {int(last['seed'])}): ICL {int(last['icl_n_edges'])}, IWL "
            f"{int(last['iwl_n_edges'])} of {int(last['n_total'])} edges, shared: {', '.join(shared) or 'none'}"
        )
    return text + f"; circuits reported: {', '.join(learned) or 'neither'}"


def circuit_claims(overlap: pd.DataFrame, params: str) -> list[Claim]:
    """Per model and regime: the discovered ICL and IWL circuits share few edges, where both are learned.

    Args:
        overlap: :func:`.circuit_overlap.overlap_table` rows with ``model, regime, K, seed``.
        params: how the circuits were found, for the claim's text.
    """
    claims, medians = [], {}
    for (model, regime), g in overlap.groupby(["model", "regime"], sort=False):
        both = g["jaccard"].dropna()
        where = f"{model}, {regime} (K = {int(g['K'].iloc[0]):,})"
        if len(both):
            medians[(model, regime)] = float(both.median())
        claims.append(
            Claim(
                f"the discovered ICL and IWL circuits are largely independent, {where}: the Jaccard index of their edge "
                f"sets at most {JACCARD_MAX} at every checkpoint where both behaviours are learned ({params})",
                PAPER,
                _jaccard_text(g),
                bool((both <= JACCARD_MAX).all()) if len(both) else None,
            )
        )
    if medians:
        claims.append(
            Claim(
                "the one-layer and the two-layer models compared: median Jaccard of the ICL and IWL circuits, where both are "
                "learned (a contrast; the paper's model is the one-layer one)",
                "-",
                "; ".join(f"{m}, {r}: {v:.2f}" for (m, r), v in medians.items()),
                None,
            )
        )
    return claims
