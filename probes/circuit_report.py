"""The discovered-circuits part of the ``icl-circuits analyze`` report.

:func:`write_circuit_report` runs :func:`probes.circuits_over_training.discover_run`
(cached next to the other analysis tables), writes its tables and figures into the report
folder and returns the summary lines. A behaviour that is not learned (:func:`learned`) gets
no circuit in the summary and no circuit figures, only a line saying so and why; its tables
keep the numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icl_circuits.runs import layout
from icl_circuits.runs.read import load_model
from probes import figures
from probes.circuit_figures import circuit_figure, edge_heatmap
from probes.circuits_over_training import CircuitParams, circuit_overlay, discover_run, edge_entry_steps
from probes.competition import MIN_RISE, Transition
from probes.graph import build_graph

CIRCUITS = layout.REPORT_CIRCUITS
CIRCUIT_EDGES = layout.REPORT_CIRCUIT_EDGES
CIRCUIT_ENTRY = layout.REPORT_CIRCUIT_ENTRY
CIRCUIT_OVERLAY = layout.REPORT_CIRCUIT_OVERLAY
FIG_CIRCUIT = layout.REPORT_FIG_CIRCUIT
FIG_CIRCUIT_EDGES = layout.REPORT_FIG_CIRCUIT_EDGES


def learned(tr: Transition | None, min_rise: float = MIN_RISE) -> tuple[bool, str]:
    """Whether a behaviour is learned at the last checkpoint, and why not (``""`` if it is).

    Learned: its accuracy emerged (rose at least ``min_rise`` above the first checkpoint's,
    :func:`probes.competition.detect_transition`) and is still at least ``min_rise`` above it
    at the last checkpoint. Without a transition (``tr`` None) nothing is known: learned.
    """
    if tr is None:
        return True, ""
    if not tr.emerged:
        return False, (
            f"its accuracy never rose {min_rise:g} above the first checkpoint's ({tr.initial:.2f} -> peak "
            f"{tr.peak:.2f} at step {tr.peak_step}; {tr.name}: no emergence)"
        )
    if tr.final - tr.initial < min_rise:
        return False, (
            f"it faded: accuracy {tr.final:.2f} at the last checkpoint, less than {min_rise:g} above the first "
            f"checkpoint's {tr.initial:.2f} (peak {tr.peak:.2f} at step {tr.peak_step})"
        )
    return True, ""


def faithfulness_text(value: float) -> str:
    """``faithfulness 0.93``; above 1 with what that means (the metric is not bounded by 1)."""
    text = f"faithfulness {value:.2f}"
    if value > 1:
        text += " (above 1: the edges left out lower the logit difference on net; docs/metrics.md)"
    return text


def edge_shares(edges: pd.DataFrame, split: str, names: list[str], since: int) -> dict[str, tuple[int, int]]:
    """For each edge of ``names``: checkpoints from step ``since`` on with it in the circuit, of how many."""
    here = edges[(edges["split"] == split) & (edges["step"] >= since) & edges["edge"].isin(names)]
    n = int(here["step"].nunique())
    inside = here.groupby("edge")["in_circuit"].apply(lambda v: int(v.astype(bool).sum()))
    return {e: (int(inside.get(e, 0)), n) for e in names}


def circuit_lines(
    circuits: pd.DataFrame,
    edges: pd.DataFrame,
    params: CircuitParams,
    transitions: dict[str, Transition] | None = None,
) -> list[str]:
    """Summary lines: each learned behaviour's circuit at the last checkpoint and its edges.

    A behaviour that is not learned (:func:`learned`) gets one line saying so and why, and
    no circuit. Each edge of a circuit says at how many of the checkpoints since the
    behaviour emerged it was in the circuit (since the first checkpoint without ``transitions``).
    """
    last = circuits[circuits["step"] == circuits["step"].max()]
    first = int(circuits["step"].min())
    lines = [
        f"discovered circuits ({params.method}, faithfulness target {params.target:g}, {params.n} sequences per "
        f"split, mean patching; docs/circuits.md):"
    ]
    shown = []
    for _, row in last.iterrows():
        role = row["role"] or row["split"]
        tr = (transitions or {}).get(row["role"]) if row["role"] else None
        ok, why = learned(tr)
        if not ok:
            lines.append(f"  {role} circuit ({row['split']}): none reported, the behaviour is not learned: {why}")
            continue
        if not row["present"]:
            lines.append(
                f"  {role} circuit ({row['split']}): none at step {row['step']} (the behaviour is "
                f"{row['effect']:.2f} logits, below the {params.min_effect:g} needed)"
            )
            continue
        shown.append(role)
        lines.append(
            f"  {role} circuit ({row['split']}) at step {row['step']}: {row['n_edges']} of {row['n_total']} edges, "
            f"{faithfulness_text(row['faithfulness'])}, completeness {row['completeness']:.2f}, "
            f"accuracy {row['acc_circuit']:.2f} (model {row['acc_clean']:.2f})"
        )
        names = row["edges"].split()
        if tr is not None and tr.emergence_step is not None:
            since, when = int(tr.emergence_step), f"since {tr.name} emerged at step {tr.emergence_step}"
        else:
            since, when = first, f"since step {first}"
        shares = edge_shares(edges, row["split"], names, since)
        n = max((b for _, b in shares.values()), default=0)
        lines.append(
            f"    edges (in the circuit at how many of the {n} checkpoints {when}): "
            + ", ".join(f"{e} {shares[e][0]}/{shares[e][1]}" for e in names)
        )
    if "jaccard_icl_iwl" in last.columns and len(shown) == 2:
        lines.append(f"  ICL / IWL circuit overlap (Jaccard, edges): {last['jaccard_icl_iwl'].iloc[0]:.2f}")
    return lines


def write_circuit_report(
    run: Path | str,
    cache: Path | str,
    out: Path | str,
    transitions: dict[str, Transition] | None = None,
    steps: list[int] | None = None,
    params: CircuitParams | None = None,
    progress: bool = False,
) -> list[str]:
    """Discover circuits at every checkpoint; write tables and figures into ``out``.

    Args:
        run: run folder.
        cache: analysis cache folder (``RUN/analysis`` or ``--out``).
        out: the report folder being written.
        transitions: ICL / IWL emergence detection (:func:`probes.competition.summarize`):
            which behaviours are learned (:func:`learned`), marked on the edge heatmaps.
        steps: checkpoint steps (default: all; the report passes the readable ones).
        params: what to compute.
        progress: progress bar.

    Returns:
        The summary lines.
    """
    out = Path(out)
    params = params or CircuitParams()
    circuits, edges = discover_run(run, steps, params, cache, progress)
    entry = edge_entry_steps(edges)
    overlay = circuit_overlay(circuits, transitions)
    overlay["behaviour_learned"] = [learned((transitions or {}).get(r))[0] for r in overlay["role"]]
    circuits.to_csv(out / CIRCUITS, index=False)
    edges.to_csv(out / CIRCUIT_EDGES, index=False)
    entry.to_csv(out / CIRCUIT_ENTRY, index=False)
    overlay.to_csv(out / CIRCUIT_OVERLAY, index=False)
    graph = build_graph(load_model(run, int(circuits["step"].max())))
    last = edges[edges["step"] == edges["step"].max()]
    marks = {}
    for name, tr in (transitions or {}).items():
        if tr.emerged:
            marks[f"{name} emerges"] = tr.emergence_step
            marks[f"{name} peak"] = tr.peak_step
    for (role, split), _ in circuits.groupby(["role", "split"], sort=False):
        tag = role or split
        tr = (transitions or {}).get(role) if role else None
        if tr is not None and not tr.emerged:
            continue  # a behaviour never learned gets no circuit figure (its tables keep the numbers)
        title = f"{tag} circuit ({split}) at step {int(last['step'].max())}"
        figures.save(circuit_figure(graph, last[last["split"] == split], title), out / FIG_CIRCUIT.format(role=tag))
        figures.save(edge_heatmap(edges, split, marks), out / FIG_CIRCUIT_EDGES.format(role=tag))
    return circuit_lines(circuits, edges, params, transitions)
