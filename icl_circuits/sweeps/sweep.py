"""Run, resume and aggregate a sweep: a grid of ordinary run folders under one sweep folder.

::

    SWEEP/
      sweep.json         the spec (base, overrides, grid), written once
      index.csv          one row per grid point: point, axis values, status, last step, error
      results.csv        tidy table of every run's metrics (and probe rows with --probes)
      phase_<split>.png  final accuracy over the first two non-seed axes, averaged over seeds
      runs/
        data.n_classes=32,data.burst=0,seed=0/   an ordinary run folder (icl-circuits show / analyze work)
        ...

Points that share a model (the same ``model`` and ``train``, data of the same shape: seed
replicates, and points differing in data settings such as ``data.n_train``) train together
in one job, vectorised, where :func:`icl_circuits.training.replicates.vectorise_pays` says it
pays (:func:`group_jobs`; each still writes its own ordinary run folder); ``vectorise=False``
trains every point alone.

Rerunning a sweep skips finished runs (their final checkpoint exists, or they stopped early:
``train.stop_above``), resumes interrupted
ones from their last checkpoint and retries failed ones; run folders are only ever written
by ``train`` itself. The derived tables are rewritten atomically (temporary file + rename).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from icl_circuits.errors import ICLError, RunFolderError
from icl_circuits.fileio import write_atomic
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, read_metrics
from icl_circuits.runs.store import list_checkpoints, read_json, run_end
from icl_circuits.sweeps.backends import Job, LocalBackend, Outcome
from icl_circuits.sweeps.spec import Point, SweepSpec, build_points

SPEC = layout.SWEEP_SPEC
INDEX = layout.SWEEP_INDEX
RESULTS = layout.SWEEP_RESULTS
RUNS = layout.SWEEP_RUNS

#: Columns of results.csv after the axis columns. ``kind`` is ``metrics`` (the checkpoints'
#: evaluations and training loss; ``layer``/``head`` empty) or ``probes`` (the clean rows of
#: ``analyze_run``: split metrics and per-head scores).
RESULT_COLUMNS = ["kind", "step", "split", "metric", "layer", "head_index", "value"]
STATUSES = ("pending", "partial", "done", "failed")


@dataclasses.dataclass
class SweepResult:
    """What :func:`run_sweep` did: the folder, every point's status, errors and the results table."""

    out: Path
    points: list[Point]
    status: dict[str, str]
    errors: dict[str, str]
    results: pd.DataFrame
    figures: list[Path] = dataclasses.field(default_factory=list)
    trained: int = 0

    @property
    def failed(self) -> dict[str, str]:
        return {p: e for p, e in self.errors.items() if self.status.get(p) == "failed"}

    def counts(self) -> dict[str, int]:
        return {s: sum(v == s for v in self.status.values()) for s in STATUSES}


def run_path(out: Path | str, point: Point | str) -> Path:
    return Path(out) / RUNS / (point.name if isinstance(point, Point) else point)


def point_status(point: Point, run: Path) -> tuple[str, int | None]:
    """``done`` (final checkpoint present, or stopped early: ``train.stop_above``), ``partial``
    (some checkpoints) or ``pending``; last step."""
    steps = list_checkpoints(run)
    if not steps:
        return "pending", None
    done = point.config.train.steps in steps or run_end(run, point.config.train.steps) is not None
    return ("done" if done else "partial"), steps[-1]


def load_sweep_spec(out: Path | str) -> SweepSpec:
    """The spec stored in a sweep folder."""
    path = Path(out) / SPEC
    if not path.exists():
        raise RunFolderError(f"{out}: not a sweep folder (no {SPEC})")
    return SweepSpec.from_dict(read_json(path), where=str(path))


def prepare_sweep(spec: SweepSpec, out: Path | str) -> list[Point]:
    """Build every point's config, check the folder against them, then write ``sweep.json`` once.

    Nothing is written before every config is valid and every existing run folder holds
    its point's config.
    """
    out = Path(out)
    points = build_points(spec)
    path = out / SPEC
    if path.exists():
        stored = load_sweep_spec(out)
        if stored.to_dict() != spec.to_dict():
            raise RunFolderError(
                f"{path}: this sweep folder holds a different spec ({_difference(stored.to_dict(), spec.to_dict())}); "
                "rerun with the same spec, or choose another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise RunFolderError(f"{out}: exists, is not empty and has no {SPEC}; not a sweep folder")
    for point in points:
        run = run_path(out, point)
        if (run / layout.CONFIG).exists() and load_config(run) != point.config:
            raise RunFolderError(
                f"{run}: holds a different config than the spec gives this point; move it aside or choose another --out"
            )
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(spec.to_dict(), indent=2) + "\n", overwrite=False)
    return points


def _difference(a: dict, b: dict) -> str:
    for key in [*a, *(k for k in b if k not in a)]:
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and va != vb:
            inner = _difference(va, vb)
            return f"{key}.{inner}" if not inner.startswith("stored") else f"{key}: {inner}"
        if va != vb:
            return f"{key}: stored {va!r}, given {vb!r}"
    return "no difference"


def _csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def _cell(v):
    """Axis values in tables: scalars as they are, lists as JSON."""
    return json.dumps(v) if isinstance(v, list) else v


def write_index(out: Path, points: list[Point], status: dict[str, str], errors: dict[str, str]) -> pd.DataFrame:
    rows = []
    for point in points:
        _, last = point_status(point, run_path(out, point))
        rows.append(
            {
                "point": point.name,
                **{k: _cell(v) for k, v in point.values.items()},
                "status": status[point.name],
                "last_step": last,
                "steps": point.config.train.steps,
                "error": errors.get(point.name, ""),
            }
        )
    df = pd.DataFrame(rows)
    df["last_step"] = df["last_step"].astype("Int64")
    write_atomic(out / INDEX, _csv(df), overwrite=True)
    return df


def aggregate(
    out: Path | str, points: list[Point] | None = None, probes: bool = False, probe_eval_size: int = 512
) -> pd.DataFrame:
    """Build (and write atomically) ``results.csv`` from every run folder of the sweep.

    Columns: ``point``, one per axis, then ``kind, step, split, metric, layer, head_index, value``.
    Runs without checkpoints are left out; unfinished runs contribute the steps they have.
    With ``probes``, every finished run's probe table (``analyze_run``; cached in the run
    folder after the first time) adds its clean rows as ``kind = probes``.
    """
    out = Path(out)
    if points is None:
        points = build_points(load_sweep_spec(out))
    axes = list(points[0].values) if points else []
    frames = []
    for point in points:
        run = run_path(out, point)
        metrics = read_metrics(run)
        if metrics.empty:
            continue
        df = metrics.assign(kind="metrics", layer=pd.NA, head_index=pd.NA)
        parts = [df]
        if probes and run_end(run, point.config.train.steps) is not None:
            from probes.over_training import analyze_run

            table = analyze_run(run, eval_size=probe_eval_size, progress=False)
            clean = table[table["condition"] == "clean"].drop(columns="condition").assign(kind="probes")
            parts.append(clean)
        df = pd.concat([p[RESULT_COLUMNS] for p in parts], ignore_index=True)
        df.insert(0, "point", point.name)
        for i, (k, v) in enumerate(point.values.items()):
            df.insert(1 + i, k, [_cell(v)] * len(df))
        frames.append(df)
    columns = ["point", *axes, *RESULT_COLUMNS]
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    results["layer"] = results["layer"].astype("Int64")
    results["head_index"] = results["head_index"].astype("Int64")
    results = results[columns]
    write_atomic(out / RESULTS, _csv(results), overwrite=True)
    return results


def read_results(out: Path | str) -> pd.DataFrame:
    """``SWEEP/results.csv`` as a DataFrame."""
    path = Path(out) / RESULTS
    if not path.exists():
        raise RunFolderError(f"{path}: missing (run the sweep first)")
    df = pd.read_csv(path)
    for col in ("layer", "head_index"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def group_jobs(jobs: list[Job], points: dict[str, Point], workers: int, vectorise: bool | None = None) -> list[Job]:
    """Points sharing a model (seed replicates, data settings) in one vectorised job where that
    pays (:func:`icl_circuits.training.replicates.vectorise_pays` on the group); the rest alone.

    Separate runs would keep ``workers`` cores busy, so a group is vectorised only if it splits
    into one chunk per worker that the rule accepts; otherwise its points run alone.
    ``vectorise``: None applies the measured rule, True groups every set of two or more (in up
    to ``workers`` chunks), False groups nothing.
    """
    if vectorise is False:
        return jobs
    from icl_circuits.training.replicates import VECTORISE_MIN_SEEDS, vectorise_pays

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        cfg = points[job.point].config
        shared = {"model": cfg.model.to_dict(), "train": cfg.train.to_dict(), "shape": cfg.data.model_shape()}
        groups.setdefault(json.dumps(shared, sort_keys=True, default=str), []).append(job)
    chunks: list[list[Job]] = []
    for members in groups.values():
        cfg = points[members[0].point].config
        # Separate runs keep up to `workers` cores busy: a group pays only if every worker it
        # would take still gets a vectorised chunk the rule accepts.
        if vectorise:
            n_chunks = max(1, min(workers, len(members) // 2))
            pays = len(members) >= 2
        else:
            n_chunks = min(workers, len(members) // VECTORISE_MIN_SEEDS)
            pays = n_chunks >= max(1, min(workers, len(members))) and vectorise_pays(cfg, len(members) // n_chunks)
        if not pays:
            chunks += [[m] for m in members]
            continue
        size, extra = divmod(len(members), n_chunks)
        starts = [i * size + min(i, extra) for i in range(n_chunks + 1)]
        chunks += [members[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    return [dataclasses.replace(c[0], replicates=tuple((j.point, j.config_json, j.run) for j in c[1:])) for c in chunks]


def run_sweep(
    spec: SweepSpec,
    out: Path | str,
    backend=None,
    probes: bool = False,
    probe_eval_size: int = 512,
    progress: bool = True,
    figures: bool = True,
    log: Callable[[str], None] | None = None,
    vectorise: bool | None = None,
) -> SweepResult:
    """Run (or resume) every point of ``spec`` into ``out/runs/`` and aggregate the results.

    Args:
        spec: the sweep spec (:func:`icl_circuits.sweeps.load_spec` or ``SweepSpec(...)``).
        out: the sweep folder (created; a rerun with the same spec resumes it).
        backend: a :class:`~icl_circuits.sweeps.backends.LocalBackend` (default) or
            :class:`~icl_circuits.sweeps.backends.RayBackend`.
        probes: also run the probe suite on every finished run and add its clean rows.
        probe_eval_size: sequences per split for the probes (``icl-circuits analyze --eval-size``).
        progress: tqdm bar over runs (done / total, with an ETA).
        figures: write ``phase_<split>.png`` for the first two non-seed axes.
        log: where one-line notes go (default: nowhere).
        vectorise: points sharing a model in one vectorised job: None (default) where the measured
            rule says it pays for the local backend's workers (:func:`group_jobs`; never on Ray,
            whose capacity is the cluster's), True always, False never.

    Returns:
        A :class:`SweepResult`. Failed points are listed there (and in ``index.csv``), not
        raised: the other points still run and a rerun retries only what is not done.
    """
    return run_sweeps([(spec, out)], backend, probes, probe_eval_size, progress, figures, log, vectorise)[0]


def run_sweeps(
    sweeps: Sequence[tuple[SweepSpec, Path | str]],
    backend=None,
    probes: bool = False,
    probe_eval_size: int = 512,
    progress: bool = True,
    figures: bool = True,
    log: Callable[[str], None] | None = None,
    vectorise: bool | None = None,
) -> list[SweepResult]:
    """:func:`run_sweep` for several ``(spec, out)`` sweeps at once: one pool of jobs, so points
    of different sweeps that share a model vectorise together (:func:`group_jobs`).

    Each sweep folder ends exactly as its own :func:`run_sweep` would leave it (the same run
    folders, ``index.csv`` and ``results.csv``); only which points train in one process differs.

    Returns:
        One :class:`SweepResult` per sweep, in the order given.
    """
    if probe_eval_size < 1:
        raise ICLError(f"--probe-eval-size: expected a positive number of sequences, got {probe_eval_size}")
    backend = backend or LocalBackend()
    outs = [Path(out).resolve() for _, out in sweeps]
    if len(set(outs)) != len(outs):
        raise ICLError("sweep: each sweep needs its own folder")
    # Everything is checked before anything is trained.
    all_points = [prepare_sweep(spec, out) for (spec, _), out in zip(sweeps, outs, strict=True)]
    single = len(sweeps) == 1
    # A job's point is its label: the point's name, prefixed with its sweep's index when several run.
    where: dict[str, tuple[int, Point]] = {}
    statuses: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    n_done = []
    todo = []
    for k, (out, points) in enumerate(zip(outs, all_points, strict=True)):
        status = {p.name: point_status(p, run_path(out, p))[0] for p in points}
        statuses.append(status)
        errors.append({})
        write_index(out, points, status, errors[k])
        n_done.append(sum(s == "done" for s in status.values()))
        for p in points:
            where[p.name if single else f"{k}:{p.name}"] = (k, p)
        # With probes, finished runs go to the workers too: they only analyse (train is skipped).
        todo += [(k, p) for p in points if status[p.name] != "done" or probes]
    total = sum(len(points) for points in all_points)
    if log:
        n_all = sum(n_done)
        what = f"{total - n_all} to train" + (f", {total} to analyse" if probes else "")
        runs = f"{total} runs" if single else f"{total} runs in {len(sweeps)} sweeps"
        log(f"sweep: {runs}, {n_all} already done, {what} on {backend.describe()}")
    bar = tqdm(
        total=total,
        initial=total - len(todo),
        desc="sweep",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )

    def on_done(outcome: Outcome) -> None:
        k, point = where[outcome.point]
        out, status = outs[k], statuses[k]
        state, _ = point_status(point, run_path(out, point))
        if outcome.ok and state != "done":
            outcome = dataclasses.replace(
                outcome,
                ok=False,
                error=f"the worker finished but {run_path(out, point)} has no final checkpoint here "
                "(with a Ray cluster, the sweep folder must be on a filesystem shared by all nodes)",
            )
        status[point.name] = "done" if outcome.ok else "failed"
        if outcome.error:
            errors[k][point.name] = outcome.error
        write_index(out, all_points[k], status, errors[k])
        bar.update(1)
        n_failed = sum(s == "failed" for st in statuses for s in st.values())
        if n_failed:
            bar.set_postfix(failed=n_failed, refresh=False)

    todo.sort(key=lambda kp: statuses[kp[0]][kp[1].name] != "partial")  # interrupted runs first
    jobs = [
        Job(
            p.name if single else f"{k}:{p.name}",
            json.dumps(p.config.to_dict()),
            str(run_path(outs[k], p)),
            probes,
            probe_eval_size,
        )
        for k, p in todo
    ]
    # A cluster's capacity is not known here (Ray): group there only when asked to.
    workers = getattr(backend, "workers", None)
    if workers is not None or vectorise:
        jobs = group_jobs(jobs, {label: p for label, (_, p) in where.items()}, workers or 1, vectorise)
    if log and any(j.replicates for j in jobs):
        log(
            f"sweep: {sum(len(j.points) for j in jobs if j.replicates)} seed replicates vectorised in "
            f"{sum(bool(j.replicates) for j in jobs)} jobs"
        )
    try:
        backend.run(jobs, on_done)
    finally:
        bar.close()
    out_results = []
    for k, (out, points) in enumerate(zip(outs, all_points, strict=True)):
        results = aggregate(out, points, probes=probes, probe_eval_size=probe_eval_size)
        figs: list[Path] = []
        if figures and not results.empty:
            from icl_circuits.sweeps.phase import write_phase_diagrams

            figs = write_phase_diagrams(out, results, points)
        trained = len(points) - n_done[k]
        out_results.append(SweepResult(out, points, statuses[k], errors[k], results, figs, trained=trained))
    return out_results


def check_ok(result: SweepResult) -> None:
    """Raise a one-line ICLError if any point failed (after everything else was written)."""
    failed = result.failed
    if failed:
        name, err = next(iter(failed.items()))
        raise ICLError(
            f"sweep: {len(failed)} of {len(result.points)} runs failed (first: {name}: {err}); "
            f"see {result.out / INDEX}; rerun the same command to retry them"
        )
