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
from probes.circuit_report import write_circuit_report
from probes.circuits import FoundCircuit, fmt_heads
from probes.competition import competition_table, summarize
from probes.over_training import RANDOM_HEADS, analyze_run
from probes.scores import undefined_scores

#: Bump when the report's derived content changes (its folder name carries it).
REPORT_VERSION = 4  # 4: discovered circuits (probes.circuit_report)
TABLE = "probes.csv"
COMPETITION = "competition.csv"
SUMMARY = "summary.txt"
FIG_COMPETITION = "competition.png"
FIG_ABLATION = "ablations.png"
FIG_HEADS = "heads_{metric}.png"


def _top(df: pd.DataFrame, metric: str, k: int = 3) -> str:
    last = df[(df.step == df.step.max()) & (df.metric == metric) & (df.condition == "clean") & df.layer.notna()]
    last = last.sort_values("value", ascending=False).head(k)
    return ", ".join(f"L{int(r.layer)}H{int(r.head_index)} {r.value:.2f}" for r in last.itertuples())


def run_line(run: Path, name: str, n_checkpoints: int, final_step: int, total_steps: int) -> str:
    """The summary's first line; says ``incomplete: N of M steps`` for a run still training."""
    text = f"run: {run} ({name}, {n_checkpoints} checkpoints, final step {final_step}"
    if final_step < total_steps:
        return text + f"; incomplete: {final_step} of {total_steps} steps)"
    return text + f" of {total_steps})"


def ablation_lines(df: pd.DataFrame, circuit: FoundCircuit, n_heads: int, splits: list[str]) -> list[str]:
    """What was ablated at the last analysed checkpoint and what it did to ``splits``."""
    last = df[(df.step == df.step.max()) & (df.metric == "acc") & df.layer.isna()]
    value = last.set_index(["condition", "split"]).value
    n_random = df.attrs["params"].n_random if "params" in df.attrs else 0
    labels = {}
    if circuit.heads:
        every = " = every head of the model" if len(circuit.heads) == n_heads else ""
        labels["ICL circuit"] = (
            f"ICL circuit, {len(circuit.heads)} of {n_heads} heads ({fmt_heads(circuit.heads)}){every}"
        )
        if RANDOM_HEADS in set(last.condition):
            labels[RANDOM_HEADS] = f"{len(circuit.heads)} random heads (control, mean of {n_random} draws)"
        elif every:
            labels[RANDOM_HEADS] = "no random-heads control: the circuit is every head"
    else:
        labels["ICL circuit"] = "ICL circuit: nothing ablated (no circuit found)"
    labels["IWL path"] = "IWL path (the query's direct path and every MLP)"
    method = df.attrs["params"].ablation if "params" in df.attrs else "mean"
    lines = [f"ablated at step {int(df.step.max())} ({method} ablation), accuracy clean -> ablated:"]
    for cond, label in labels.items():
        if cond not in set(last.condition):
            lines.append(f"  {label}")
            continue
        effects = ", ".join(f"{s} {value[('clean', s)]:.2f} -> {value[(cond, s)]:.2f}" for s in splits)
        lines.append(f"  {label}: {effects}")
    return lines


def write_report(run: Path | str, progress: bool = True, out: Path | str | None = None, **kwargs) -> Path:
    """Analyse ``run`` and write table, figures and summary into ``RUN/analysis/`` (or ``out``).

    Args:
        run: run folder (only read if ``out`` is elsewhere).
        progress: progress bar.
        out: folder for the per-checkpoint cache and the report (default ``RUN/analysis``).
        **kwargs: passed to :func:`probes.over_training.analyze_run`.

    Returns:
        The report folder.
    """
    run = Path(run)
    root = Path(out) if out is not None else run / layout.ANALYSIS
    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    df = analyze_run(run, progress=progress, cache=root, **kwargs)
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
    key = f"r{REPORT_VERSION}-{df.attrs['params'].key()}" + (f"-skip{len(skipped)}" if skipped else "")
    final_out = root / f"report-{layout.step_dirname(int(table.index[-1]))}-{key}"
    if (final_out / SUMMARY).exists():
        return final_out
    tmp = final_out.with_name(f"{layout.TMP_PREFIX}{final_out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    full.to_csv(tmp / TABLE, index=False)
    table.to_csv(tmp / COMPETITION)
    figures.save(figures.competition_figure(table, transitions), tmp / FIG_COMPETITION)
    figures.save(figures.ablation_figure(df, list(source.splits)), tmp / FIG_ABLATION)
    for metric in ("task_induction", "prev_token"):
        figures.save(figures.head_heatmap(df, metric), tmp / FIG_HEADS.format(metric=metric))

    lines = [run_line(run, cfg.name, len(table), int(table.index[-1]), cfg.train.steps)]
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable checkpoint(s): " + "; ".join(r for _, r in skipped))
    lines += [tr.describe() for tr in transitions.values()]
    lines.append(f"ICL circuit: {circuit.describe()}")
    lines.append(f"top induction heads (task induction score): {_top(df, 'task_induction')}")
    lines.append(f"top previous-token heads: {_top(df, 'prev_token')}")
    undefined = undefined_scores(source.n_pairs, 2 * source.n_pairs + 1)
    if undefined:
        lines.append("scores skipped for this layout: " + "; ".join(f"{m} ({why})" for m, why in undefined.items()))
    n_heads = cfg.model.n_layers * cfg.model.n_heads
    lines += ablation_lines(df, circuit, n_heads, [source.icl_split, source.iwl_split])
    lines += write_circuit_report(run, root, tmp, transitions, steps=sorted(set(df.step)), progress=progress)
    (tmp / SUMMARY).write_text("\n".join(lines) + "\n")
    try:
        os.rename(tmp, final_out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent analysis finished first
    return final_out
