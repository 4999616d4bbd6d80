"""The reference pages name what the code produces."""

from __future__ import annotations

import re
from pathlib import Path

from icl_circuits.data.classbank import ClassBankSource
from icl_circuits.data.gaussian import GaussianSource
from icl_circuits.data.stylized import StylizedSource
from icl_circuits.metrics import METRICS
from probes.builtin.ablations import COMPLEMENT, RANDOM_HEADS

DOCS = Path(__file__).parents[1] / "docs"


def test_metrics_page_explains_every_name():
    text = (DOCS / "metrics.md").read_text()
    names = [*METRICS, "train", "head_index", RANDOM_HEADS, COMPLEMENT, "head LlHh", "ICL circuit", "IWL path"]
    for source in (GaussianSource, ClassBankSource, StylizedSource):
        names += list(source.splits)
    assert len(StylizedSource.splits) == 18
    scores = ["task_induction", "induction_strength", "prev_token", "prev_token_corrected"]
    names += scores + ["prefix_matching", "copying", "dla"]
    missing = [n for n in names if f"`{n}`" not in text and not _stylized_named(n, text)]
    assert not missing, f"docs/metrics.md does not explain {missing}"


def _stylized_named(split: str, text: str) -> bool:
    """Stylized splits are explained by their three parts."""
    m = re.fullmatch(r"(IBD|OOBD)(-rel|-irr)?(-high|-low)?", split)
    return bool(m) and all(f"`{part}`" in text for part in m.groups() if part)


def test_sweeps_page_uses_the_real_score_names():
    text = (DOCS / "sweeps.md").read_text()
    assert "`induction`" not in text and "`task_induction`" in text
    assert "layer, head_index, value" in text
