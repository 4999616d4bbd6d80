"""Nguyen & Reddy 2024: K* against context length, t_ICL, bimodality, and the kinetic model."""

from icl_circuits.papers.nguyen_reddy2024.presets import nguyen_reddy2024, nguyen_reddy2024_interleaved

PRESETS = {"nguyen-reddy2024": nguyen_reddy2024, "nguyen-reddy2024-interleaved": nguyen_reddy2024_interleaved}
REPRODUCTIONS = {
    "nguyen-reddy2024": ("reproduce", "Nguyen & Reddy 2024: K* vs context length, t_ICL, bimodality"),
    "nguyen-reddy2024-mechanism": (
        "reproduce_mechanism",
        "Nguyen & Reddy 2024: independent paths (ablations) and rates, not capacity (K* vs width, lr ratio)",
    ),
}
