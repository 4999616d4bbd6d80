"""Analysis of ICL vs IWL circuits on icl-circuits run folders (or any bridge + Batch).

Scores (:mod:`probes.scores`), interventions (:mod:`probes.ablation`, :mod:`probes.pattern`,
:mod:`probes.paths`, :mod:`probes.subcircuits`), circuit finding (:mod:`probes.circuits`),
evaluation over training (:mod:`probes.over_training`), competition and transition detection
(:mod:`probes.competition`), figures (:mod:`probes.figures`) and the report of
``icl-circuits analyze`` (:mod:`probes.report`).
"""

from probes.ablation import ablate_heads, all_heads_ablation
from probes.circuits import FoundCircuit, find_icl_circuit
from probes.competition import competition_table, detect_transition, summarize
from probes.over_training import analyze_checkpoint, analyze_run
from probes.paths import ablate_k_path
from probes.pattern import clamp_pattern, preserve_patterns
from probes.scores import attention_scores, direct_logit_attribution, head_scores, token_sequence_scores
from probes.subcircuits import Subcircuit, ablate_subcircuit, icl_circuit, iwl_path, subcircuit_effects

__all__ = [
    "FoundCircuit",
    "Subcircuit",
    "ablate_heads",
    "ablate_k_path",
    "ablate_subcircuit",
    "all_heads_ablation",
    "analyze_checkpoint",
    "analyze_run",
    "attention_scores",
    "clamp_pattern",
    "competition_table",
    "detect_transition",
    "direct_logit_attribution",
    "find_icl_circuit",
    "head_scores",
    "icl_circuit",
    "iwl_path",
    "preserve_patterns",
    "subcircuit_effects",
    "summarize",
    "token_sequence_scores",
]
