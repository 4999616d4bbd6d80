"""Singh et al. 2024: induction heads in 2 x 8 attention-only models."""

from icl_circuits.papers.singh2024.presets import singh2024_induction

PRESETS = {"singh2024-induction": singh2024_induction}
REPRODUCTIONS = {"singh2024": ("reproduce", "Singh et al. 2024: induction heads in 2x8 attention-only models")}
