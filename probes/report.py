"""``icl-circuits analyze RUN``: the table, figures and a text summary of a run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from icl_circuits.data import build_source
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, read_metrics
from probes import figures
from probes.competition import competition_table, summarize
from probes.over_training import analyze_run

#: Bump when the report's derived content changes (its folder name carries it).
REPORT_VERSION = 2
TABLE = "probes.csv"
COMPETITION = "competition.csv"
SUMMARY = "summary.txt"
FIG_COMPETITION = "competition.png"
FIG_ABLATION = "ablations.png"
FIG_HEADS = "heads_{metric}.png"


def _top(df: pd.DataFrame, metric: str, k: int = 3) -> str:
    last = df[(df.step == df.step.max()) & (df.metric == metric) & (df.condition == "clean") & df.layer.notna()]
    last = last.sort_values("value", ascending=False).head(k)
    return ", ".join(f"L{int(r.layer)}H{int(r.head)} {r.value:.2f}" for r in last.itertuples())


def write_report(run: Path | str, progress: bool = True, **kwargs) -> Path:
    """Analyse ``run`` and write table, figures and summary into ``RUN/analysis/``.

    Returns:
        The analysis folder.
    """
    run = Path(run)
    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    df = analyze_run(run, progress=progress, **kwargs)
    circuit = df.attrs["circuit"]
    train = read_metrics(run)
    train = train[train.split == "train"].assign(condition="clean", layer=pd.NA, head=pd.NA)
    full = pd.concat([df, train[df.columns]], ignore_index=True)
    table = competition_table(full, source.icl_split, source.iwl_split, source.ciwl_split)
    transitions = summarize(table)

    # One report folder per (last step, analysis parameters), written under a temporary
    # name and renamed when complete: reports are never overwritten or half-written.
    key = f"r{REPORT_VERSION}-{df.attrs['params'].key()}"
    out = run / layout.ANALYSIS / f"report-{layout.step_dirname(int(table.index[-1]))}-{key}"
    if (out / SUMMARY).exists():
        return out
    final_out = out
    out = out.with_name(f"{layout.TMP_PREFIX}{out.name}-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    full.to_csv(out / TABLE, index=False)
    table.to_csv(out / COMPETITION)
    figures.save(figures.competition_figure(table, transitions), out / FIG_COMPETITION)
    figures.save(figures.ablation_figure(df, list(source.splits)), out / FIG_ABLATION)
    for metric in ("task_induction", "prev_token"):
        figures.save(figures.head_heatmap(df, metric), out / FIG_HEADS.format(metric=metric))

    final = table.iloc[-1]
    lines = [f"run: {run} ({cfg.name}, {len(table)} checkpoints, final step {int(table.index[-1])})"]
    lines += [tr.describe() for tr in transitions.values()]
    lines.append(f"ICL circuit: {circuit.describe()}")
    lines.append(f"top induction heads (task induction score): {_top(df, 'task_induction')}")
    lines.append(f"top previous-token heads: {_top(df, 'prev_token')}")
    for col in table.columns:
        if "|" in col:
            split_metric, cond = col.split("|")
            split = split_metric.removesuffix("_acc")
            clean = final.get("ICL" if split == source.icl_split else "IWL")
            lines.append(f"at the end, {cond}: {split} accuracy {clean:.2f} -> {final[col]:.2f}")
    (out / SUMMARY).write_text("\n".join(lines) + "\n")
    try:
        os.rename(out, final_out)
    except OSError:
        shutil.rmtree(out, ignore_errors=True)  # a concurrent analysis finished first
    return final_out
