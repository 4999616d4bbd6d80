"""Singh et al. 2023: transient ICL, and L2 keeping it (and the Omniglot setting of Chan et al. 2022)."""

from icl_circuits.papers.singh2023.presets import omniglot_bursty

PRESETS = {"omniglot-bursty": omniglot_bursty}
REPRODUCTIONS = {"singh2023": ("reproduce", "Singh et al. 2023: transient ICL, and L2 keeping it")}
