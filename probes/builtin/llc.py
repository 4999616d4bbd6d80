"""Opt-in probes ``llc``, ``llc_components`` and ``stages`` (``icl-circuits analyze RUN --with ...``).

* ``llc_components`` (report rank 39): the weight-refined LLC of every head, MLP, the readout,
  the ICL circuit and the IWL path at every analysed checkpoint (cached; the costly one).
* ``llc`` (rank 40): the whole-model LLC and the data-refined LLC on the ICL and IWL
  splits at every analysed checkpoint (:func:`probes.llc_over_training.llc_over_training`,
  cached per checkpoint); writes ``llc.csv`` (with the components' rows, if computed) and
  ``llc.png`` (LLC over training beside the ICL and IWL accuracies, and the per-head curves).
* ``stages`` (rank 50): essential dynamics (``essential_dynamics.csv``, ``.png``) and the
  stage boundaries of the LLC curve (if ``llc`` ran) and the trajectory: ``stages.csv`` and
  the summary's stage lines.

They need the ``devinterp`` extra (``stages`` alone does not).
"""

from __future__ import annotations

import pandas as pd

from icl_circuits.runs.read import read_metrics
from probes import essential_dynamics as ed
from probes import llc_over_training as lot
from probes import stages as st
from probes.llc_over_training import FIG, TRAIN, llc_over_training
from probes.registry import Probe, ReportContext, register

TABLE = "llc.csv"
ED_TABLE = "essential_dynamics.csv"
STAGES = "stages.csv"


def _curve(df: pd.DataFrame, condition: str, split: str, metric: str = "llc") -> pd.Series:
    sel = df[(df.condition == condition) & (df.split == split) & (df.metric == metric)]
    return sel.set_index("step").value.sort_index()


def _healthy(df: pd.DataFrame, condition: str, split: str) -> pd.Series:
    llc = _curve(df, condition, split)
    ok = _curve(df, condition, split, "llc_healthy").reindex(llc.index) > 0.5
    return llc.where(ok)


def llc_figure(df: pd.DataFrame, acc: pd.DataFrame, icl_split: str, iwl_split: str):
    """LLC over training (whole model, ICL and IWL data), accuracies beside, per-head curves."""
    import matplotlib.pyplot as plt

    heads = df[df.head_index.notna() & (df.metric == "llc")]
    n = 3 if not heads.empty else 2
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4))
    ax = axes[0]
    for condition, split, label in (
        ("clean", TRAIN, "whole model"),
        ("clean", icl_split, f"whole model, {icl_split} data"),
        ("clean", iwl_split, f"whole model, {iwl_split} data"),
        ("ICL circuit", TRAIN, "ICL circuit"),
        ("IWL circuit", TRAIN, "IWL path"),
    ):
        curve = _curve(df, condition, split)
        if not curve.empty:
            ax.plot(curve.index + 1, curve.values, marker=".", label=label)
    ax.set_title("LLC over training")
    ax.set_ylabel("LLC")
    ax = axes[1]
    for split in (icl_split, iwl_split):
        a = acc[acc.split == split].set_index("step").value.sort_index()
        ax.plot(a.index + 1, a.values, label=f"{split} accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy")
    if n == 3:
        ax = axes[2]
        for (layer, head), g in heads.groupby(["layer", "head_index"]):
            g = g.sort_values("step")
            ax.plot(g.step + 1, g.value, marker=".", label=f"L{int(layer)}H{int(head)}")
        ax.set_title("weight-refined LLC per head")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("step + 1")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _components(ctx: ReportContext) -> list[str]:
    df = llc_over_training(ctx.run, ctx.steps, ("components",), lot.DEFAULT, ctx.circuit, ctx.cache, ctx.progress)
    last = df[(df.step == df.step.max()) & (df.metric == "llc")].set_index("condition").value
    heads = ", ".join(f"{c} {v:.1f}" for c, v in last.items() if c.startswith("L") and "H" in c)
    lines = [f"weight-refined LLC at the last checkpoint: {heads}"]
    for c in ("ICL circuit", "IWL circuit"):
        if c in last:
            lines.append(f"  {c}: {last[c]:.1f}")
    return lines


def _summary_llc(df: pd.DataFrame, source) -> list[str]:
    whole = _curve(df, "clean", TRAIN)
    ok = _curve(df, "clean", TRAIN, "llc_healthy")
    peak = whole.idxmax()
    lines = [
        f"LLC (whole model): {whole.iloc[0]:.1f} at step {whole.index[0]}, peak {whole.max():.1f} at step {peak}, "
        f"{whole.iloc[-1]:.1f} at step {whole.index[-1]}; {int((ok > 0.5).sum())} of {len(ok)} estimates healthy"
    ]
    icl, iwl = _curve(df, "clean", source.icl_split), _curve(df, "clean", source.iwl_split)
    if not icl.empty and not iwl.empty:
        lines.append(
            f"data-refined LLC at the last step: {source.icl_split} {icl.iloc[-1]:.1f}, {source.iwl_split} {iwl.iloc[-1]:.1f}"
        )
    return lines


def report(ctx: ReportContext) -> list[str]:
    """``llc.csv``, ``llc.png`` and the LLC summary lines."""
    from probes import figures

    df = llc_over_training(ctx.run, ctx.steps, ("model", "data"), lot.DEFAULT, cache=ctx.cache, progress=ctx.progress)
    comps = llc_over_training(
        ctx.run, ctx.steps, ("components",), lot.DEFAULT, ctx.circuit, ctx.cache, progress=False, compute=False
    )
    full = pd.concat([df, comps], ignore_index=True)
    full.to_csv(ctx.out / TABLE, index=False)
    metrics = read_metrics(ctx.run)
    acc = metrics[(metrics.metric == "acc") & metrics.step.isin(ctx.steps)]
    figures.save(llc_figure(full, acc, ctx.source.icl_split, ctx.source.iwl_split), ctx.out / FIG)
    return _summary_llc(df, ctx.source)


def stages_report(ctx: ReportContext) -> list[str]:
    """Essential dynamics, then the stages from its turning points and the (cached) LLC curve."""
    from probes import figures

    table = ed.essential_dynamics(ctx.run, ctx.steps)
    table.to_csv(ctx.out / ED_TABLE, index=False)
    figures.save(ed.figure(table), ctx.out / ed.FIG)
    found = [st.ed_boundaries(table)]
    llc = llc_over_training(ctx.run, ctx.steps, ("model",), lot.DEFAULT, cache=ctx.cache, progress=False, compute=False)
    if not llc.empty:
        curve = _healthy(llc, "clean", TRAIN)
        found.append(st.llc_boundaries(curve.index, curve.values))
    stages = st.stage_table(st.merge_boundaries(found), min(ctx.steps), max(ctx.steps))
    stages.to_csv(ctx.out / STAGES, index=False)
    explained = ", ".join(f"{100 * e:.0f}%" for e in table.attrs["explained"])
    turns = ", ".join(str(s) for s in table[table.turning].step) or "none"
    lines = [f"essential dynamics: PCs explain {explained}; turning points at steps {turns}"]
    if llc.empty:
        lines.append("stages from essential dynamics only (add --with llc for the LLC's turning points)")
    return lines + st.describe(stages)


for _probe in (
    Probe(
        "llc_components",
        1,
        report=_components,
        report_rank=39,
        opt_in=True,
        description="weight-refined LLC per head, MLP, readout, ICL circuit and IWL path (devinterp)",
    ),
    Probe(
        "llc",
        1,
        metrics=("llc", "llc_std", "llc_drift", "llc_healthy", "llc_init_loss"),
        report=report,
        report_rank=40,
        opt_in=True,
        description="whole-model and data-refined (ICL, IWL split) LLC over training (devinterp)",
    ),
    Probe(
        "stages",
        1,
        report=stages_report,
        report_rank=50,
        opt_in=True,
        description="essential dynamics and stage boundaries (LLC turning points, trajectory turns)",
    ),
):
    register(_probe)
