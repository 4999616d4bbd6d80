"""The authors' code (``aadityasingh/icl-dynamics``) at our cpu settings, next to our runs.

``reference_code.csv`` holds what ``scripts/reference_singh2023.py`` measured by running their
code (its model, Adam, its loss with the L2 penalty, its data generator on Gaussian class means)
in three of our cpu settings, one seed each: ``layout2023`` (the 2023 paper's both-strategies
layout, ours: ``none``), ``threshold`` (Singh et al. 2025's layout at K 144, ours:
``threshold``) and ``l2`` (Chan's mix with the penalty ``1e-3 * sum ||p||_2``, ours:
``mixed-l2``). Columns ``setting, seed, steps, step, metric, value, seconds``; metrics at every
evaluation: ``icl_novel`` (held-out classes, the two context classes relabelled 0 / 1: ICL with
nothing to recall, as our ICL split), ``icl`` (their ICL evaluator: two *trained* classes
relabelled 0 / 1, so recalling a class's own label is wrong), ``iwl`` (the query's class absent
from the context), ``train_eval``, ``icl_in_context`` / ``icl_novel_in_context`` (their
``in_context_acc``: the argmax over the context's labels only, 0.5 without matching) and
``train_loss`` (mean over the 50 steps up to the evaluation; their L2 penalty included). It is data measured once and committed with the script that remakes it; nothing
here runs JAX.

Each comparison gives both codes' runs one of three outcomes by the same rule: ``no ICL`` (the
novel-class ICL peak stays below ``REAL_ICL``, 0.8: copying one of the two context labels at
random scores 0.5), else ``fades`` or ``persists`` as :func:`probes.competition.detect_transition`
marks the curve with the training loss (transient: a fall of at least ``max(0.1, rise / 4)``
after the peak while the loss falls).

Worked example::

    >>> reference_transitions(reference_table())[["setting", "peak", "final", "transient"]]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from icl_circuits.papers.singh2023.claims import REAL_ICL
from icl_circuits.reproduce.common import Claim
from probes.competition import detect_transition

#: The measured rows (see the module docstring and docs/reproductions/singh2023_competition.md).
REFERENCE_CSV = Path(__file__).with_name("reference_code.csv")
#: Our cpu condition with the same data layout as each of the reference's settings.
MATCH = {"layout2023": "none", "threshold": "threshold", "l2": "mixed-l2"}


def reference_table() -> pd.DataFrame:
    """The reference code's tidy rows."""
    return pd.read_csv(REFERENCE_CSV)


def _series(g: pd.DataFrame, metric: str) -> pd.Series:
    return g[g["metric"] == metric].set_index("step")["value"].sort_index()


def reference_transitions(table: pd.DataFrame) -> pd.DataFrame:
    """One row per reference run: novel-class ICL through ``detect_transition``, the other evaluators' ends."""
    rows = []
    for (setting, seed, steps), g in table.groupby(["setting", "seed", "steps"]):
        novel, loss = _series(g, "icl_novel"), _series(g, "train_loss")
        t = detect_transition(novel, loss, name=f"reference {setting}/{seed}")
        icl = _series(g, "icl")
        rows.append(
            {
                "setting": setting,
                "seed": int(seed),
                "steps": int(steps),
                "reached": int(novel.index.max()),
                "peak": t.peak,
                "peak_step": t.peak_step,
                "final": t.final,
                "transient": t.transient,
                "drop": t.drop,
                "icl01_peak": float(icl.max()),
                "icl01_peak_step": int(icl.idxmax()),
                "icl01_final": float(icl.iloc[-1]),
                "in_context_max": float(_series(g, "icl_novel_in_context").max()),
                "train_final": float(_series(g, "train_eval").iloc[-1]),
                "iwl_final": float(_series(g, "iwl").iloc[-1]),
                "loss_at_peak": float(loss.loc[: t.peak_step].iloc[-1])
                if len(loss.loc[: t.peak_step])
                else float("nan"),
                "loss_final": float(loss.iloc[-1]),
                "seconds": g["seconds"].max(),
            }
        )
    return pd.DataFrame(rows)


def outcome(peak: float, transient: bool) -> str:
    """``no ICL`` (peak below ``REAL_ICL``), ``fades`` or ``persists`` (``detect_transition``'s mark)."""
    if peak < REAL_ICL:
        return "no ICL"
    return "fades" if transient else "persists"


def reference_claims(trans: pd.DataFrame, steps: dict[str, int], table: pd.DataFrame | None = None) -> list[Claim]:
    """Our runs next to the authors' code, where both ran the same layout for the same number of steps.

    Args:
        trans: our transitions table (:func:`icl_circuits.papers.singh2023.reproduce.transitions`).
        steps: training steps of each of our conditions.
        table: the reference's rows (default: ``reference_code.csv``).

    A claim per reference setting whose run reached the step count of our matching condition:
    its novel-class ICL has the :func:`outcome` of every seed of ours.
    """
    ref = reference_transitions(reference_table() if table is None else table)
    out = []
    for r in ref.itertuples():
        cond = MATCH[r.setting]
        ours = trans[trans["condition"] == cond]
        if not len(ours) or steps.get(cond) != r.steps or r.reached != r.steps:
            continue
        mark = outcome(r.peak, bool(r.transient))
        theirs = (
            f"authors' code, s{r.seed}: novel-class ICL peak {r.peak:.2f}@{r.peak_step} -> {r.final:.2f} at "
            f"{r.reached:,} ({mark}; in-context-only accuracy at most {r.in_context_max:.2f}); their ICL "
            f"evaluator (trained classes relabelled 0/1) {r.icl01_peak:.2f}@{r.icl01_peak_step} -> "
            f"{r.icl01_final:.2f}; IWL {r.iwl_final:.2f}; train accuracy {r.train_final:.2f}; loss "
            f"{r.loss_at_peak:.3f} -> {r.loss_final:.3f}"
        )
        marks = [outcome(o.peak, bool(o.transient)) for o in ours.itertuples()]
        mine = "; ".join(
            f"s{int(o.seed)}: ICL {o.peak:.2f}@{o.peak_step} -> {o.final:.2f} ({m})"
            for o, m in zip(ours.itertuples(), marks, strict=True)
        )
        out.append(
            Claim(
                f"The authors' code (icl-dynamics) at our settings, {r.setting} ({r.steps:,} steps; ours: {cond}): "
                f"its ICL on novel classes has the outcome of every seed of ours (no ICL: peak < {REAL_ICL}; else "
                "fades: a fall of at least max(0.1, rise / 4) after the peak while the training loss falls; "
                "else persists)",
                theirs,
                mine,
                all(m == mark for m in marks),
            )
        )
    return out
