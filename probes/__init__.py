"""Analysis of ICL vs IWL circuits on icl-circuits run folders (or any bridge + Batch).

Scores (:mod:`probes.scores`), interventions (:mod:`probes.ablation`, :mod:`probes.pattern`,
:mod:`probes.paths`, :mod:`probes.subcircuits`), circuit finding (:mod:`probes.circuits`),
circuit discovery by edge patching, EAP and EAP-IG (:mod:`probes.graph`,
:mod:`probes.edge_patching`, :mod:`probes.eap`, :mod:`probes.discovery`,
:mod:`probes.circuits_over_training`; one split's circuit at chosen checkpoints:
:mod:`probes.circuit_study`), evaluation over training (:mod:`probes.over_training`),
competition and transition detection (:mod:`probes.competition`), figures
(:mod:`probes.figures`) and the report of ``icl-circuits analyze`` (:mod:`probes.report`).

What :func:`analyze_run` and the report run is the probe registry (:mod:`probes.registry`);
importing this package registers the built-in probes (:mod:`probes.builtin`).
"""

from probes import builtin  # noqa: F401 - registers the built-in probes
from probes.ablation import ablate_heads, all_heads_ablation
from probes.circuit_study import CircuitStudy, find_circuits
from probes.circuits import FoundCircuit, find_icl_circuit
from probes.circuits_over_training import circuit_overlay, discover_run, edge_entry_steps
from probes.competition import competition_table, detect_transition, summarize
from probes.discovery import Circuit, discover, overlap, split_circuits
from probes.eap import edge_scores, rank_agreement, score_table
from probes.edge_patching import logit_diff, patch_edges, patch_values
from probes.graph import Graph, build_graph
from probes.over_training import analyze_checkpoint, analyze_run
from probes.paths import ablate_k_path
from probes.pattern import clamp_pattern, preserve_patterns
from probes.registry import Probe, register
from probes.scores import attention_scores, direct_logit_attribution, head_scores, token_sequence_scores
from probes.subcircuits import Subcircuit, ablate_subcircuit, icl_circuit, iwl_path, subcircuit_effects

__all__ = [
    "Circuit",
    "CircuitStudy",
    "FoundCircuit",
    "Graph",
    "Probe",
    "Subcircuit",
    "ablate_heads",
    "ablate_k_path",
    "ablate_subcircuit",
    "all_heads_ablation",
    "analyze_checkpoint",
    "analyze_run",
    "attention_scores",
    "build_graph",
    "circuit_overlay",
    "discover_run",
    "clamp_pattern",
    "competition_table",
    "detect_transition",
    "direct_logit_attribution",
    "discover",
    "edge_entry_steps",
    "edge_scores",
    "find_circuits",
    "find_icl_circuit",
    "head_scores",
    "icl_circuit",
    "iwl_path",
    "logit_diff",
    "overlap",
    "patch_edges",
    "patch_values",
    "preserve_patterns",
    "rank_agreement",
    "register",
    "score_table",
    "split_circuits",
    "subcircuit_effects",
    "summarize",
    "token_sequence_scores",
]
