"""Singh et al. 2023 (transient ICL): both-strategies data, and the paper's L2 penalty.

Singh et al. 2023 train 12-layer transformers on bursty Omniglot sequences on which **both
strategies solve every training sequence**: the query's class is always in the context, with
the class's fixed label (``aadityasingh/icl-dynamics``' transience runs: 3 copies of the
query's class and 3 of a distractor in 8 pairs, 1600 classes x 20 exemplars, no
relabelling). They report that in-context learning (ICL) emerges, then fades and gives way to
in-weights learning (IWL) while the training loss keeps falling, and that L2 regularisation
can keep ICL. Their L2 is the explicit penalty of icl-dynamics (``train.l2``):
``loss + l2 * sum_p ||p||_2`` over every parameter array, each norm not squared, no 1/2.

``--scale full`` builds the paper's setting on the ``omniglot-bursty`` preset (every
sequence bursty, constant sampler, B = 3; 12 layers; ~1e7 sequences: GPU scale). ``--scale
cpu`` uses the ``demo`` architecture (2 attention-only layers x 2 heads, MLP readout 128-128,
Adam(W) 1e-3, batch 128, 5,000 steps) on Gaussian classes (K = 1024, B = 4 of N = 8, 32
labels), 2 seeds, and:

* ``none``: both-strategies data (``p_bursty = 1``), no regularisation: Singh's claim.
* ``mixed-*``: Chan et al. 2022's mix, 10% non-bursty sequences (``p_bursty = 0.9``), where
  only IWL helps; on it ICL is transient at this scale, so it is where the L2 claim can be
  tested: ``mixed-none``, ``mixed-l2`` (the paper's penalty, ``CPU_L2``) and
  ``mixed-all-decay`` (decoupled AdamW decay 1.5 on every weight matrix: not the paper's
  penalty, what earlier versions reported).
* ``omniglot``: the Omniglot variant on both-strategies data at the largest cpu scale (1623
  characters at 14 x 14, a linear encoder, 2 layers x 8 heads with MLPs, 3,000 steps, 1 seed);
  measured, not asserted.
* ``threshold``: both-strategies data in Singh et al. 2025's layout (the query's class and one
  distractor class, one exemplar each; "Strategy coopetition", ``coopetition_paper_sweep.py``
  in icl-dynamics) at the K where memorisation and ICL race (``THRESHOLD_DATA``), the demo
  model with 8 heads per layer, 40,000 steps: the one both-strategies setting where ICL fades at
  this scale. Asserted: ICL emerges then fades while the loss falls; what replaces it is
  measured (the 2025 paper: context-constrained IWL, not IWL).

  ===============  ============================================  ============================================  ==========================================================
  parameter        Singh et al. 2025                             reference code (icl-dynamics)                 ours (``threshold``)
  ===============  ============================================  ============================================  ==========================================================
  context          query's class + 1 distractor, 1 each          ``train_context_len 2``, ``pt_burstiness 1``  same (``n_pairs 2``, ``burst 1``)
  classes, labels  Omniglot x 8 rotations/flips, own label each  12,800 classes x 20 drawings, no relabelling  144 Gaussian classes, label = k mod 32
  exemplars        ResNet18 (ImageNet) features                  512-d, a fixed 20 per class                   D 8, fresh noise eps 0.5 per exemplar
  model            2 attention-only layers x 8 heads, d 64       APE, no MLPs                                  the same layers, learned positions, an MLP readout 128-128
  optimiser        Adam 1e-5, batch 32                           2e7-6.4e7 sequences                           Adam 1e-3, batch 128, 40,000 steps (5.1e6 sequences)
  ===============  ============================================  ============================================  ==========================================================

Copying one of the two context labels at random gives 0.5 on ``IC``, so a real ICL peak is
``REAL_ICL`` (0.8). The authors' code run at the same cpu settings (``reference_code.csv``,
``scripts/reference_singh2023.py``) is compared in :mod:`icl_circuits.papers.singh2023.reference`,
where its run is as long as ours. What the pilots behind these choices measured is in docs/reproductions/singh2023_appendix.md.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.papers.singh2023.claims import (  # noqa: F401 (re-exported for the tests)
    IWL_TAKEOVER,
    PERSIST_TOL,
    REAL_ICL,
    claims,
)
from icl_circuits.papers.singh2023.reference import reference_claims
from icl_circuits.reproduce.common import Reproduction, pick, run_grid
from icl_circuits.reproduce.plan import Plan
from icl_circuits.sweeps import SweepSpec, build_points
from probes.competition import detect_transition
from probes.figures import save

CPU_DECAY = ["train.optimizer=adamw", "train.weight_decay=1.5"]
#: The paper's penalty (``train.l2``: ``l2 * sum_p ||p||_2`` over every parameter, as in
#: ``aadityasingh/icl-dynamics``), with the coefficient of our pilots (the paper's is not published).
CPU_L2 = 1e-3
#: Classes and burst of the cpu scale (Gaussian classes, every sequence bursty).
CPU_K, CPU_B = 1024, 4
#: The Omniglot variant at the cpu scale: the full-scale data (1623 characters, 3 copies of
#: the query's class and 3 of a distractor in 8 pairs, every sequence bursty), 14 x 14
#: images, a linear encoder and a 2-layer model (with MLPs) instead of 12 layers and a CNN.
OMNIGLOT_CPU = [
    "data.image_size=14",
    "model.encoder=linear",
    "model.n_layers=2",
    "model.n_heads=8",
    "train.schedule=constant",
    "train.warmup_steps=0",
    "train.lr=1e-3",
]
OMNIGLOT_STEPS = 3000
#: Both-strategies data at the memorisation threshold (Singh et al. 2025's layout: the query's
#: class and one distractor class, one exemplar each), where ICL emerges first and then fades at
#: the cpu scale: Gaussian classes K = 144 (the threshold: 128 memorises first, 192 keeps ICL),
#: L = 32, D = 8 (so matching two noisy exemplars errs, ICL's ceiling is ~0.97), eps = 0.5.
THRESHOLD_DATA = [
    "data.n_pairs=2",
    "data.burst=1",
    "data.n_classes=144",
    "data.n_labels=32",
    "data.d=8",
    "data.noise=0.5",
]
THRESHOLD_STEPS = 40_000
#: name -> (description, expected outcome, overrides[, {"preset": ..., "common": ...}]) per scale.
MIXED = {"common": "mixed"}
CONDITIONS = {
    "cpu": {
        "none": ("both-strategies data, no regularisation (Singh 2023)", "transient", []),
        "mixed-none": ("Chan's mix (p_B 0.9), no regularisation", "transient", [], MIXED),
        "mixed-l2": (
            f"Chan's mix, the paper's L2 penalty {CPU_L2:g} * sum ||p||_2 on every parameter (icl-dynamics)",
            "persists",
            [f"train.l2={CPU_L2:g}", "train.decay_on=all"],
            MIXED,
        ),
        "mixed-all-decay": (
            "Chan's mix, decoupled weight decay 1.5 on every weight matrix (not the paper's penalty)",
            "persists",
            [*CPU_DECAY, "train.decay_on=matrices"],
            MIXED,
        ),
        "threshold": (
            "both-strategies data at the memorisation threshold (query class + 1 distractor, "
            "K 144, L 32, D 8, eps 0.5; 40,000 steps), no regularisation",
            "fades",
            [],
            {"common": "threshold"},
        ),
        "omniglot": (
            "Omniglot characters, both-strategies data, no regularisation (measured, not asserted)",
            "measured",
            [],
            {"preset": "omniglot-bursty", "common": "omniglot"},
        ),
    },
    "full": {
        "none": ("both-strategies data, no regularisation (Singh 2023)", "transient", []),
        # The penalty is the paper's (icl-dynamics), the coefficient ours: not published.
        "l2": ("L2 penalty 1e-4 * sum ||p||_2 on every parameter", "persists", ["train.l2=1e-4", "train.decay_on=all"]),
    },
}
BOTH = ["data.p_bursty=1.0"]  # every sequence bursty: the query's class is always in the context


def settings(scale: str) -> dict:
    tiny = ["data.n_classes=64", "data.d=8", "data.n_labels=8", "model.d_model=16", "model.readout_hidden=[16]"]
    run = [
        f"train.n_checkpoints={pick(scale, 5, 30, 200)}",
        f"train.eval_size={pick(scale, 32, 512, 2048)}",
        f"train.device={pick(scale, 'cpu', 'cpu', 'auto')}",
    ]
    omniglot = [
        *BOTH,
        "data.sampler=constant",
        "data.burst=3",
        *pick(scale, [*OMNIGLOT_CPU, "data.image_size=5", "model.d_model=16"], OMNIGLOT_CPU, []),
        f"train.steps={pick(scale, 20, OMNIGLOT_STEPS, 500_000)}",
        f"train.batch_size={pick(scale, 8, 64, 32)}",
        *run,
    ]
    return {
        "preset": pick(scale, "demo", "demo", "omniglot-bursty"),
        "conditions": CONDITIONS["full" if scale == "full" else "cpu"],
        "seeds": pick(scale, [0], [0, 1], [0, 1, 2]),
        "common": [
            *BOTH,
            *pick(
                scale,
                [*tiny, "data.burst=4"],
                [f"data.n_classes={CPU_K}", f"data.burst={CPU_B}"],
                ["data.sampler=constant", "data.burst=3"],
            ),
            f"train.steps={pick(scale, 30, 5000, 500_000)}",
            f"train.batch_size={pick(scale, 16, 128, 32)}",
            *run,
        ],
        "omniglot": omniglot,
        # Singh et al. 2025's layout at the threshold K; the demo model with 8 heads per layer.
        "threshold": [
            *BOTH,
            *pick(scale, [*THRESHOLD_DATA, "model.d_model=16", "model.readout_hidden=[16]"], THRESHOLD_DATA, []),
            "model.n_heads=8",
            f"train.steps={pick(scale, 30, THRESHOLD_STEPS, 500_000)}",
            f"train.batch_size={pick(scale, 16, 128, 32)}",
            *run,
            # 40 checkpoints (the pilot's): the peak near step 2,500 is broad but barely above 0.8.
            f"train.n_checkpoints={pick(scale, 5, 40, 200)}",
        ],
        # Chan's and Singh's DM-code mix: 10% non-bursty sequences, where only IWL helps.
        "mixed": [
            "data.p_bursty=0.9",
            *pick(scale, [*tiny, "data.burst=4"], [f"data.n_classes={CPU_K}", f"data.burst={CPU_B}"], []),
            f"train.steps={pick(scale, 30, 5000, 500_000)}",
            f"train.batch_size={pick(scale, 16, 128, 32)}",
            *run,
        ],
        "omniglot_seeds": pick(scale, [0], [0], [0, 1, 2]),
    }


def condition_specs(s: dict) -> dict[str, SweepSpec]:
    """One sweep (over seeds) per condition."""
    out = {}
    for name, (_, _, over, *extra) in s["conditions"].items():
        where = extra[0] if extra else {}
        common = s[where.get("common", "common")]
        seeds = s["omniglot_seeds"] if where.get("common") == "omniglot" else s["seeds"]
        spec = SweepSpec(base=where.get("preset", s["preset"]), overrides=(*common, *over), grid={"seed": list(seeds)})
        out[name] = spec
    return out


def plan(scale: str) -> Plan:
    """The dry run's plan: one sweep per condition, one after another."""
    return Plan(stages=tuple({name: spec} for name, spec in condition_specs(settings(scale)).items()))


def build_configs(scale: str) -> dict[str, list[RunConfig]]:
    """Every run's config at ``scale``, built and validated without training (for ``full``)."""
    return {name: [p.config for p in build_points(spec)] for name, spec in condition_specs(settings(scale)).items()}


def both_strategies(cfg: RunConfig, n: int = 2048) -> float:
    """Fraction of training sequences whose query class is in the context with the query's label.

    On such a sequence both strategies are right: copying the label of the matching context
    item (ICL) and recalling the class's fixed label (IWL). Measured on the first training
    batches of ``cfg``'s data stream.
    """
    batch = build_source(cfg.data, cfg.seed, "cpu").train_batch(0, n)
    same_class = batch.classes[:, :-1] == batch.classes[:, -1:]
    same_label = batch.context_labels == batch.target[:, None]
    return float((same_class & same_label).any(dim=1).float().mean())


def split_names(cfg: RunConfig) -> tuple[str, str]:
    """(ICL split, IWL split) of the config's data family."""
    source = cfg.data.source_class()
    return source.icl_split, source.iwl_split


# --------------------------------------------------------------------------- measurements
def curves(results: pd.DataFrame, condition: str, icl: str, iwl: str) -> pd.DataFrame:
    """Tidy ``condition, seed, step, split, metric, value``: ICL/IWL accuracy and train loss."""
    m = results[results["kind"] == "metrics"]
    keep = ((m["metric"] == "acc") & m["split"].isin([icl, iwl])) | ((m["split"] == "train") & (m["metric"] == "loss"))
    out = m.loc[keep, ["seed", "step", "split", "metric", "value"]].copy()
    out.insert(0, "condition", condition)
    out["split"] = out["split"].map({icl: "ICL", iwl: "IWL", "train": "train"})
    return out.sort_values(["seed", "split", "step"]).reset_index(drop=True)


def series(curve: pd.DataFrame, seed: int, split: str) -> pd.Series:
    g = curve[(curve["seed"] == seed) & (curve["split"] == split)]
    return g.set_index("step")["value"].sort_index()


def _first_at(curve: pd.Series, level: float) -> int | None:
    hit = curve[curve >= level]
    return int(hit.index[0]) if len(hit) else None


def transitions(curve: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, seed): :func:`detect_transition` of ICL with the train loss."""
    rows = []
    for (cond, seed), g in curve.groupby(["condition", "seed"]):
        icl, iwl, loss = series(g, seed, "ICL"), series(g, seed, "IWL"), series(g, seed, "train")
        t = detect_transition(icl, loss, name=f"{cond}/{seed}")
        rows.append(
            {
                "condition": cond,
                "seed": int(seed),
                "emerged": t.emerged,
                "emergence_step": t.emergence_step,
                # The steepest-rise step can land on the early two-label copying rise (~0.5);
                # this is when real matching is reached.
                "real_icl_step": _first_at(icl, REAL_ICL),
                "peak": t.peak,
                "peak_step": t.peak_step,
                "final": t.final,
                "transient": t.transient,
                "drop": t.drop,
                "iwl_final": float(iwl.iloc[-1]),
                "loss_at_peak": float(loss.loc[: t.peak_step].iloc[-1]),
                "loss_final": float(loss.iloc[-1]),
            }
        )
    out = pd.DataFrame(rows)
    for col in ("emergence_step", "real_icl_step"):
        out[col] = out[col].astype("Int64")
    return out


# --------------------------------------------------------------------------- figure
def plot(curve: pd.DataFrame, trans: pd.DataFrame, conditions: dict, path: Path) -> Path:
    names = list(conditions)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), sharey=True, squeeze=False)
    for ax, cond in zip(axes[0], names, strict=True):
        g = curve[(curve["condition"] == cond) & (curve["step"] > 0)]
        twin = ax.twinx()
        for i, seed in enumerate(sorted(g["seed"].unique())):
            style = ["-", "--", ":"][i % 3]
            ic, iw, loss = (series(g, seed, s) for s in ("ICL", "IWL", "train"))
            ax.plot(ic.index, ic.values, style, color="tab:blue", label=f"ICL s{seed}")
            ax.plot(iw.index, iw.values, style, color="tab:orange", label=f"IWL s{seed}")
            twin.plot(loss.index, loss.values, style, color="0.5", lw=0.8)
            row = trans[(trans["condition"] == cond) & (trans["seed"] == seed)]
            if len(row) and row["peak_step"].iloc[0] > 0:
                ax.plot(row["peak_step"].iloc[0], row["peak"].iloc[0], "*", color="k", ms=10)
        twin.set_yscale("log")
        twin.set_ylabel("train loss (grey)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("step")
        ax.set_title("\n".join(textwrap.wrap(conditions[cond][0], 45)), fontsize=8)
    axes[0][0].set_ylabel("accuracy (* = detected ICL peak)")
    axes[0][0].legend(fontsize=7, loc="center left")
    fig.tight_layout()
    save(fig, path)
    return path


# --------------------------------------------------------------------------- run
def outcomes(
    results: dict[str, pd.DataFrame], specs: dict[str, SweepSpec]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """``(curves, transitions, both)`` of each condition's trained sweep: ``both`` is the share of
    training sequences both strategies solve (:func:`both_strategies`), for every condition but
    Chan's mix (``mixed*``), which is not both-strategies data by design."""
    parts, both = [], {}
    for name, spec in specs.items():
        first = build_points(spec)[0].config
        if not name.startswith("mixed"):
            both[f"{name} ({first.data.family})"] = both_strategies(first)
        parts.append(curves(results[name], name, *split_names(first)))
    curve = pd.concat(parts, ignore_index=True)
    return curve, transitions(curve), both


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    s = settings(scale)
    specs = condition_specs(s)
    results = {
        name: run_grid(out, name, spec.base, spec.overrides, spec.grid, workers=workers, progress=progress)
        for name, spec in specs.items()
    }
    curve, trans, both = outcomes(results, specs)
    steps = {name: build_points(spec)[0].config.train.steps for name, spec in specs.items()}
    figures = [plot(curve, trans, s["conditions"], out / "transience.png")]
    settings_out = {
        "preset": s["preset"],
        "common": s["common"],
        "seeds": s["seeds"],
        "conditions": {
            k: {"description": d, "expected": e, "overrides": o} for k, (d, e, o, *_) in s["conditions"].items()
        },
        "omniglot": s["omniglot"],
    }
    if scale == "smoke":
        # The GPU-scale configs are built (not trained) so a bad key shows up in the tests.
        settings_out["full_runs_built"] = sum(len(v) for v in build_configs("full").values())
    return Reproduction(
        name="singh2023",
        scale=scale,
        settings=settings_out,
        # The authors' code at the same settings (reference_code.csv), where it ran as long as ours.
        claims=claims(trans, s["conditions"], both) + reference_claims(trans, steps),
        tables={"curves": curve, "transitions": trans},
        figures=figures,
    )


__all__ = ["build_configs", "claims", "curves", "run", "settings", "transitions"]
