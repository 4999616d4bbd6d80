"""Reddy 2023 (ICLR 2024): the (K, B) phase diagram and the abrupt induction head.

Gaussian-mixture classes (K classes, L = 32 labels, D = 63, N = 8 context pairs; bursty
contexts hold N / B classes B times each). Two measurements:

1. **Phase diagram.** After a fixed training budget, in-context accuracy (``IC``: novel
   classes) and in-weight accuracy (``IW``: trained classes absent from the context) over
   task diversity K and burstiness B. Reddy: ICL needs burstiness and many classes, IWL wins
   with few classes.
2. **Induction head.** One run at K = 1024, B = 4 with dense checkpoints, analysed with the
   probes: the claim is that the layer-2 task-induction score (attention from the query to the
   labels of its class) jumps abruptly (:data:`~icl_circuits.reproduce.common.ABRUPT_SPAN`)
   together with the IC accuracy. The probes' emergence steps
   (:func:`probes.competition.detect_transition`) are compared; the layer-1 previous-token
   score's are reported beside them, not judged.

Reduced scale (``cpu``): the ``demo`` model (2 layers x 2 heads attention-only with an MLP
readout, Adam 1e-3, eps = 0.1), which learns in thousands rather than 1e5 SGD steps. Full
scale: the ``reddy2023`` preset (1 head per layer, no LayerNorm, SGD 0.01, eps = 0.75).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from icl_circuits.reproduce.common import ABRUPT_SPAN, SWEEPS, Claim, Reproduction, abrupt, final, pick, run_grid
from icl_circuits.reproduce.plan import Plan
from icl_circuits.sweeps.phase import phase_diagram
from icl_circuits.sweeps.spec import SweepSpec
from probes.competition import detect_transition
from probes.figures import save


def settings(scale: str) -> dict:
    return {
        "preset": pick(scale, "demo", "demo", "reddy2023"),
        "K": pick(scale, [16, 256], [32, 128, 512, 2048, 8192], [2**i for i in range(5, 15)]),
        "B": pick(scale, [0, 4], [0, 1, 2, 4], [0, 1, 2, 4, 8]),
        "seeds": pick(scale, [0], [0], [0, 1, 2]),
        "steps": pick(scale, 30, 1500, 150_000),
        "induction_steps": pick(scale, 40, 2000, 150_000),
        "induction_checkpoints": pick(scale, 6, 40, 100),
        "eval_size": pick(scale, 64, 512, 2048),
        "probe_eval_size": pick(scale, 64, 512, 1024),
        # The smoke scale only checks the plumbing: a model small enough to train in a second.
        "extra": pick(scale, ["model.d_model=16", "train.batch_size=16", "data.d=8"], [], []),
    }


def specs(s: dict) -> dict[str, SweepSpec]:
    """The two sweeps: the (K, B) phase grid and the induction run (probed at every checkpoint)."""
    fixed = [f"train.steps={s['steps']}", "train.n_checkpoints=8", f"train.eval_size={s['eval_size']}", *s["extra"]]
    grid = {"data.n_classes": s["K"], "data.burst": s["B"], "seed": s["seeds"]}
    induction = [
        f"train.steps={s['induction_steps']}",
        f"train.n_checkpoints={s['induction_checkpoints']}",
        f"train.eval_size={s['eval_size']}",
        *s["extra"],
    ]
    return {
        "phase": SweepSpec(s["preset"], tuple(fixed), grid),
        "induction": SweepSpec(s["preset"], tuple(induction), {"data.n_classes": [1024], "data.burst": [4]}),
    }


def plan(scale: str) -> Plan:
    """The dry run's plan: the phase grid, then the induction run."""
    s = settings(scale)
    sp = specs(s)
    note = f"not timed: the probes of the induction run at its {s['induction_checkpoints']} checkpoints"
    return Plan(stages=({"phase": sp["phase"]}, {"induction": sp["induction"]}), notes=(note,))


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    s = settings(scale)
    sp = specs(s)
    phase_spec = sp["phase"]
    results = run_grid(out, "phase", phase_spec.base, phase_spec.overrides, phase_spec.grid, workers, progress)
    last = final(results)
    phase = last[last["split"].isin(["IC", "IW"])][["data.n_classes", "data.burst", "seed", "split", "value"]]

    ind = sp["induction"]
    run_grid(out, "induction", ind.base, ind.overrides, ind.grid, workers, progress, probes=True)
    from icl_circuits.sweeps import read_results

    probes = read_results(out / SWEEPS / "induction")
    curves = induction_curves(probes[probes["kind"] == "probes"])
    transitions = pd.DataFrame(
        [
            dict(curve=name, **vars(detect_transition(c.set_index("step")["value"], name=name)))
            for name, c in curves.groupby("curve")
        ]
    )

    figures = [_phase_figure(out, results), _induction_figure(out, curves, transitions)]
    rep = Reproduction(
        "reddy2023",
        scale,
        s,
        tables={"phase": phase, "induction_curves": curves, "induction_transitions": transitions},
        figures=figures,
    )
    rep.claims = _claims(phase, transitions)
    return rep


def induction_curves(probes: pd.DataFrame) -> pd.DataFrame:
    """Tidy ``curve, step, value``: IC accuracy and the best head's scores in each layer.

    The best head is the one with the highest final score, followed over training (a max
    over heads at every step would mix heads).
    """
    ic = probes[(probes["split"] == "IC") & (probes["metric"] == "acc") & probes["layer"].isna()]
    out = [ic.assign(curve="IC accuracy")[["curve", "step", "value"]]]
    for metric, layer, label in (
        ("task_induction", 1, "layer-2 induction score"),
        ("prev_token", 0, "layer-1 previous-token score"),
    ):
        rows = probes[(probes["metric"] == metric) & (probes["layer"] == layer)]
        last = rows[rows["step"] == rows["step"].max()]
        head = int(last.loc[last["value"].idxmax(), "head_index"])
        best = rows[rows["head_index"] == head]
        out.append(best.assign(curve=f"{label} (head {layer}.{head})")[["curve", "step", "value"]])
    return pd.concat(out, ignore_index=True).sort_values(["curve", "step"]).reset_index(drop=True)


def _claims(phase: pd.DataFrame, transitions: pd.DataFrame) -> list[Claim]:
    mean = phase.groupby(["data.n_classes", "data.burst", "split"])["value"].mean()
    ks, bs = sorted(phase["data.n_classes"].unique()), sorted(phase["data.burst"].unique())
    kmin, kmax, bmax = ks[0], ks[-1], bs[-1]
    ic = {b: [mean[(k, b, "IC")] for k in ks] for b in bs}
    iw = {b: [mean[(k, b, "IW")] for k in ks] for b in bs}
    claims = [
        Claim(
            f"ICL at large K with bursty contexts (K={kmax}, B={bmax}: IC >= 0.9) [checkpoint: last]",
            "IC high",
            f"IC {ic[bmax][-1]:.2f}, IW {iw[bmax][-1]:.2f}",
            bool(ic[bmax][-1] >= 0.9),
        ),
        Claim(
            f"IWL at small K (K={kmin}, B={bmax}: IW >= 0.9, IC < 0.5) [checkpoint: last]",
            "IW high, IC low",
            f"IW {iw[bmax][0]:.2f}, IC {ic[bmax][0]:.2f}",
            bool(iw[bmax][0] >= 0.9 and ic[bmax][0] < 0.5),
        ),
        Claim(
            f"IC rises with K (B={bmax}: by >= 0.5 from the smallest to the largest K) [checkpoint: last]",
            "ICL appears above a K threshold",
            " -> ".join(f"{v:.2f}" for v in ic[bmax]) + f" over K = {', '.join(map(str, ks))}",
            bool(ic[bmax][-1] - ic[bmax][0] >= 0.5),
        ),
        Claim(
            "no ICL without bursty contexts (B = 0: IC < 0.2 at every K) [checkpoint: last]",
            "IC at chance",
            f"max IC over K at B=0: {max(ic[bs[0]]):.2f}",
            bool(bs[0] == 0 and max(ic[0]) < 0.2),
        ),
    ]
    by = transitions.set_index("curve")
    step_ic = by.loc["IC accuracy", "emergence_step"]
    head = next(c for c in by.index if c.startswith("layer-2 induction"))
    step_head = by.loc[head, "emergence_step"]
    prev = next(c for c in by.index if c.startswith("layer-1 previous-token"))
    step_prev = by.loc[prev, "emergence_step"]
    aligned = bool(
        by.loc[head, "emerged"]
        and by.loc["IC accuracy", "emerged"]
        and max(step_ic, step_head) <= 1.5 * min(step_ic, step_head)
    )
    sharp = {c: abrupt(by.loc[c, "onset_step"], by.loc[c, "completion_step"]) for c in ("IC accuracy", head)}

    def span(c: str) -> str:
        return f"{_step(by.loc[c, 'onset_step'])} -> {_step(by.loc[c, 'completion_step'])}"

    claims.append(
        Claim(
            "the induction head forms abruptly, at the jump in IC accuracy (the layer-2 induction score and IC "
            f"accuracy each rise 10% -> 90% within a factor {ABRUPT_SPAN:g} of steps, and emerge within a factor "
            "1.5 of each other) [every checkpoint]",
            "aligned (Reddy Fig. 4)",
            f"IC emerges at step {_step(step_ic)} (10% -> 90%: {span('IC accuracy')}), {head} at {_step(step_head)} "
            f"({span(head)}); not judged: {prev} at {_step(step_prev)} ({span(prev)})",
            bool(aligned and all(sharp.values())),
        )
    )
    return claims


def _step(step) -> str:
    return "never" if pd.isna(step) else str(int(step))


def _phase_figure(out: Path, results: pd.DataFrame) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, split in zip(axes, ("IC", "IW"), strict=True):
        phase_diagram(results, x="data.n_classes", y="data.burst", split=split, ax=ax)
    fig.tight_layout()
    path = out / "phase_K_B.png"
    save(fig, path)
    return path


def _induction_figure(out: Path, curves: pd.DataFrame, transitions: pd.DataFrame) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = transitions.set_index("curve")["emergence_step"]
    for (name, c), color in zip(curves.groupby("curve"), ("C0", "C1", "C2"), strict=False):
        ax.plot(c["step"] + 1, c["value"], marker=".", label=name, color=color)
        if pd.notna(steps[name]):
            ax.axvline(steps[name] + 1, color=color, ls=":", lw=1)
    ax.set(xscale="log", xlabel="step + 1", ylabel="value", title="K=1024, B=4: emergence steps dotted")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "induction_head.png"
    save(fig, path)
    return path
