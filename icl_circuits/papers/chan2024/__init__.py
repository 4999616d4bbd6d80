"""Chan, Chen, György & Schuurmans 2024 (ICLR 2025): transient rare-class ICL and the gating model."""

from icl_circuits.papers.chan2024.presets import chan2024_omniglot, chan2024_stylized

PRESETS = {"chan2024-stylized": chan2024_stylized, "chan2024-omniglot": chan2024_omniglot}
REPRODUCTIONS = {
    "chan2024": ("reproduce", "Chan et al. 2024: training-set size sweep on stylized data + the gating model"),
    "chan2024-ablation": ("ablation", "Chan et al. 2024: which setting carries rare-class ICL"),
    "chan2024-omniglot": ("omniglot", "Chan et al. 2024: the stylized sweep with Omniglot exemplars"),
    "chan2024-llm": ("llm", "Chan et al. 2024 §5: fine-tuning SmolLM2-135M to memorise trades away ICL"),
}
