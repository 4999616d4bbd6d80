"""Figures of the Nguyen & Reddy 2024 reproduction (:mod:`.nguyen_reddy2024`)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin
from probes.figures import save

ICL_THRESHOLD = 0.95  # t_ICL: first step with ICL accuracy above this (the paper's)
MEM_THRESHOLD = 0.9  # t_mem: first step with IW accuracy above this
MID_BAND = (0.2, 0.8)  # bimodality: share of seeds ending in between should be small


def _normalised(acc, lo: float):
    return (np.asarray(acc) - lo) / (1.0 - lo)


def fig_icl_vs_k(out: Path, runs, thr, model, chance) -> Path:
    Ns = sorted(runs["N"].unique())
    fig, axes = plt.subplots(1, len(Ns), figsize=(4.2 * len(Ns), 3.6), sharey=True, squeeze=False)
    sim = model["sim"]
    for ax, N in zip(axes[0], Ns, strict=True):
        r = runs[runs["N"] == N]
        jitter = 1 + 0.04 * (r["seed"] - r["seed"].mean())
        ax.scatter(r["K"] * jitter, _normalised(r["icl_acc"], chance), s=14, alpha=0.6, label="runs (seeds)")
        means = r.groupby("K")["icl_acc"].mean()
        ax.plot(means.index, _normalised(means, chance), "o", mfc="none", color="C0", label="mean")
        th = thr[thr["N"] == N].iloc[0]
        xs = np.geomspace(r["K"].min() / 1.5, r["K"].max() * 1.5, 200)
        ax.plot(xs, kin._sigmoid((np.log10(xs) - th["log10_kstar"]) / th["width"]), "C0-", label="sigmoid fit")
        ax.axvline(th["kstar"], color="C0", ls=":", label=f"K* = {th['kstar']:.0f}")
        m = sim[sim["N"] == N].groupby("K")["icl_acc"].mean()
        ax.plot(m.index, _normalised(m, 0.5), "s--", color="C3", ms=4, label="minimal model")
        ax.set(xscale="log", xlabel="K (task diversity)", title=f"N = {N}")
    axes[0][0].set_ylabel("ICL acc. (0 = chance, 1 = perfect)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "icl_vs_k.png"
    save(fig, path)
    return path


def fig_kstar(out: Path, thr, expo, model) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4))
    t = thr.sort_values("N")
    err = None
    if "log10_kstar_lo" in t:
        err = [t["kstar"] - 10 ** t["log10_kstar_lo"], 10 ** t["log10_kstar_hi"] - t["kstar"]]
    ax.errorbar(t["N"], t["kstar"], yerr=err, fmt="o", capsize=3, label="transformer (95% bootstrap)")
    ns = np.geomspace(t["N"].min() * 0.8, model["thresholds"]["N"].max() * 1.1, 50)
    ax.plot(
        ns, 10 ** (expo["intercept"] + expo["exponent"] * np.log10(ns)), "C0-", label=f"fit: b = {expo['exponent']:.2f}"
    )
    anchor = np.exp(np.mean(np.log(t["N"]))), np.exp(np.mean(np.log(t["kstar"])))
    ax.plot(ns, anchor[1] * (ns / anchor[0]) ** kin.PAPER_EXPONENT, "k--", lw=1, label="slope 1.43 (paper)")
    mt = model["thresholds"]
    ax.plot(mt["N"], mt["kstar"], "s:", color="C3", label=f"minimal model (calibrated at N={model['n_ref']})")
    ax.set(xscale="log", yscale="log", xlabel="N (context length)", ylabel="K*")
    ticks = sorted(set(t["N"]) | set(mt["N"]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "kstar_vs_n.png"
    save(fig, path)
    return path


def fig_t_icl(out: Path, runs, top, steps, model) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4))
    Ns = sorted(top)
    data = []
    for i, N in enumerate(Ns):
        t = runs[(runs["N"] == N) & runs["K"].isin(top[N])]["t_icl"]
        reached = t.dropna()
        data.append(reached.to_numpy())
        ax.scatter(
            np.full(len(reached), i) + np.linspace(-0.15, 0.15, max(len(reached), 1))[: len(reached)],
            reached,
            s=14,
            color="C0",
        )
        n_cens = int(t.isna().sum())
        if n_cens:
            ax.scatter(
                [i] * n_cens, [steps] * n_cens, marker="^", color="C1", label="never (censored)" if i == 0 else None
            )
    ax.boxplot([d if len(d) else [np.nan] for d in data], positions=range(len(Ns)), widths=0.5, showfliers=False)
    sim = model["sim"]
    med = [np.median(sim[(sim["N"] == N) & sim["K"].isin(top[N])]["t_icl"].fillna(np.inf)) for N in Ns]
    ax.plot(range(len(Ns)), med, "s--", color="C3", label="minimal model median")
    ax.axhline(steps, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(Ns)), [f"N={N}\nK={'/'.join(map(str, top[N]))}" for N in Ns], fontsize=7)
    ax.set(ylabel="t_ICL (steps)", title=f"time to ICL acc > {ICL_THRESHOLD}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "t_icl.png"
    save(fig, path)
    return path


def fig_bimodality(out: Path, near, curves) -> Path:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (N, g) in enumerate(near.groupby("N")):
        ks = sorted(g["K"].unique())
        ax.hist(g["icl_acc"], bins=np.linspace(0, 1, 21), alpha=0.5, label=f"N={N}, K={'/'.join(map(str, ks))}")
        c = curves[(curves["N"] == N) & curves["K"].isin(ks) & (curves["split"] == "IC")]
        for j, ((_, _), run) in enumerate(c.groupby(["K", "seed"])):
            run = run.sort_values("step")
            ax2.plot(run["step"], run["acc"], color=f"C{i}", lw=1, alpha=0.7, label=f"N={N}" if j == 0 else None)
    ax.axvspan(*MID_BAND, color="grey", alpha=0.1)
    ax.set(xlabel="final ICL accuracy", ylabel="runs", title="runs at the K values nearest K*")
    ax.legend(fontsize=7)
    ax2.set(xlabel="step", ylabel="ICL accuracy", title="their ICL accuracy during training")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = out / "bimodality.png"
    save(fig, path)
    return path


def fig_memorisation(out: Path, mem, fit) -> Path:
    fig, ax = plt.subplots(figsize=(4.4, 3.6))
    ok = mem.dropna(subset=["t_mem"])
    ax.plot(ok["K"], ok["t_mem"], "o", label="transformer, non-bursty training")
    if math.isfinite(fit["nu"]):
        slope, icpt = kin.fit_power_law(ok["K"], ok["t_mem"])
        ks = np.geomspace(ok["K"].min(), ok["K"].max(), 20)
        ax.plot(ks, 10**icpt * ks**slope, "C0-", label=f"nu = {slope:.2f}")
    if len(ok):
        ax.set(xscale="log", yscale="log")
    ax.set(xlabel="K", ylabel=f"steps to IW acc > {MEM_THRESHOLD}", title="memorisation law")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "memorisation.png"
    save(fig, path)
    return path
