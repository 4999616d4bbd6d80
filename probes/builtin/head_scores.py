"""Probe ``head_scores``: every per-head score (:func:`probes.scores.head_scores`) on the ICL split.

Rows carry ``layer`` and ``head_index``; the metrics are explained in ``docs/metrics.md``.
Its report section: heatmaps of the induction and previous-token scores over training, the
top heads at the last checkpoint, and the scores this data layout cannot define.
"""

from __future__ import annotations

import pandas as pd

from icl_circuits.runs import layout
from probes.registry import Probe, ReportContext, register
from probes.scores import head_scores, undefined_scores

#: 2: column ``head`` renamed ``head_index``.
VERSION = 2
METRICS = (
    "task_induction",
    "induction_strength",
    "prev_token",
    "prev_token_corrected",
    "prefix_matching",
    "copying",
    "dla",
)
#: The scores drawn as heatmaps (``heads_{metric}.png``) and named in the summary.
HEATMAPS = ("task_induction", "prev_token")
FIG_HEADS = layout.REPORT_FIG_HEADS


def scores_on_icl_split(model, source, evals: dict, params, step: int = 0) -> pd.DataFrame:
    """:func:`probes.scores.head_scores` on the ICL split's evaluation batch."""
    scores = head_scores(model, evals[source.icl_split])
    scores["split"] = source.icl_split
    return scores


def top_heads(df: pd.DataFrame, metric: str, k: int = 3) -> str:
    """The ``k`` best heads by ``metric`` at the last step, e.g. ``L1H0 0.93, L1H1 0.40``."""
    last = df[(df.step == df.step.max()) & (df.metric == metric) & (df.condition == "clean") & df.layer.notna()]
    last = last.sort_values("value", ascending=False).head(k)
    return ", ".join(f"L{int(r.layer)}H{int(r.head_index)} {r.value:.2f}" for r in last.itertuples())


def report(ctx: ReportContext) -> list[str]:
    """Heatmaps of ``HEATMAPS``; the top heads; the scores skipped for this layout."""
    from probes import figures

    data_layout = ctx.cfg.data.layout
    undefined = undefined_scores(ctx.source.n_pairs, 2 * ctx.source.n_pairs + 1, data_layout)
    for metric in HEATMAPS:
        if metric not in undefined:
            figures.save(figures.head_heatmap(ctx.df, metric), ctx.out / FIG_HEADS.format(metric=metric))
    lines = [f"top induction heads (task induction score): {top_heads(ctx.df, 'task_induction')}"]
    if "prev_token" not in undefined:
        lines.append(f"top previous-token heads: {top_heads(ctx.df, 'prev_token')}")
    if undefined:
        lines.append("scores skipped for this layout: " + "; ".join(f"{m} ({why})" for m, why in undefined.items()))
    return lines


PROBE = register(
    Probe(
        "head_scores",
        VERSION,
        metrics=METRICS,
        compute=scores_on_icl_split,
        report=report,
        report_rank=10,
        description="per-head attention, token-sequence, copying and direct-logit scores on the ICL split",
    )
)
