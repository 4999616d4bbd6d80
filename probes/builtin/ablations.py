"""Probe ``ablations``: every split's output metrics, clean and with named subcircuits ablated.

Conditions (column ``condition``): ``clean``; ``ICL circuit`` (only if it has heads);
``random heads``: as many random heads as the circuit, the mean over ``params.n_random``
draws (only if the circuit is not every head); ``IWL path``. The metrics are those of
:func:`icl_circuits.metrics.query_metrics` (``docs/metrics.md``).

Its report section: the ablation figure and what ablating did at the last checkpoint.
"""

from __future__ import annotations

import pandas as pd

from icl_circuits.metrics import METRICS
from icl_circuits.runs import layout
from probes.circuits import FoundCircuit, fmt_heads, random_heads
from probes.registry import Probe, ReportContext, register
from probes.subcircuits import Subcircuit, icl_circuit, iwl_path, subcircuit_effects

#: 2: circuits need a score threshold; random-heads control (with the table's ``head_index``).
VERSION = 2
#: Condition of the control: as many random heads as the ICL circuit, averaged over draws.
RANDOM_HEADS = "random heads"
FIG_ABLATION = layout.REPORT_FIG_ABLATION


def control_draws(model, params) -> list[tuple[tuple[int, int], ...]]:
    """The random-head sets of the control (same for every checkpoint; empty: no control)."""
    k = len(icl_circuit(params.prev_token_heads, params.induction_heads).heads)
    return random_heads(model.cfg.n_layers, model.cfg.n_heads, k, params.n_random)


def ablation_effects(model, source, evals: dict, params, step: int = 0) -> pd.DataFrame:
    """Output metrics of every split, clean and with each subcircuit ablated (``params.ablation``)."""
    circuit = icl_circuit(params.prev_token_heads, params.induction_heads)
    draws = control_draws(model, params) if circuit.heads else []
    controls = [Subcircuit(f"{RANDOM_HEADS} {i}", heads=heads) for i, heads in enumerate(draws)]
    circuits = ([circuit] if circuit.heads else []) + controls + [iwl_path(model)]
    # The clean rows of the effects table are the output metrics of every split.
    effects = subcircuit_effects(
        model, evals, source.n_labels, circuits, method=params.ablation, reference=evals[source.icl_split]
    )
    if controls:
        is_control = effects.condition.str.startswith(f"{RANDOM_HEADS} ")
        mean = effects[is_control].groupby(["split", "metric"], sort=False).value.mean().reset_index()
        effects = pd.concat([effects[~is_control], mean.assign(condition=RANDOM_HEADS)], ignore_index=True)
    return effects


def ablation_lines(df: pd.DataFrame, circuit: FoundCircuit, n_heads: int, splits: list[str]) -> list[str]:
    """What was ablated at the last analysed checkpoint and what it did to ``splits``."""
    last = df[(df.step == df.step.max()) & (df.metric == "acc") & df.layer.isna()]
    value = last.set_index(["condition", "split"]).value
    n_random = df.attrs["params"].n_random if "params" in df.attrs else 0
    labels = {}
    if circuit.heads:
        every = " = every head of the model" if len(circuit.heads) == n_heads else ""
        labels["ICL circuit"] = (
            f"ICL circuit, {len(circuit.heads)} of {n_heads} heads ({fmt_heads(circuit.heads)}){every}"
        )
        if RANDOM_HEADS in set(last.condition):
            labels[RANDOM_HEADS] = f"{len(circuit.heads)} random heads (control, mean of {n_random} draws)"
        elif every:
            labels[RANDOM_HEADS] = "no random-heads control: the circuit is every head"
    else:
        labels["ICL circuit"] = "ICL circuit: nothing ablated (no circuit found)"
    labels["IWL path"] = "IWL path (the query's direct path and every MLP)"
    method = df.attrs["params"].ablation if "params" in df.attrs else "mean"
    lines = [f"ablated at step {int(df.step.max())} ({method} ablation), accuracy clean -> ablated:"]
    for cond, label in labels.items():
        if cond not in set(last.condition):
            lines.append(f"  {label}")
            continue
        effects = ", ".join(f"{s} {value[('clean', s)]:.2f} -> {value[(cond, s)]:.2f}" for s in splits)
        lines.append(f"  {label}: {effects}")
    return lines


def report(ctx: ReportContext) -> list[str]:
    """The ablation figure of every split; the summary's ablation lines (ICL and IWL splits)."""
    from probes import figures

    figures.save(figures.ablation_figure(ctx.df, list(ctx.source.splits)), ctx.out / FIG_ABLATION)
    n_heads = ctx.cfg.model.n_layers * ctx.cfg.model.n_heads
    return ablation_lines(ctx.df, ctx.circuit, n_heads, [ctx.source.icl_split, ctx.source.iwl_split])


PROBE = register(
    Probe(
        "ablations",
        VERSION,
        metrics=METRICS,
        compute=ablation_effects,
        report=report,
        report_rank=20,
        description="output metrics of every split, clean and with the ICL circuit, random heads, IWL path ablated",
    )
)
