"""What every reproduction shares: scales, claims, the output folder and training grids.

A reproduction is a function ``run(out, scale, workers, progress) -> Reproduction`` that
trains what it needs (through :mod:`icl_circuits.sweeps`, so an interrupted reproduction
resumes where it stopped), measures, and returns its tables, figures and claims. The
command line then writes them next to the runs::

    OUT/
      summary.json     name, scale, settings, seconds, claims (paper vs ours, holds)
      claims.md        the same claims as a Markdown table (docs/reproductions/claims/ keeps the cpu runs')
      <table>.csv      tidy tables (one per measurement)
      <figure>.png     figures
      sweeps/<name>/   the sweeps' folders (ordinary run folders under runs/)

Scales: ``smoke`` (seconds; checks the plumbing in the default test suite, no science),
``cpu`` (the documented numbers, sized for 2 CPU cores; docs/reproductions/README.md gives each
one's measured run time and which fit 30 minutes) and ``full`` (the papers' scale, for a GPU).

A claim names where it was read as ``[checkpoint: RULE]`` (a :data:`CHECKPOINT_RULES` rule) or
``[every checkpoint]`` (a claim about a curve over training); one that names neither was read
at the last checkpoint or over the whole curve.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from icl_circuits.errors import ConfigError
from icl_circuits.fileio import write_atomic
from icl_circuits.runs import layout

SCALES = ("smoke", "cpu", "full")
SUMMARY = layout.REPRO_SUMMARY
CLAIMS = layout.REPRO_CLAIMS
SWEEPS = layout.REPRO_SWEEPS


@dataclasses.dataclass(frozen=True)
class Claim:
    """One of a paper's claims next to what we measured.

    Attributes:
        claim: what the paper says happens (a sentence).
        paper: the paper's number or qualitative result.
        ours: our measured number, with enough context to read it.
        holds: whether our measurement agrees (None when there is nothing to compare).
    """

    claim: str
    paper: str
    ours: str
    holds: bool | None


@dataclasses.dataclass
class Reproduction:
    """What one reproduction measured."""

    name: str
    scale: str
    settings: dict
    claims: list[Claim] = dataclasses.field(default_factory=list)
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    figures: list[Path] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def claims_markdown(self) -> str:
        lines = ["| claim | paper | ours | holds |", "| --- | --- | --- | --- |"]
        for c in self.claims:
            mark = {True: "yes", False: "**no**", None: "–"}[c.holds]
            lines.append(f"| {c.claim} | {c.paper} | {c.ours} | {mark} |")
        return "\n".join(lines) + "\n"


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ConfigError(f"--scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    return scale


def pick(scale: str, smoke, cpu, full):
    """The value for ``scale``: keeps each setting's three sizes on one line."""
    return {"smoke": smoke, "cpu": cpu, "full": full}[check_scale(scale)]


def write_outputs(out: Path, rep: Reproduction) -> Path:
    """Write ``summary.json``, ``claims.md`` and every table (atomically) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, table in rep.tables.items():
        write_atomic(out / f"{name}.csv", table.to_csv(index=False), overwrite=True)
    summary = {
        "name": rep.name,
        "scale": rep.scale,
        "seconds": round(rep.seconds, 1),
        "settings": rep.settings,
        "claims": [dataclasses.asdict(c) for c in rep.claims],
        "tables": sorted(f"{n}.csv" for n in rep.tables),
        "figures": [p.name for p in rep.figures],
    }
    write_atomic(out / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n", overwrite=True)
    write_atomic(out / CLAIMS, rep.claims_markdown(), overwrite=True)
    return out / SUMMARY


def run_grid(
    out: Path,
    name: str,
    base: str,
    overrides: Sequence[str],
    grid: dict[str, list],
    workers: int | None = None,
    progress: bool = True,
    probes: bool = False,
) -> pd.DataFrame:
    """Train ``grid`` over preset ``base`` as a sweep in ``out/sweeps/name``; its results table.

    Resumes a sweep folder left by an interrupted reproduction; raises the sweep's one-line
    error if any run failed (after the others finished).
    """
    return run_grids(out, {name: (base, overrides, grid)}, workers, progress, probes)[name]


def run_grids(
    out: Path,
    grids: dict[str, tuple[str, Sequence[str], dict[str, list]]],
    workers: int | None = None,
    progress: bool = True,
    probes: bool = False,
) -> dict[str, pd.DataFrame]:
    """:func:`run_grid` for several grids (name -> ``(base, overrides, grid)``) in one pool of
    jobs, so runs of different grids that share a model vectorise together where the measured
    rule says it pays (:func:`icl_circuits.sweeps.sweep.run_sweeps`); each grid's sweep folder
    and results table are the ones :func:`run_grid` makes. Raises the first failed grid's
    one-line error after every run finished."""
    from icl_circuits.sweeps import LocalBackend, SweepSpec, run_sweeps
    from icl_circuits.sweeps.sweep import check_ok

    specs = [
        (SweepSpec(base=base, overrides=tuple(over), grid={k: list(v) for k, v in grid.items()}), out / SWEEPS / name)
        for name, (base, over, grid) in grids.items()
    ]
    results = run_sweeps(specs, backend=LocalBackend(workers), progress=progress, figures=False, probes=probes)
    for result in results:
        check_ok(result)
    return {name: result.results for name, result in zip(grids, results, strict=True)}


#: "Abrupt": a change whose 10% -> 90% span (``probes.competition.Transition``'s onset and
#: completion steps) ends within this factor of the step where it starts (one doubling).
ABRUPT_SPAN = 2.0


def abrupt(onset_step: float | None, completion_step: float | None) -> bool:
    """Whether a change from ``onset_step`` (10%) to ``completion_step`` (90%) is abrupt (:data:`ABRUPT_SPAN`)."""
    if onset_step is None or completion_step is None or pd.isna(onset_step) or pd.isna(completion_step):
        return False
    return float(completion_step) <= ABRUPT_SPAN * max(float(onset_step), 1.0)


#: Checkpoint-selection rules of :func:`final`.
CHECKPOINT_RULES = ("last", "min_train_loss")


def final(results: pd.DataFrame, metric: str = "acc", rule: str = "last") -> pd.DataFrame:
    """One checkpoint's ``metric`` rows of every run of a sweep's results table.

    Args:
        results: a sweep's tidy results (``kind``, ``point``, ``step``, ``split``, ``metric``, ``value``).
        metric: the metric to keep.
        rule: ``last`` (the last checkpoint) or ``min_train_loss`` (the checkpoint with the
            lowest training loss, the latest of ties, as ``chanb/simple_icl``'s plots choose;
            the training loss is the mean over the steps since the previous checkpoint).
    """
    if rule not in CHECKPOINT_RULES:
        raise ConfigError(f"checkpoint rule: expected one of {', '.join(CHECKPOINT_RULES)}, got {rule!r}")
    rows = results[(results["kind"] == "metrics") & (results["metric"] == metric)]
    if rule == "last":
        chosen = rows.groupby("point")["step"].max()
    else:
        loss = results[(results["kind"] == "metrics") & (results["split"] == "train") & (results["metric"] == "loss")]
        loss = loss.sort_values(["point", "value", "step"], ascending=[True, True, False])
        chosen = loss.groupby("point")["step"].first()
    keep = rows["step"] == rows["point"].map(chosen)
    return rows[keep].reset_index(drop=True)


def rescore(chosen: pd.DataFrame, sweep: Path, n: int) -> pd.DataFrame:
    """``chosen`` (rows of :func:`final`: one checkpoint per point) with every evaluation split's
    metrics recomputed on ``n`` sequences per split.

    A long grid can then evaluate small sets at every checkpoint (the curves) and the paper's
    full evaluation only at the checkpoint each run is read at. Rows of splits the run's data
    source does not evaluate (the training loss) keep their values.

    Args:
        chosen: tidy rows with ``point``, ``step``, ``split``, ``metric``, ``value``.
        sweep: the sweep folder whose ``runs/POINT`` hold the checkpoints.
        n: sequences per evaluation split (each split's fixed evaluation set of that size).
    """
    from icl_circuits.metrics import eval_sets, evaluate
    from icl_circuits.runs.read import load_native, load_source

    new = {}
    for point, step in chosen[["point", "step"]].drop_duplicates().itertuples(index=False):
        run = Path(sweep) / layout.SWEEP_RUNS / str(point)
        source = load_source(run)
        for row in evaluate(load_native(run, int(step)), eval_sets(source, n), source.n_labels):
            new[(point, row["split"], row["metric"])] = row["value"]
    out = chosen.copy()
    keys = zip(out["point"], out["split"], out["metric"], strict=True)
    out["value"] = [new.get(k, v) for k, v in zip(keys, out["value"], strict=True)]
    return out


def timed(fn: Callable[[], Reproduction]) -> Reproduction:
    t0 = time.monotonic()
    rep = fn()
    rep.seconds = time.monotonic() - t0
    return rep
