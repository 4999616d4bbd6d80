"""Probe ``ablations``: every split's output metrics, clean and with named subcircuits ablated.

Conditions (column ``condition``): ``clean``; ``ICL circuit`` (only if it has heads); a
control; ``IWL path``. The control depends on whether a random draw of as many heads as the
circuit can avoid it:

* more heads outside the circuit than in it: ``random heads``, as many random heads drawn
  from outside the circuit, the mean over ``params.n_random`` draws;
* otherwise (e.g. 3 of 4 heads: every draw of 3 holds 2 of the circuit's) no draw is
  random and outside it, so ``complement`` (every head outside the circuit, if any) and
  ``head LlHh`` (each head of the model alone) stand in.

The metrics are those of :func:`icl_circuits.metrics.query_metrics` (``docs/metrics.md``).

Its report section: the ablation figure and what ablating did at the last checkpoint.
"""

from __future__ import annotations

import pandas as pd

from icl_circuits.metrics import METRICS
from icl_circuits.runs import layout
from probes.circuits import FoundCircuit, complement, fmt_heads, random_heads
from probes.registry import Probe, ReportContext, register
from probes.subcircuits import Subcircuit, icl_circuit, iwl_path, subcircuit_effects

#: 2: circuits need a score threshold; random-heads control (with the table's ``head_index``).
#: 3: random heads drawn outside the circuit; complement and per-head controls where no draw can be.
VERSION = 3
#: Condition of the control: as many random heads as the ICL circuit, outside it, averaged over draws.
RANDOM_HEADS = "random heads"
#: Condition: every head outside the ICL circuit (where no random draw can avoid the circuit).
COMPLEMENT = "complement"
#: Condition prefix of one head ablated alone, e.g. ``head L1H0`` (same case as ``COMPLEMENT``).
HEAD = "head "
FIG_ABLATION = layout.REPORT_FIG_ABLATION


def head_condition(layer: int, head: int) -> str:
    """The condition of head ``(layer, head)`` ablated alone: ``head L1H0``."""
    return f"{HEAD}L{layer}H{head}"


def controls(n_layers: int, n_heads: int, circuit_heads, n_random: int = 3) -> list[Subcircuit]:
    """The control subcircuits of a circuit (see the module docstring); empty without a circuit.

    Random draws (named ``random heads {i}``, averaged later) where a draw of as many heads
    outside the circuit is random; else the complement (if not empty) and every head alone.
    """
    heads = tuple(circuit_heads)
    if not heads:
        return []
    draws = random_heads(n_layers, n_heads, len(heads), n_random, exclude=heads)
    if draws:
        return [Subcircuit(f"{RANDOM_HEADS} {i}", heads=d) for i, d in enumerate(draws)]
    rest = complement(n_layers, n_heads, heads)
    every = [
        Subcircuit(head_condition(layer, h), heads=((layer, h),)) for layer in range(n_layers) for h in range(n_heads)
    ]
    return ([Subcircuit(COMPLEMENT, heads=rest)] if rest else []) + every


def ablation_effects(model, source, evals: dict, params, step: int = 0) -> pd.DataFrame:
    """Output metrics of every split, clean and with each subcircuit ablated (``params.ablation``)."""
    circuit = icl_circuit(params.prev_token_heads, params.induction_heads)
    control = controls(model.cfg.n_layers, model.cfg.n_heads, circuit.heads, params.n_random)
    circuits = ([circuit] if circuit.heads else []) + control + [iwl_path(model)]
    # The clean rows of the effects table are the output metrics of every split.
    effects = subcircuit_effects(
        model, evals, source.n_labels, circuits, method=params.ablation, reference=evals[source.icl_split]
    )
    is_draw = effects.condition.str.startswith(f"{RANDOM_HEADS} ")
    if is_draw.any():
        mean = effects[is_draw].groupby(["split", "metric"], sort=False).value.mean().reset_index()
        effects = pd.concat([effects[~is_draw], mean.assign(condition=RANDOM_HEADS)], ignore_index=True)
    return effects


def ablation_lines(df: pd.DataFrame, circuit: FoundCircuit, shape: tuple[int, int], splits: list[str]) -> list[str]:
    """What was ablated at the last analysed checkpoint and what it did to ``splits``.

    Args:
        df: the probe table (``attrs["params"]`` says the ablation and the draws).
        circuit: the ICL circuit that was ablated.
        shape: ``(n_layers, n_heads)`` of the model.
        splits: the splits to report.
    """
    last = df[(df.step == df.step.max()) & (df.metric == "acc") & df.layer.isna()]
    value = last.set_index(["condition", "split"]).value
    conditions = set(last.condition)
    params = df.attrs.get("params")
    n_heads = shape[0] * shape[1]
    k = len(circuit.heads)
    method = params.ablation if params is not None else "mean"
    lines = [f"ablated at step {int(df.step.max())} ({method} ablation), accuracy clean -> ablated:"]

    def effect(cond: str, label: str, indent: str = "  ") -> None:
        if cond in conditions:
            label += ": " + ", ".join(f"{s} {value[('clean', s)]:.2f} -> {value[(cond, s)]:.2f}" for s in splits)
        lines.append(indent + label)

    if not circuit.heads:
        lines.append("  ICL circuit: nothing ablated (no circuit found)")
    else:
        every = " = every head of the model" if k == n_heads else ""
        effect("ICL circuit", f"ICL circuit, {k} of {n_heads} heads ({fmt_heads(circuit.heads)}){every}")
        if RANDOM_HEADS in conditions:
            n_random = params.n_random if params is not None else 0
            effect(RANDOM_HEADS, f"{k} random heads outside the circuit (control, mean of {n_random} draws)")
        elif any(c.startswith(HEAD) for c in conditions):
            rest = complement(*shape, circuit.heads)
            instead = "the complement and each head alone" if rest else "each head alone"
            lines.append(
                f"  control: no random draw of {k} heads avoids the circuit ({n_heads - k} head(s) outside it); "
                f"instead {instead}:"
            )
            if rest:
                effect(COMPLEMENT, f"complement, every head outside the circuit ({fmt_heads(rest)})", "    ")
            for layer in range(shape[0]):
                for h in range(shape[1]):
                    where = "in the circuit" if (layer, h) in circuit.heads else "outside the circuit"
                    effect(head_condition(layer, h), f"L{layer}H{h} alone ({where})", "    ")
    effect("IWL path", "IWL path (the query's direct path and every MLP)")
    return lines


def report(ctx: ReportContext) -> list[str]:
    """The ablation figure of every split; the summary's ablation lines (ICL and IWL splits)."""
    from probes import figures

    figures.save(figures.ablation_figure(ctx.df, list(ctx.source.splits)), ctx.out / FIG_ABLATION)
    shape = (ctx.cfg.model.n_layers, ctx.cfg.model.n_heads)
    return ablation_lines(ctx.df, ctx.circuit, shape, [ctx.source.icl_split, ctx.source.iwl_split])


PROBE = register(
    Probe(
        "ablations",
        VERSION,
        metrics=METRICS,
        compute=ablation_effects,
        report=report,
        report_rank=20,
        description="output metrics of every split, clean and with the ICL circuit, a control and the IWL path ablated",
    )
)
