"""Singh et al. 2023's competition question on the transient runs: circuits and causal tests.

The runs are two transient conditions of the ``singh2023`` reproduction, the same sweeps
(so an output folder shared with it trains nothing twice): ``threshold`` (both-strategies data
at the memorisation threshold, 2 x 8 heads, 40,000 steps) and ``mixed-none`` (Chan's mix,
p_bursty 0.9, 2 x 2 heads, 5,000 steps), seeds 0 and 1. For each run
(:mod:`icl_circuits.papers.singh2023.competition`):

* per-head induction and previous-token scores over training next to ICL and IWL accuracy;
* the ICL and IWL circuits (``discover_run``) at the checkpoints in :data:`CIRCUIT_STEPS` of
  the run's schedule, the heads they share and where the heads the ICL circuit loses go;
* four forks from the ICL peak with interventions during training (``block``: the query's
  direct path into the readout cut; ``freeze``: the ICL circuit's heads frozen; each with a
  control of equal size), trained to :data:`HORIZON` (``threshold``: step 6,316, 1,900-3,900
  steps past the peaks; ``mixed-none``: step 3,571, 2,300 steps past its peak, where the plain
  runs have lost 0.25 or more of their ICL). The ICL circuit's heads are its main heads
  (:func:`~icl_circuits.papers.singh2023.competition.main_heads`: half its edge weight).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from icl_circuits.errors import ConfigError
from icl_circuits.papers.singh2023.competition import (
    EFFECT,
    accuracy_curves,
    accuracy_with_path_cut,
    circuit_heads,
    head_scores_over_training,
    peak_step,
    readout_scores,
    run_causal,
    shared_components,
    verdict,
)
from icl_circuits.papers.singh2023.reproduce import condition_specs, settings
from icl_circuits.reproduce.common import Claim, Reproduction, pick, run_grids
from icl_circuits.reproduce.plan import Plan
from icl_circuits.runs.store import list_checkpoints
from icl_circuits.sweeps import build_points
from probes.circuits_over_training import discover_run
from probes.figures import save

CONDITIONS = ("threshold", "mixed-none")
#: Fork horizon per condition at the cpu scale (None: the run's end).
HORIZON = {"threshold": 6316, "mixed-none": 3571}
#: How many checkpoints (spread over the schedule, the peak and the last always in) get circuits.
CIRCUIT_STEPS = 10


def _run_folder(out: Path, cond: str, point: str) -> Path:
    return out / "sweeps" / cond / "runs" / point


def circuit_steps(all_steps: list[int], peak: int, n: int = CIRCUIT_STEPS) -> list[int]:
    """``n`` checkpoints spread over ``all_steps`` (index-wise), with the peak and the last."""
    late = [s for s in all_steps if s > 0]
    pick_idx = {round(i * (len(late) - 1) / max(1, n - 1)) for i in range(n)}
    return sorted({late[i] for i in pick_idx} | {peak, late[-1]})


def plot(curves: pd.DataFrame, scores: pd.DataFrame, path: Path) -> Path:
    keys = sorted({(c, s) for c, s in zip(curves["condition"], curves["seed"], strict=True)})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, (cond, seed) in zip(axes[0], keys, strict=True):
        c = curves[(curves["condition"] == cond) & (curves["seed"] == seed) & (curves["step"] > 0)]
        ax.plot(c["step"], c["ICL"], "k-", lw=2, label="ICL acc")
        ax.plot(c["step"], c["IWL"], "k--", lw=2, label="IWL acc")
        s = scores[(scores["condition"] == cond) & (scores["seed"] == seed) & (scores["step"] > 0)]
        for (metric, layer, head), g in s.groupby(["metric", "layer", "head_index"]):
            style = "-" if metric == "task_induction" else ":"
            ax.plot(g["step"], g["value"], style, lw=0.8, label=f"{metric} L{layer}H{head}")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{cond} seed {seed}", fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    save(fig, path)
    return path


def claims(verdicts: pd.DataFrame, shared: pd.DataFrame) -> list[Claim]:
    out = []
    for cond, g in verdicts.groupby("condition"):
        for test, what in (
            ("block", "cutting the query's direct path into the readout from the ICL peak"),
            ("freeze", "freezing the ICL circuit's heads at the ICL peak"),
        ):
            eff = g[f"{test}_effect"]
            text = "; ".join(
                f"s{int(r.seed)}: ICL at the end {getattr(r, test):.2f} vs control {getattr(r, test + '_control'):.2f} "
                f"(plain run {r.plain:.2f})"
                for r in g.itertuples()
                if pd.notna(getattr(r, f"{test}_effect"))
            )
            out.append(
                Claim(
                    f"{cond}: {what} keeps more ICL than the equal-size random control (by > {EFFECT})",
                    "Singh 2023: transience may come from competition between ICL and IWL circuits",
                    text or "no control could be drawn",
                    bool(len(eff.dropna())) and bool((eff > EFFECT).all()),
                )
            )
    for cond, g in shared.groupby("condition"):
        last = g[g["step"] == g["step"].max()]
        text = "; ".join(
            f"s{int(r.seed)}: ICL {r.icl_heads or '-'} / IWL {r.iwl_heads or '-'}, shared {r.n_shared}, "
            f"lost by ICL since the peak {r.icl_lost_since_peak or '-'} ({r.lost_taken_by_iwl} taken by IWL)"
            for r in last.itertuples()
        )
        out.append(
            Claim(
                f"{cond}: the circuits at the last checkpoint (measured, not asserted)",
                "competition: the IWL circuit takes the heads ICL loses",
                text,
                None,
            )
        )
    return out


def cut_claims(cut: pd.DataFrame) -> list[Claim]:
    """At each run's last checkpoint: ICL as trained and with the direct path cut at evaluation."""
    out = []
    for cond, g in cut.groupby("condition"):
        last = g[g["step"] == g.groupby("seed")["step"].transform("max")]
        text = "; ".join(
            f"s{int(r.seed)} step {int(r.step)}: ICL {r.ICL:.2f} as trained, {r.ICL_cut:.2f} with the cut"
            for r in last.itertuples()
        )
        out.append(
            Claim(
                f"{cond}: cutting the query's direct path at evaluation only brings ICL back above its faded value "
                f"(by > {EFFECT}) at the last checkpoint: the ICL circuit is outvoted, not gone",
                "independent paths (Nguyen & Reddy) vs competition (Singh 2023)",
                text,
                bool(len(last)) and bool((last["ICL_cut"] - last["ICL"] > EFFECT).all()),
            )
        )
    return out


def _no_conditions(scale: str, missing: list[str], specs: dict) -> str:
    return (
        f"singh2023-competition at {scale} scale: singh2023 has no {', '.join(missing)} condition there "
        f"(it has {', '.join(specs)}); the competition is measured at cpu scale"
    )


def plan(scale: str) -> Plan:
    """The dry run's plan: the transient conditions' sweeps, as ``run`` trains them first."""
    specs = condition_specs(settings(scale))
    if missing := [c for c in CONDITIONS if c not in specs]:
        return Plan(stages=(), notes=(_no_conditions(scale, missing, specs),))
    return Plan(
        stages=({c: specs[c] for c in CONDITIONS},),
        notes=(
            "the forks from each run's ICL peak (direct path blocked, ICL heads frozen, and their random "
            "controls) and the circuits over training run after the sweeps and are not timed",
        ),
    )


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    s = settings(scale)
    specs = condition_specs(s)
    if missing := [c for c in CONDITIONS if c not in specs]:
        raise ConfigError(_no_conditions(scale, missing, specs))
    grids = {c: (specs[c].base, specs[c].overrides, specs[c].grid) for c in CONDITIONS}
    run_grids(out, grids, workers=workers, progress=progress)
    curves, scores, heads, shared, causal, readout, cut = [], [], [], [], [], [], []
    for cond in CONDITIONS:
        for point in build_points(specs[cond]):
            base = _run_folder(out, cond, point.name)
            seed = point.config.seed
            tag = {"condition": cond, "seed": seed}
            peak = peak_step(base)
            steps = circuit_steps(list_checkpoints(base), peak, pick(scale, 3, CIRCUIT_STEPS, CIRCUIT_STEPS))
            curves.append(accuracy_curves(base).assign(**tag))
            scores.append(head_scores_over_training(base, steps, n=pick(scale, 32, 256, 512)).assign(**tag))
            found, edges = discover_run(base, steps=steps)
            h = circuit_heads(found)
            heads.append(h.assign(**tag))
            readout.append(readout_scores(edges).assign(**tag))
            cut.append(accuracy_with_path_cut(base, steps).assign(**tag))
            shared.append(shared_components(h, peak).assign(**tag))
            horizon = HORIZON[cond] if scale != "smoke" else None
            for row in run_causal(base, out / "causal" / cond / point.name, horizon, progress):
                causal.append({**tag, **row})
    curve_t = pd.concat(curves, ignore_index=True)
    score_t = pd.concat(scores, ignore_index=True)
    shared_t = pd.concat(shared, ignore_index=True)
    causal_t = pd.DataFrame(causal)
    verdict_t = verdict(causal_t)
    cut_t = pd.concat(cut, ignore_index=True)
    figures = [plot(curve_t, score_t, out / "competition.png")]
    return Reproduction(
        name="singh2023-competition",
        scale=scale,
        settings={"conditions": {c: list(specs[c].overrides) for c in CONDITIONS}, "horizon": HORIZON},
        claims=[*claims(verdict_t, shared_t), *cut_claims(cut_t)],
        tables={
            "curves": curve_t,
            "head_scores": score_t,
            "circuits": pd.concat(heads, ignore_index=True),
            "shared": shared_t,
            "readout": pd.concat(readout, ignore_index=True),
            "path_cut": cut_t,
            "causal": causal_t,
            "verdict": verdict_t,
        },
        figures=figures,
    )
