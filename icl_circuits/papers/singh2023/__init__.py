"""Singh et al. 2023: transient ICL, what does and does not keep it, and whether it is a competition between circuits."""

from icl_circuits.papers.singh2023.presets import omniglot_bursty

PRESETS = {"omniglot-bursty": omniglot_bursty}
REPRODUCTIONS = {
    "singh2023": (
        "reproduce",
        "Singh et al. 2023: transient ICL on both-strategies data and Chan's mix, and whether L2 keeps it",
    ),
    "singh2023-competition": (
        "reproduce_competition",
        "Singh et al. 2023: is transience a competition between circuits? Chan's mix and Nguyen & Reddy's model",
    ),
    "singh2023-competition-threshold": (
        "reproduce_competition_threshold",
        "Singh et al. 2023: is transience a competition between circuits? the 40,000-step threshold condition",
    ),
    "singh2023-threshold-l2": (
        "reproduce_threshold_l2",
        "Singh et al. 2023: does the paper's L2 penalty keep ICL on both-strategies data? the threshold condition",
    ),
}
