"""Chan et al. 2024 on Omniglot: rare-class ICL against the training-set size with image exemplars.

The ``chan2024-omniglot`` preset draws sequences from the stylized distribution (5 frequent
and 5 rare classes, one context pair, p_relevant 0.9) whose exemplars are drawings of 10
Omniglot characters, encoded by a trained linear tokenizer. As on the Gaussian data, the paper
finds rare-class ICL at small N giving way to IWL as N grows.

Scales: ``cpu`` trains N = 2^6 .. 2^16 (6 values) x 2 seeds for 4,000 steps; ``full`` the
paper's N = 2^6, 2^8, ..., 2^20 (8 values) x 3 seeds x 50k steps. The ICL claim's bar (0.3) is
lower than the stylized data's 0.5 (docs/reproductions/chan2024.md says why).
"""

from __future__ import annotations

from pathlib import Path

import torch

from icl_circuits.papers.chan2024.figures import accuracy_figure
from icl_circuits.papers.chan2024.reproduce import MAIN_P, by_n, fmt_curve, transformer_tables
from icl_circuits.reproduce.common import Claim, Reproduction, pick
from icl_circuits.reproduce.plan import Plan
from icl_circuits.sweeps.spec import SweepSpec

NAME = "chan2024-omniglot"
PRESET = "chan2024-omniglot"


def settings(scale: str) -> dict:
    log2_n = pick(scale, [6, 8], list(range(6, 17, 2)), list(range(6, 21, 2)))
    return {
        "preset": PRESET,
        "n_train": [2**k for k in log2_n],
        "seeds": pick(scale, [0], [0, 1], [0, 1, 2]),
        "checkpoint": "min_train_loss",
        "overrides": pick(
            scale,
            ["train.steps=10", "train.n_checkpoints=2", "train.eval_size=32", "train.device=cpu", "data.image_size=6"],
            ["train.steps=4000", "train.n_checkpoints=10", "train.eval_size=512", "train.device=cpu"],
            ["train.steps=50000", "train.n_checkpoints=50", "train.eval_size=3000"],
        ),
    }


def claims(t, rule: str) -> list[Claim]:
    at = f" [checkpoint: {rule}]"
    low = by_n(t, "OOBD-low", "acc", MAIN_P, sigma=0.0)
    iwl = by_n(t, "IBD-irr-low", "acc", MAIN_P, sigma=0.0)
    small = low[low.index <= 2**12]
    return [
        Claim(
            f"Omniglot, p_rel {MAIN_P}: rare-class ICL (OOBD-low) at small N (>= 0.3 at some N <= 2^12) "
            f"falling with N (<= 0.1 at the largest N){at}",
            "rare-class ICL at small N, IWL as N grows",
            fmt_curve(low),
            bool(len(small) and small.max() >= 0.3 and low.iloc[-1] <= 0.1),
        ),
        Claim(
            f"Omniglot, p_rel {MAIN_P}: in-weight accuracy on rare classes (IBD-irr-low) rises with N to >= 0.9{at}",
            "IWL takes over as N grows",
            fmt_curve(iwl),
            bool(len(iwl) and iwl.iloc[-1] >= 0.9 and iwl.iloc[-1] > iwl.iloc[0]),
        ),
    ]


def grids(s: dict) -> dict[str, dict[str, list]]:
    return {"transformer": {"data.n_train": s["n_train"], "seed": s["seeds"]}}


def plan(scale: str) -> Plan:
    """The dry run's plan: one sweep over N and seeds."""
    s = settings(scale)
    return Plan(stages=({n: SweepSpec(s["preset"], tuple(s["overrides"]), a) for n, a in grids(s).items()},))


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    torch.set_num_threads(1)
    s = settings(scale)
    grid = grids(s)
    table, curves = transformer_tables(out, s, workers, progress, sweeps=grid)
    title = f"Chan 2024 on Omniglot: accuracy vs training-set size (checkpoint: {s['checkpoint']})"
    return Reproduction(
        name=NAME,
        scale=scale,
        settings=s,
        claims=claims(table, s["checkpoint"]),
        tables={"transformer": table, "transformer_curves": curves},
        figures=[accuracy_figure(table, "acc", title, out / "omniglot_accuracy.png")],
    )
