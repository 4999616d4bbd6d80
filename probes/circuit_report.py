"""The discovered-circuits part of the ``icl-circuits analyze`` report.

:func:`write_circuit_report` runs :func:`probes.circuits_over_training.discover_run`
(cached next to the other analysis tables), writes its tables and figures into the report
folder and returns the summary lines.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icl_circuits.runs import layout
from icl_circuits.runs.read import load_model
from probes import figures
from probes.circuit_figures import circuit_figure, edge_heatmap
from probes.circuits_over_training import CircuitParams, circuit_overlay, discover_run, edge_entry_steps
from probes.competition import Transition
from probes.graph import build_graph

CIRCUITS = layout.REPORT_CIRCUITS
CIRCUIT_EDGES = layout.REPORT_CIRCUIT_EDGES
CIRCUIT_ENTRY = layout.REPORT_CIRCUIT_ENTRY
CIRCUIT_OVERLAY = layout.REPORT_CIRCUIT_OVERLAY
FIG_CIRCUIT = layout.REPORT_FIG_CIRCUIT
FIG_CIRCUIT_EDGES = layout.REPORT_FIG_CIRCUIT_EDGES


def circuit_lines(
    circuits: pd.DataFrame, entry: pd.DataFrame, overlay: pd.DataFrame, params: CircuitParams
) -> list[str]:
    """Summary lines: each role's circuit at the last checkpoint, when it formed, its edges."""
    last = circuits[circuits["step"] == circuits["step"].max()]
    lines = [
        f"discovered circuits ({params.method}, faithfulness target {params.target:g}, {params.n} sequences per "
        f"split, mean patching; docs/circuits.md):"
    ]
    for _, row in last.iterrows():
        role = row["role"] or row["split"]
        if not row["present"]:
            lines.append(
                f"  {role} circuit ({row['split']}): none at step {row['step']} (the behaviour is "
                f"{row['effect']:.2f} logits, below the {params.min_effect:g} needed)"
            )
            continue
        ov = overlay[overlay["split"] == row["split"]]
        since = ov["circuit_from"].iloc[0] if len(ov) else None
        lines.append(
            f"  {role} circuit ({row['split']}) at step {row['step']}: {row['n_edges']} of {row['n_total']} edges, "
            f"faithfulness {row['faithfulness']:.2f}, completeness {row['completeness']:.2f}, "
            f"accuracy {row['acc_circuit']:.2f} (model {row['acc_clean']:.2f}); present since step {since}"
        )
        first = entry[entry["split"] == row["split"]].set_index("edge")
        kept = [f"{e} (enters {first.loc[e, 'enters']})" if e in first.index else e for e in row["edges"].split()]
        lines.append("    edges: " + ", ".join(kept))
    if "jaccard_icl_iwl" in last.columns and last["present"].all():
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
        transitions: ICL / IWL emergence detection (:func:`probes.competition.summarize`),
            marked on the edge heatmaps.
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
        title = f"{tag} circuit ({split}) at step {int(last['step'].max())}"
        figures.save(circuit_figure(graph, last[last["split"] == split], title), out / FIG_CIRCUIT.format(role=tag))
        figures.save(edge_heatmap(edges, split, marks), out / FIG_CIRCUIT_EDGES.format(role=tag))
    return circuit_lines(circuits, entry, overlay, params)
