"""Chan, Chen, György & Schuurmans 2024 (ICLR 2025): ICL vs IWL against the training-set size.

Two halves, on the same stylized data (:mod:`icl_circuits.data.stylized`: 5 frequent + 5
rare classes, p_high = 0.9, sigma = 0.2, one context pair):

* **Transformer sweep.** Preset ``chan2024-stylized`` trained on finite training sets of
  N = 2^6 .. 2^16 sequences (2^20 at full scale) for p_relevant in {0, 0.9, 1}. We read the
  accuracy on the 18 evaluation splits at one checkpoint per run (below). The paper's "OOBD accuracy" is
  the reference's ``default`` context (the training p_relevant) with shifted labels, i.e.
  our ``OOBD``, ``OOBD-high`` and ``OOBD-low``; ``OOBD-rel-*`` (context always relevant)
  and ``IBD-irr-*`` (never relevant) are reported alongside.
* **Gating model** (:mod:`icl_circuits.papers.chan2024.gating`) trained with the paper's Algorithm 1
  on the same finite training set (the same ``train_batch`` stream) with horizon N: one
  pass, ceil(N / batch) rounds, so that every round's loss is measured on a sequence the
  predictors have (almost always) not yet trained on, as in the paper's online analysis.
  The gate's mean alpha (share of the in-weight predictor) on high- and low-frequency
  queries is set next to the transformer's OOBD-low accuracy. The gate is logistic in the
  query (``hidden_alpha=()``): in pilots the reference's 64-64 MLP gate learned a nearly
  query-independent alpha within one pass.

Model settings follow ``chanb/simple_icl`` (see the ``chan2024-stylized`` preset's table):
lecun-normal weights, a Dense label embedding with bias, shared exemplar/label positions and
the reference's irrelevant-context law. Which of these carries rare-class ICL is measured
by the ``chan2024-ablation`` reproduction.

Each run is read at one checkpoint, chosen by ``settings["checkpoint"]`` (``min_train_loss``:
the lowest training loss, as the reference's plots do; every claim names the rule).

The authors' own code, run at the cpu grid's settings (:mod:`icl_circuits.papers.chan2024.reference`,
``scripts/reference_chan2024.py``), is the yardstick for the transformer's IBD accuracy.

Scales: ``cpu`` trains N = 2^6 .. 2^16 (6 values) at p_relevant 0.9 with 3 seeds, p_relevant
0 and 1 at N = 2^6, 2^10, 2^12, 2^16 with one seed, and the noise sweep sigma in {0, 0.4}
at N = 2^10 and 2^16 with 2 seeds (sigma 0.2 is the main grid): 34 runs of 10,000 steps at
the paper's lr (rare-class ICL at N = 2^10 is still rising at 5,000); ``full`` is the
paper's N = 2^6, 2^8, ..., 2^20 (8 values; the sweep configs of ``chanb/simple_icl`` list the
same) x 5 seeds x 50k steps for every grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icl_circuits.config import apply_overrides
from icl_circuits.data import build_source
from icl_circuits.papers.chan2024.claims import (  # noqa: F401 (re-exported for the variants and tests)
    MAIN_P,
    SIGMA,
    by_n,
    fmt_curve,
    gating_claims,
    ibd_theory_claim,
    parallel_claim,
    spearman,
    together_claim,
    transformer_claims,
    trend,
)
from icl_circuits.papers.chan2024.gating import GatingConfig, train_gating
from icl_circuits.papers.chan2024.reference import reference_claims
from icl_circuits.presets import get_preset
from icl_circuits.reproduce.common import SWEEPS, Reproduction, final, pick, rescore, run_grids
from icl_circuits.reproduce.plan import Plan, Task, linear_seconds
from icl_circuits.sweeps.spec import SweepSpec

NAME = "chan2024"
PRESET = "chan2024-stylized"
P_RELEVANT = [0.0, 0.9, 1.0]
#: Plumbing only: a narrow model trained for a few steps.
_SMOKE = [
    "train.steps=10",
    "train.n_checkpoints=2",
    "train.eval_size=32",
    "data.d=16",
    "model.d_model=16",
    "train.device=cpu",
]


def settings(scale: str) -> dict:
    """What is trained at ``scale`` (the transformer grids and the gating model)."""
    # Full: the reference code's N values (chanb/simple_icl, cc_utils/configs.py: 2^6, 2^8, ..., 2^20).
    log2_n = pick(scale, [6, 8], list(range(6, 17, 2)), list(range(6, 21, 2)))
    n_train = [2**k for k in log2_n]
    return {
        "preset": PRESET,
        "n_train": n_train,
        "p_relevant": pick(scale, [MAIN_P], P_RELEVANT, P_RELEVANT),
        "seeds": pick(scale, [0], [0, 1, 2], [0, 1, 2, 3, 4]),
        # p_relevant 0 and 1, and the noise sweep, at fewer N and seeds on the cpu scale.
        "other_p_n_train": pick(scale, n_train, [2**6, 2**10, 2**12, 2**16], n_train),
        "other_p_seeds": pick(scale, [0], [0], [0, 1, 2, 3, 4]),
        "sigma": pick(scale, [0.4], [0.0, 0.4], [0.0, 0.4]),
        "sigma_n_train": pick(scale, n_train[-1:], [2**10, 2**16], n_train),
        "sigma_seeds": pick(scale, [0], [0, 1], [0, 1, 2, 3, 4]),
        "checkpoint": "min_train_loss",
        "overrides": pick(
            scale,
            _SMOKE,
            ["train.steps=10000", "train.n_checkpoints=10", "train.eval_size=512", "train.device=cpu"],
            ["train.steps=50000", "train.n_checkpoints=50", "train.eval_size=256"],
        ),
        # The chosen checkpoint re-evaluated on this many sequences per split (None: as trained).
        # At full scale the curves use 256 and the read-out the paper's 3,000: evaluating 3,000
        # at all 51 checkpoints of 40 runs would cost as much as the training.
        "final_eval_size": pick(scale, None, None, 3000),
        "gating": GatingConfig(
            hidden_alpha=(),
            lr_w=0.5,
            lr_alpha=0.5,
            eval_size=pick(scale, 64, 1024, 3000),
            n_records=pick(scale, 3, 12, 20),
        ).to_dict(),
        "gating_passes": 1,
        "gating_seeds": pick(scale, [0], [0, 1, 2], [0, 1, 2, 3, 4]),
    }


def train_steps(s: dict) -> int:
    """The transformer's training steps at these settings (from their ``train.steps`` override)."""
    return int(next(o for o in s["overrides"] if o.startswith("train.steps=")).partition("=")[2])


# --------------------------------------------------------------------------- training
def grids(s: dict) -> dict[str, dict[str, list]]:
    """The transformer sweeps: name -> axes (the main p_relevant, the other values, the noise sweep)."""
    others = [p for p in s["p_relevant"] if p != MAIN_P]
    out = {"transformer": {"data.n_train": s["n_train"], "data.p_relevant": [MAIN_P], "seed": s["seeds"]}}
    if others:
        out["transformer-p"] = {
            "data.n_train": s["other_p_n_train"],
            "data.p_relevant": others,
            "seed": s["other_p_seeds"],
        }
    if s["sigma"]:
        out["noise"] = {"data.n_train": s["sigma_n_train"], "data.noise": s["sigma"], "seed": s["sigma_seeds"]}
    return out


_RENAME = {"data.n_train": "N", "data.p_relevant": "p_relevant", "data.noise": "sigma", "model.positions": "positions"}


def transformer_tables(
    out: Path,
    s: dict,
    workers: int | None,
    progress: bool,
    sweeps: dict[str, dict[str, list]] | None = None,
    extra: dict[str, dict[str, object]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the sweeps (default :func:`grids`); the chosen checkpoint's table and every checkpoint's accuracy.

    Both tidy tables have columns ``N, p_relevant, sigma, seed`` (plus the columns of
    ``extra[sweep]``, constant per sweep); the first also ``step`` (the checkpoint the rule
    ``s["checkpoint"]`` chose). ``s["preset"]`` and ``s["overrides"]`` give each run's base.
    """
    preset = s.get("preset", PRESET)
    base = apply_overrides(get_preset(preset), list(s["overrides"])).data
    tables, curves = [], []
    sweeps = grids(s) if sweeps is None else sweeps
    # The grids in one pool of jobs: runs sharing the model vectorise across grids.
    trained = run_grids(out, {n: (preset, s["overrides"], a) for n, a in sweeps.items()}, workers, progress)
    for name, axes in sweeps.items():
        res = trained[name].rename(columns=_RENAME)
        defaults = {"N": base.n_train, "p_relevant": base.p_relevant, "sigma": base.noise, "seed": axes["seed"][0]}
        for col, default in defaults.items():
            if col not in res.columns:
                res[col] = default
        for col, value in (extra or {}).get(name, {}).items():
            res[col] = value
        axis_cols = [_RENAME.get(k, k) for k in axes]
        keys = list(dict.fromkeys(["N", "p_relevant", "sigma", "seed", *axis_cols, *(extra or {}).get(name, {})]))
        chosen = [final(res, m, s["checkpoint"]) for m in ("acc", "loss")]
        if s.get("final_eval_size"):
            chosen = [rescore(c, out / SWEEPS / name, s["final_eval_size"]) for c in chosen]
        tables.append(pd.concat(chosen)[[*keys, "step", "split", "metric", "value"]])
        rows = res[(res["kind"] == "metrics") & (res["metric"].isin(["acc", "loss"]))]
        curves.append(rows[[*keys, "step", "split", "metric", "value"]])
    table = pd.concat(tables).reset_index(drop=True)
    return table, pd.concat(curves).reset_index(drop=True)


def gating_tables(s: dict, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Algorithm 1 on each (N, p_relevant, seed) training set: final evaluation and curves."""
    # The transformer's data config (overrides included), so both models see the same training sets.
    base = apply_overrides(get_preset(PRESET), list(s["overrides"])).data
    cfg0 = GatingConfig.from_dict(s["gating"])
    finals, curves = [], []
    points = gating_points(s)
    for n, p, seed in tqdm(points, disable=not progress, desc="gating"):
        source = build_source(base.replace(n_train=n, p_relevant=p), seed, cfg0.device)
        cfg = cfg0.replace(steps=max(1, math.ceil(s["gating_passes"] * n / cfg0.batch_size)))
        _, curve, ev = train_gating(source, cfg, seed=seed)
        keys = {"N": n, "p_relevant": p, "seed": seed}
        finals.append(ev.assign(**keys))
        curves.append(curve.assign(**keys))
    cols = ["N", "p_relevant", "seed", "split", "metric", "value"]
    return pd.concat(finals)[cols].reset_index(drop=True), pd.concat(curves)[["step", *cols]].reset_index(drop=True)


def gating_points(s: dict) -> list[tuple[int, float, int]]:
    """The gating model's training sets: (N, p_relevant, seed)."""
    return [(n, p, seed) for n in s["n_train"] for p in s["p_relevant"] for seed in s["gating_seeds"]]


def plan(scale: str) -> Plan:
    """The dry run's plan: the three transformer grids in one pool of jobs, then the gating model."""
    s = settings(scale)
    stage = {n: SweepSpec(PRESET, tuple(s["overrides"]), a) for n, a in grids(s).items()}
    cfg0 = GatingConfig.from_dict(s["gating"])
    base = apply_overrides(get_preset(PRESET), list(s["overrides"])).data
    points = gating_points(s)
    steps = [max(1, math.ceil(s["gating_passes"] * n / cfg0.batch_size)) for n, _, _ in points]

    def gate(k: int) -> None:
        n, p, seed = points[-1]
        train_gating(build_source(base.replace(n_train=n, p_relevant=p), seed, cfg0.device), cfg0.replace(steps=k))

    name = f"gating model (Algorithm 1), {len(points)} training sets, {sum(steps):,} rounds in all"
    return Plan(stages=(stage,), tasks=(Task(name, lambda: linear_seconds(gate, steps)),))


# --------------------------------------------------------------------------- entry point
def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    """Train the transformer grids and the gating model at ``scale``; measure and plot."""
    from icl_circuits.papers.chan2024 import figures as figs

    torch.set_num_threads(1)
    s = settings(scale)
    rule = s["checkpoint"]
    t_table, t_curves = transformer_tables(out, s, workers, progress)
    g_table, g_curves = gating_tables(s, progress)
    main = t_table[np.isclose(t_table["sigma"], SIGMA)]
    figures = [
        figs.accuracy_figure(
            main,
            "acc",
            f"Transformer: accuracy vs training-set size (checkpoint: {rule})",
            out / "transformer_accuracy.png",
        ),
        figs.accuracy_figure(
            g_table, "acc_f", "Gating model f: accuracy vs training-set size", out / "gating_accuracy.png"
        ),
        figs.side_by_side_figure(main, g_table, out / "side_by_side.png"),
        figs.noise_figure(t_table, MAIN_P, out / "noise.png"),
    ]
    return Reproduction(
        name=NAME,
        scale=scale,
        settings=s,
        claims=transformer_claims(t_table, rule)
        + gating_claims(g_table)
        + together_claim(t_table, g_table, rule)
        + parallel_claim(t_table, g_table, rule)
        + ibd_theory_claim(t_table, g_table, rule)
        + reference_claims(t_table, rule, train_steps(s)),
        tables={
            "transformer": t_table,
            "transformer_curves": t_curves,
            "gating": g_table,
            "gating_curves": g_curves,
        },
        figures=figures,
    )
