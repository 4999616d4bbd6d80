"""The small PNG figures of ``docs/reproductions/`` and the README, from measured numbers.

Each figure comes from a cpu run's output folder (its tidy CSV tables) or, where the page's
table is the record of a run, from that table's numbers (named beside each one below).

Usage::

    python scripts/docs_figures.py --chan2024 reproductions/chan2024-cpu \\
        --reddy2023 reproductions/reddy2023-cpu --singh2024 reproductions/singh2024-cpu
    python scripts/docs_figures.py            # only the figures drawn from the pages' tables
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from icl_circuits.papers.chan2024.reference import REFERENCE_CSV  # noqa: E402

OUT = ROOT / "docs" / "reproductions" / "figures"
DPI = 100

#: docs/reproductions/nguyen_reddy2024.md, "K* per N" (the cpu run's kstar.csv): N -> (K*, low, high, t_ICL median, min, max).
NGUYEN_REDDY = {
    4: (251, 231, 274, 300, 300, 300),
    8: (588, 534, 643, 500, 400, 600),
    12: (991, 918, 1072, 600, 500, 600),
    16: (1435, 1308, 1533, 900, 600, 1100),
    32: (2767, 1660, 4133, 1700, 1400, 2400),
}
#: docs/reproductions/singh2023.md, the `threshold` condition, seed 1: step -> ICL accuracy.
SINGH2023_THRESHOLD = {2105: 0.80, 4297: 0.85, 6316: 0.79, 11579: 0.71, 16842: 0.63, 23158: 0.58, 40000: 0.54}
#: docs/reproductions/singh2023.md, "The 2023 layout at 40,000 steps", seed 1: step -> ICL accuracy.
SINGH2023_NONE_40K = {462: 0.89, 4297: 1.00, 10526: 1.00, 23158: 1.00, 40000: 1.00}
#: docs/reproductions/chan2024_llm.md, the curves table: step -> (ICL p0, memorised p0, ICL p0.9, memorised p0.9).
CHAN2024_LLM = {
    0: (0.19, 0.00, 0.19, 0.00),
    4: (0.25, 0.00, 0.94, 0.00),
    12: (0.00, 0.12, 0.94, 0.06),
    36: (0.06, 0.31, 0.94, 0.06),
    73: (0.00, 1.00, 0.94, 0.31),
    150: (0.00, 1.00, 0.94, 0.62),
}


def _save(fig: plt.Figure, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _log2_axis(ax: plt.Axes, ns: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([f"$2^{{{int(math.log2(n))}}}$" for n in ns])
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def _curve(table: pd.DataFrame, split: str, p: float = 0.9, sigma: float | None = 0.2) -> pd.DataFrame:
    rows = table[(table["split"] == split) & (table["metric"] == "acc") & np.isclose(table["p_relevant"], p)]
    if sigma is not None and "sigma" in rows:
        rows = rows[np.isclose(rows["sigma"], sigma)]
    return rows.groupby("N")["value"].agg(["mean", "min", "max"]).sort_index()


def chan2024(run: Path) -> list[Path]:
    """Rare-class ICL and IWL against N, ours next to the authors' code; and the noise sweep."""
    ours, ref = pd.read_csv(run / "transformer.csv"), pd.read_csv(REFERENCE_CSV)
    ref = ref[ref["steps"] == 10_000]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for split, color, label in (
        ("OOBD-low", "C3", "rare-class ICL (OOBD-low)"),
        ("IBD-irr-low", "C0", "rare-class IWL (IBD-irr-low)"),
    ):
        c = _curve(ours, split)
        ax.plot(c.index, c["mean"], "o-", color=color, label=f"{label}, ours")
        ax.fill_between(c.index, c["min"], c["max"], color=color, alpha=0.15)
        r = _curve(ref, split)
        ax.plot(r.index, r["mean"], "s--", color=color, alpha=0.7, label=f"{label}, authors' code")
    _log2_axis(ax, sorted(ours["N"].unique()))
    ax.set(xlabel="training-set size N", ylabel="accuracy", title="Chan et al. 2024, cf. Fig. 3: p_rel 0.9, σ 0.2")
    ax.legend(fontsize=7, loc="center right")
    paths = [_save(fig, "chan2024_fig3_icl_vs_n.png")]

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, split, title in zip(
        axes, ("OOBD-low", "IBD-irr-low"), ("rare-class ICL (OOBD-low)", "rare-class IWL (IBD-irr-low)"), strict=True
    ):
        for sigma, color in ((0.0, "C2"), (0.2, "C1"), (0.4, "C4")):
            c = _curve(ours, split, sigma=sigma)
            if len(c):
                ax.plot(c.index, c["mean"], "o-", color=color, label=f"σ = {sigma:g}")
        _log2_axis(ax, sorted(ours["N"].unique()))
        ax.set(xlabel="N", title=title)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle("Chan et al. 2024, cf. Fig. 3: input noise σ", fontsize=10)
    paths.append(_save(fig, "chan2024_fig3_noise.png"))
    return paths


def nguyen_reddy2024() -> Path:
    ns = np.array(sorted(NGUYEN_REDDY))
    k, lo, hi, t, tlo, thi = (np.array([NGUYEN_REDDY[n][i] for n in ns]) for i in range(6))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.errorbar(ns, k, yerr=[k - lo, hi - k], fmt="o", color="C0", capsize=3, label="K* (95% seed bootstrap)")
    ref = k[list(ns).index(12)]
    for slope, style, label in ((1.17, "-", "fitted slope 1.17"), (1 / 0.7, "--", "paper: 1/ν ≈ 1.43")):
        left.plot(ns, ref * (ns / 12) ** slope, style, color="grey", label=label)
    left.set(xscale="log", yscale="log", xlabel="N (counting the query)", ylabel="K*", title="threshold K* against N")
    left.legend(fontsize=7)
    right.errorbar(ns, t, yerr=[t - tlo, thi - t], fmt="o-", color="C1", capsize=3)
    right.set(
        xscale="log", yscale="log", xlabel="N", ylabel="median t_ICL (steps)", title="cf. Fig. 6b: t_ICL at K = ∞"
    )
    for ax in (left, right):
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.grid(alpha=0.3, which="both")
    return _save(fig, "nguyen_reddy2024_fig6_kstar_t_icl.png")


def singh2023() -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    steps, icl = zip(*sorted(SINGH2023_THRESHOLD.items()), strict=True)
    ax.plot(steps, icl, "o-", color="C3", label="threshold layout (K 144, 1 + 1 context)")
    steps, icl = zip(*sorted(SINGH2023_NONE_40K.items()), strict=True)
    ax.plot(steps, icl, "s-", color="C0", label="2023 layout (K 1024, 4 + 4 context)")
    ax.axhline(0.8, color="grey", ls=":", label="0.8: real ICL")
    ax.axhline(0.5, color="grey", ls="--", label="0.5: a random context label")
    ax.set(
        xlabel="step",
        ylabel="ICL accuracy (novel classes), seed 1",
        ylim=(0.4, 1.02),
        title="Singh et al.: ICL fades at the memorisation threshold only",
    )
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return _save(fig, "singh2023_threshold_fade.png")


def chan2024_llm() -> Path:
    steps = sorted(CHAN2024_LLM)
    cols = list(zip(*(CHAN2024_LLM[s] for s in steps), strict=True))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = [s + 1 for s in steps]
    for values, style, label in (
        (cols[0], "o-C3", "ICL, p_rel 0"),
        (cols[1], "s-C0", "memorised, p_rel 0"),
        (cols[2], "o--C3", "ICL, p_rel 0.9"),
        (cols[3], "s--C0", "memorised, p_rel 0.9"),
    ):
        ax.plot(x, values, style[:-2], color=style[-2:], label=label)
    ax.set(xscale="log", xlabel="fine-tuning step + 1", ylabel="accuracy", ylim=(-0.03, 1.03))
    ax.set_title("Chan et al. 2024 §5 on SmolLM2-135M (one seed, 16 prompts)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, "chan2024_llm_curves.png")


#: docs/reproductions/reddy2023.md, the results table: split -> B -> IC/IW accuracy over K = 32 ... 8192.
REDDY2023_K = [32, 128, 512, 2048, 8192]
REDDY2023 = {
    "IC": {
        0: (0.03, 0.03, 0.03, 0.02, 0.03),
        1: (0.04, 0.08, 0.08, 0.98, 0.21),
        2: (0.02, 0.09, 0.94, 0.98, 0.26),
        4: (0.05, 0.31, 0.96, 1.00, 0.98),
    },
    "IW": {
        0: (1.00, 1.00, 1.00, 1.00, 0.34),
        1: (1.00, 0.98, 0.90, 0.06, 0.04),
        2: (1.00, 0.93, 0.12, 0.04, 0.04),
        4: (1.00, 0.72, 0.07, 0.04, 0.04),
    },
}


def reddy2023(run: Path | None = None) -> Path:
    """The phase diagram from a run's ``phase.csv``, or from the page's results table."""
    if run is not None:
        phase = pd.read_csv(run / "phase.csv")
        mean = phase.groupby(["split", "data.burst", "data.n_classes"])["value"].mean()
        ks, bs = sorted(phase["data.n_classes"].unique()), sorted(phase["data.burst"].unique())
    else:
        ks, bs = REDDY2023_K, sorted(REDDY2023["IC"])
        mean = {(sp, b, k): REDDY2023[sp][b][i] for sp in REDDY2023 for b in bs for i, k in enumerate(ks)}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
    for ax, split in zip(axes, ("IC", "IW"), strict=True):
        grid = np.array([[mean[(split, b, k)] for k in ks] for b in bs])
        im = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(len(bs)):
            for j in range(len(ks)):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if grid[i, j] < 0.5 else "k",
                )
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_yticks(range(len(bs)), [str(b) for b in bs])
        ax.set(xlabel="K (classes)", ylabel="B (burstiness)", title=f"{split} accuracy")
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle("Reddy 2023: the (K, B) phase diagram, cpu scale", fontsize=10)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "reddy2023_phase_K_B.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def singh2024(run: Path) -> Path:
    curves = pd.read_csv(run / "curves.csv")
    loss = curves[(curves["split"] == "train") & (curves["metric"] == "loss")]
    fig, ax = plt.subplots(figsize=(6, 3))
    for seed, c in loss.groupby("seed"):
        ax.plot(c["step"], c["value"], ".-", label=f"seed {seed}")
    ax.axhline(math.log(2), color="grey", ls=":", label="ln 2")
    ax.set(xlabel="step", ylabel="training loss", title="Singh et al. 2024: the loss leaves the ln 2 plateau")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, "singh2024_loss_fall.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="docs_figures.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--chan2024", type=Path, help="a chan2024 cpu run folder")
    p.add_argument("--reddy2023", type=Path, help="a reddy2023 cpu run folder")
    p.add_argument("--singh2024", type=Path, help="a singh2024 cpu run folder")
    args = p.parse_args(argv)
    made = [nguyen_reddy2024(), singh2023(), chan2024_llm()]
    if not args.reddy2023:
        made.append(reddy2023())
    if args.chan2024:
        made += chan2024(args.chan2024)
    if args.reddy2023:
        made.append(reddy2023(args.reddy2023))
    if args.singh2024:
        made.append(singh2024(args.singh2024))
    for path in made:
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
