"""Reddy 2023 (ICLR 2024): the (K, B) phase diagram and the abrupt induction head.

``demo`` is this paper's setting made small enough for two CPU cores.
"""

from icl_circuits.papers.reddy2023.presets import demo, reddy2023

PRESETS = {"demo": demo, "reddy2023": reddy2023}
REPRODUCTIONS = {"reddy2023": ("reproduce", "Reddy 2023: (K, B) phase diagram and the abrupt induction head")}
