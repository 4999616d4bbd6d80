"""``icl-circuits analyze RUN``: the table, figures and a text summary of a run.

The report's own part is the probe table, the competition table and figure, and the
summary's first lines (run, skipped checkpoints, transitions, the ICL circuit); then each
registered probe's report section (:class:`probes.registry.Probe`, ``report``) adds its
figures and summary lines, in the order of their ``report_rank``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from icl_circuits.data import build_source
from icl_circuits.errors import ICLError
from icl_circuits.fileio import publish_dir, temp_dir
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, read_metrics
from probes import figures, registry
from probes.circuits import FoundCircuit
from probes.competition import competition_table, summarize
from probes.over_training import analyze_run

#: Bump when the report's own part changes, or a section's text without its probe's
#: computation (a probe's version is part of the report folder's key and would also discard
#: its cached tables). 4: discovered circuits. 5: no circuit for a behaviour not learned.
REPORT_VERSION = 5
TABLE = layout.REPORT_TABLE
COMPETITION = layout.REPORT_COMPETITION
SUMMARY = layout.REPORT_SUMMARY
FIG_COMPETITION = layout.REPORT_FIG_COMPETITION
#: The metrics the report's own part reads (the competition table: each split's accuracy).
NEEDS = ("acc",)


def run_line(run: Path, name: str, n_checkpoints: int, final_step: int, total_steps: int) -> str:
    """The summary's first line; says ``incomplete: N of M steps`` for a run still training."""
    text = f"run: {run} ({name}, {n_checkpoints} checkpoints, final step {final_step}"
    if final_step < total_steps:
        return text + f"; incomplete: {final_step} of {total_steps} steps)"
    return text + f" of {total_steps})"


def report_key(params, probes: list[registry.Probe], skipped: int = 0) -> str:
    """The report folder's key: ``REPORT_VERSION``, the analysis key and every report section's version."""
    sections = [[p.name, p.version] for p in probes if p.report is not None]
    blob = json.dumps({"analysis": params.key(), "sections": sections}, sort_keys=True)
    key = f"r{REPORT_VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    return key + (f"-skip{skipped}" if skipped else "")


def write_report(
    run: Path | str,
    progress: bool = True,
    out: Path | str | None = None,
    *,
    steps: list[int] | None = None,
    circuit: FoundCircuit | None = None,
    eval_size: int = 512,
    ablation: str = "mean",
    probes: Sequence[str] | None = None,
) -> Path:
    """Analyse ``run`` and write table, figures and summary into ``RUN/analysis/`` (or ``out``).

    Args:
        run: run folder (only read if ``out`` is elsewhere).
        progress: progress bar.
        out: folder for the per-checkpoint cache and the report (default ``RUN/analysis``).
        steps: checkpoint steps to analyse (default: all).
        circuit: the ICL circuit to ablate (default: found at the last good checkpoint).
        eval_size: sequences per evaluation split.
        ablation: ``mean``, ``zero`` or ``resample``.
        probes: names of the probes to run and report (default: every registered one);
            they must include the probe of the metrics in ``NEEDS`` (``ablations``).

    Returns:
        The report folder.
    """
    run = Path(run)
    root = Path(out) if out is not None else run / layout.ANALYSIS
    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    chosen = registry.select(probes)
    names = [p.name for p in chosen]
    have, every = registry.metric_names(names), registry.metric_names()
    missing = [m for m in NEEDS if m not in have]
    if missing:
        who = sorted({every[m] for m in missing if m in every})
        raise ICLError(f"probes: the report needs metric(s) {missing}; add probe(s) {who} to {names}")
    df = analyze_run(run, steps, circuit, eval_size, ablation, progress=progress, cache=root, probes=names)
    circuit = df.attrs["circuit"]
    train = read_metrics(run)
    train = train[train.split == "train"].assign(condition="clean", layer=pd.NA, head_index=pd.NA)
    train = train[train.step.isin(set(df.step))]
    full = pd.concat([df, train[df.columns]], ignore_index=True)
    table = competition_table(full, source.icl_split, source.iwl_split, source.ciwl_split)
    transitions = summarize(table)

    # One report folder per (last step, analysis parameters), written under a temporary
    # name and renamed when complete: reports are never overwritten or half-written.
    skipped = df.attrs.get("skipped", [])
    key = report_key(df.attrs["params"], chosen, len(skipped))
    final_out = root / f"{layout.REPORT_PREFIX}{layout.step_dirname(int(table.index[-1]))}-{key}"
    if (final_out / SUMMARY).exists():
        return final_out
    tmp = temp_dir(final_out)
    full.to_csv(tmp / TABLE, index=False)
    table.to_csv(tmp / COMPETITION)
    figures.save(figures.competition_figure(table, transitions), tmp / FIG_COMPETITION)

    lines = [run_line(run, cfg.name, len(table), int(table.index[-1]), cfg.train.steps)]
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable checkpoint(s): " + "; ".join(r for _, r in skipped))
    lines += [tr.describe() for tr in transitions.values()]
    lines.append(f"ICL circuit: {circuit.describe()}")
    ctx = registry.ReportContext(run, cfg, source, df, transitions, root, tmp, progress)
    for probe in sorted((p for p in chosen if p.report is not None), key=lambda p: p.report_rank):
        lines += probe.report(ctx)
    (tmp / SUMMARY).write_text("\n".join(lines) + "\n")
    publish_dir(tmp, final_out)  # False: a concurrent analysis finished first; its report stays
    return final_out
