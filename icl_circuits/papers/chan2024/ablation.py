"""Which setting carries Chan et al. 2024's rare-class ICL: label scale x weight init x positions.

The ``chan2024`` reproduction showed no rare-class ICL until the model's settings followed
``chanb/simple_icl``. This reproduction trains the 2 x 2 x 2 grid of the three settings that
differed, at one training-set size (N = 2^10, where rare-class ICL peaks) and p_relevant 0.9,
with 3 seeds each, and measures each setting's main effect on rare-class ICL (OOBD-low),
IBD accuracy and rare-class IWL (IBD-irr-low):

* **label**: TransformerLens's token-embedding init (normal, std 0.02, no bias) or the
  reference's Dense on the one-hot label (lecun-normal, std 1/sqrt(10), learned bias);
* **init**: TransformerLens's ``gpt2`` init (std 0.02) or lecun-normal on every weight;
* **positions**: consecutive or shared (x_i and y_i share an index).

Everything else is the ``chan2024-stylized`` preset (and its reference-law irrelevant
contexts). Runs are read at the checkpoint rule of ``settings["checkpoint"]``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from icl_circuits.papers.chan2024.reproduce import PRESET, transformer_tables  # noqa: E402
from icl_circuits.reproduce.common import Claim, Reproduction, pick  # noqa: E402
from icl_circuits.reproduce.plan import Plan  # noqa: E402
from icl_circuits.sweeps.spec import SweepSpec  # noqa: E402
from probes.figures import save  # noqa: E402

NAME = "chan2024-ablation"
#: factor -> {level: overrides}; the first level is TransformerLens's, the second the reference's.
FACTORS = {
    "label": {
        "tl": ["model.label_init=normal", "model.label_scale=0.02", "model.label_bias=false"],
        "reference": ["model.label_init=lecun_normal", "model.label_scale=1.0", "model.label_bias=true"],
    },
    "init": {
        "tl": ["model.init_mode=gpt2", "model.init_range=0.02"],
        "reference": ["model.init_mode=lecun_normal", "model.init_range=1.0"],
    },
}
POSITIONS = {"consecutive": "tl", "shared": "reference"}
#: The splits each combination is read on.
SPLITS = ("OOBD-low", "IBD", "IBD-irr-low")
#: "carries the effect": a main effect on OOBD-low at least this large.
EFFECT = 0.3


def settings(scale: str) -> dict:
    return {
        "preset": PRESET,
        "n_train": pick(scale, 2**6, 2**10, 2**10),
        "seeds": pick(scale, [0], [0, 1, 2], [0, 1, 2, 3, 4]),
        "checkpoint": "min_train_loss",
        "overrides": pick(
            scale,
            ["train.steps=10", "train.n_checkpoints=2", "train.eval_size=32", "train.device=cpu"],
            ["train.steps=4000", "train.n_checkpoints=10", "train.eval_size=512", "train.device=cpu"],
            ["train.steps=50000", "train.n_checkpoints=50", "train.eval_size=3000"],
        ),
    }


def sweeps(s: dict) -> tuple[dict[str, dict[str, list]], dict[str, dict[str, object]]]:
    """One sweep per (label, init) level pair over positions x seed; the factor columns of each."""
    grids, extra = {}, {}
    for label, init in itertools.product(FACTORS["label"], FACTORS["init"]):
        name = f"label-{label}_init-{init}"
        fixed = FACTORS["label"][label] + FACTORS["init"][init]
        # Fixed settings ride on the axes as one-value axes, so each sweep keeps the common overrides.
        axes: dict[str, list] = {}
        for item in fixed:
            key, value = item.split("=", 1)
            axes[key] = [_parse(value)]
        axes["data.n_train"] = [s["n_train"]]
        axes["model.positions"] = list(POSITIONS)
        axes["seed"] = s["seeds"]
        grids[name] = axes
        extra[name] = {"label": label, "init": init}
    return grids, extra


def _parse(value: str):
    if value in ("true", "false"):
        return value == "true"
    try:
        return float(value) if "." in value or "e" in value else int(value)
    except ValueError:
        return value


def combination_table(table: pd.DataFrame) -> pd.DataFrame:
    """Seed mean, min and max of each split's accuracy per (label, init, positions) combination."""
    rows = table[(table["metric"] == "acc") & table["split"].isin(SPLITS)]
    stats = rows.groupby(["label", "init", "positions", "split"])["value"].agg(["mean", "min", "max"])
    return stats.reset_index()


def main_effects(table: pd.DataFrame) -> pd.DataFrame:
    """Per factor and split: mean accuracy at the reference's level minus at TransformerLens's level."""
    rows = table[(table["metric"] == "acc") & table["split"].isin(SPLITS)]
    out = []
    for factor in ("label", "init", "positions"):
        means = rows.groupby([factor, "split"])["value"].mean().unstack(factor)
        ref, tl = ("shared", "consecutive") if factor == "positions" else ("reference", "tl")
        for split, diff in (means[ref] - means[tl]).items():
            out.append({"factor": factor, "split": split, "effect": float(diff)})
    return pd.DataFrame(out)


def claims(table: pd.DataFrame, effects: pd.DataFrame, rule: str) -> list[Claim]:
    at = f" [checkpoint: {rule}]"
    icl = effects[effects["split"] == "OOBD-low"].set_index("factor")["effect"]
    combos = combination_table(table)
    low = combos[combos["split"] == "OOBD-low"].set_index(["label", "init", "positions"])["mean"]
    fmt = "; ".join(f"{f}: {v:+.2f}" for f, v in icl.items())
    out = [
        Claim(
            "Ablation at N = 2^10, p_rel 0.9: the label-embedding scale carries rare-class ICL "
            f"(its main effect on OOBD-low is the largest of the three and >= {EFFECT}){at}",
            "the reference's label embedding is ~16x larger than TransformerLens's; smaller ones suppress ICL",
            f"main effects on OOBD-low: {fmt}",
            bool(icl.idxmax() == "label" and icl["label"] >= EFFECT),
        ),
        Claim(
            "Ablation: with the reference's label embedding, rare-class ICL forms under either init "
            f"and either position scheme (OOBD-low >= 0.5 in all four){at}",
            "-",
            ", ".join(f"{i}/{p}: {low[('reference', i, p)]:.2f}" for i in FACTORS["init"] for p in POSITIONS),
            bool(all(low[("reference", i, p)] >= 0.5 for i in FACTORS["init"] for p in POSITIONS)),
        ),
        Claim(
            "Ablation: with TransformerLens's label embedding (std 0.02), no combination reaches "
            f"rare-class ICL (OOBD-low < 0.5 in all four){at}",
            "no ICL at TransformerLens's label scale",
            ", ".join(f"{i}/{p}: {low[('tl', i, p)]:.2f}" for i in FACTORS["init"] for p in POSITIONS),
            bool(all(low[("tl", i, p)] < 0.5 for i in FACTORS["init"] for p in POSITIONS)),
        ),
    ]
    return out


def figure(combos: pd.DataFrame, path: Path) -> Path:
    """One bar group per combination, a bar per split (seed mean, seed range as error bars)."""
    keys = combos[["label", "init", "positions"]].drop_duplicates().values.tolist()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(SPLITS)
    for j, split in enumerate(SPLITS):
        sub = combos[combos["split"] == split].set_index(["label", "init", "positions"])
        means = [sub.loc[tuple(k), "mean"] for k in keys]
        lo = [sub.loc[tuple(k), "mean"] - sub.loc[tuple(k), "min"] for k in keys]
        hi = [sub.loc[tuple(k), "max"] - sub.loc[tuple(k), "mean"] for k in keys]
        xs = [i + (j - 1) * width for i in range(len(keys))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=2, label=split)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"label {a}\ninit {b}\n{c}" for a, b, c in keys], fontsize=7)
    ax.set_ylabel("accuracy (seed mean, range)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Chan 2024 at N = 2^10: label scale x init x positions")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save(fig, path)
    return path


def plan(scale: str) -> Plan:
    """The dry run's plan: the 2 x 2 x 2 grid's sweeps in one pool of jobs."""
    s = settings(scale)
    return Plan(stages=({n: SweepSpec(PRESET, tuple(s["overrides"]), a) for n, a in sweeps(s)[0].items()},))


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    torch.set_num_threads(1)
    s = settings(scale)
    grids, extra = sweeps(s)
    table, curves = transformer_tables(out, s, workers, progress, sweeps=grids, extra=extra)
    combos, effects = combination_table(table), main_effects(table)
    return Reproduction(
        name=NAME,
        scale=scale,
        settings=s,
        claims=claims(table, effects, s["checkpoint"]),
        tables={"runs": table, "combinations": combos, "main_effects": effects, "curves": curves},
        figures=[figure(combos, out / "ablation.png")],
    )
