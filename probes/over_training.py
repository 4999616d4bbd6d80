"""Every registered probe at every checkpoint of a run, cached in the run folder.

:func:`analyze_run` returns one tidy DataFrame with columns
``step, condition, split, metric, layer, head_index, value``: the rows of every probe of
:mod:`probes.registry` (or of a selection, ``probes=``), in registration order. The built-in
probes (:mod:`probes.builtin`) give

* ``ablations``: output metrics of every evaluation split (``layer``/``head_index`` are
  ``<NA>``), clean and with each named subcircuit ablated (``condition`` names it): the ICL
  circuit, as many random heads (the control, mean over draws) and the IWL path;
* ``head_scores``: per-head scores on the ICL split (:mod:`probes.scores`).

Results are cached per checkpoint under ``RUN/analysis/`` (or ``cache``) in a file keyed by the
names and versions of the probes that ran, the analysis parameters and the checkpoint's own
weights checksum: a second call reads them back, a new checkpoint costs one checkpoint, a
probe whose version was bumped is recomputed, and two concurrent analyses at worst compute
the same file twice (the first complete write wins; files are never overwritten).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from icl_circuits.data import build_source
from icl_circuits.errors import CheckpointError, ICLError, RunFolderError
from icl_circuits.fileio import write_atomic
from icl_circuits.metrics import eval_sets
from icl_circuits.runs import layout
from icl_circuits.runs.read import BridgeLoader, load_config, load_model
from icl_circuits.runs.store import latest_good_checkpoint, list_checkpoints, read_json
from probes import registry
from probes.circuits import FoundCircuit, find_icl_circuit
from probes.scores import head_scores

#: The layout of a cache file (its columns), not what the probes compute: each probe has a
#: version of its own (:class:`probes.registry.Probe`), and the cache key derives from them.
#: Bump only when ``COLUMNS`` or the key's recipe changes. (3: key from the probes' versions;
#: the cache folders of format 2 were ``v2-{key}`` and are never read.)
CACHE_FORMAT = 3
COLUMNS = ["step", "condition", "split", "metric", "layer", "head_index", "value"]


@dataclasses.dataclass(frozen=True)
class AnalysisParams:
    """What an analysis computes; part of the cache key."""

    eval_size: int = 512
    ablation: str = "mean"
    prev_token_heads: tuple[tuple[int, int], ...] = ()
    induction_heads: tuple[tuple[int, int], ...] = ()
    n_random: int = 3
    #: The probes to run, by name (None: every registered probe that computes).
    probes: tuple[str, ...] | None = None

    def selected(self) -> list[registry.Probe]:
        """The registered probes this analysis runs (those that compute), in registration order."""
        return [p for p in registry.select(self.probes) if p.compute is not None]

    def key(self) -> str:
        """The cache key: these parameters and the names and versions of the probes that run."""
        fields = dataclasses.asdict(self)
        fields["probes"] = [[p.name, p.version] for p in self.selected()]
        blob = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _tidy(df: pd.DataFrame, step: int, probe: registry.Probe) -> pd.DataFrame:
    """A probe's rows with every column of ``COLUMNS`` (``condition`` defaults to ``clean``)."""
    missing = {"split", "metric", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"probe {probe.name}: its table lacks column(s) {sorted(missing)}")
    unknown = set(df["metric"]) - set(probe.metrics)
    if unknown:
        raise ValueError(f"probe {probe.name}: metric(s) {sorted(unknown)} not among its declared metrics")
    df = df.copy()
    df["step"] = step
    if "condition" not in df:
        df["condition"] = "clean"
    for col in ("layer", "head_index"):
        if col not in df:
            df[col] = pd.NA
    return df[COLUMNS]


def analyze_checkpoint(model, source, evals: dict, params: AnalysisParams, step: int = 0) -> pd.DataFrame:
    """Every probe of ``params`` on one model (a bridge in eval mode); pure apart from compute.

    Each probe's ``compute(model, source, evals, params, step)`` rows, in registration order,
    with the columns of ``COLUMNS``.
    """
    frames = [_tidy(p.compute(model, source, evals, params, step), step, p) for p in params.selected()]
    out = pd.concat(frames, ignore_index=True)
    out["layer"] = out["layer"].astype("Int64")
    out["head_index"] = out["head_index"].astype("Int64")
    return out


def _cache_path(run: Path, step: int, params: AnalysisParams) -> Path:
    manifest = read_json(layout.checkpoint_dir(run, step) / layout.MANIFEST)
    try:
        weights = manifest["files"][layout.MODEL]["sha256"][:12]
    except (KeyError, TypeError):
        raise CheckpointError(f"{layout.checkpoint_dir(run, step) / layout.MANIFEST}: corrupt manifest") from None
    return run / layout.ANALYSIS / f"probes-{params.key()}" / f"{layout.step_dirname(step)}-{weights}.csv"


def _read_cached(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None  # a damaged cache file is recomputed, never trusted
    if list(df.columns) != COLUMNS:
        return None
    df["layer"] = df["layer"].astype("Int64")
    df["head_index"] = df["head_index"].astype("Int64")
    return df


def resolve_circuit(run: Path, source, evals, circuit: FoundCircuit | None) -> FoundCircuit:
    """The user's circuit, or the one found from the scores at the run's last good checkpoint."""
    if circuit is not None:
        return circuit
    last = latest_good_checkpoint(run)
    if last is None:
        raise CheckpointError(f"{run / layout.CHECKPOINTS}: no readable checkpoint")
    return find_icl_circuit(head_scores(load_model(run, last), evals[source.icl_split]))


def resolve_steps(run: Path, steps: Sequence[int] | None) -> list[int]:
    """``steps`` (default: every checkpoint of ``run``), each checked to have a checkpoint."""
    available = list_checkpoints(run)
    if not available:
        raise RunFolderError(f"{run / layout.CHECKPOINTS}: no checkpoints to analyse")
    steps = available if steps is None else list(steps)
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ICLError(f"steps: no checkpoint at step {missing[0]} in {run} (have {available[0]}..{available[-1]})")
    return steps


def analyze_run(
    run: Path | str,
    steps: list[int] | None = None,
    circuit: FoundCircuit | None = None,
    eval_size: int = 512,
    ablation: str = "mean",
    progress: bool = True,
    cache: Path | str | None = None,
    probes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Evaluate every checkpoint (or ``steps``) of ``run`` with every registered probe (or ``probes``).

    A checkpoint that fails its checksums is skipped (``df.attrs["skipped"]`` lists
    ``(step, reason)``); only if none can be read is that an error.

    Args:
        run: run folder.
        steps: checkpoint steps to analyse (default: all).
        circuit: the ICL circuit to ablate; default: found from the last good checkpoint's
            scores with :func:`probes.circuits.find_icl_circuit` (possibly no circuit).
        eval_size: sequences per evaluation split.
        ablation: ``mean``, ``zero`` or ``resample``.
        progress: tqdm bar over the checkpoints not yet cached; its rate (and ETA) is the
            average after the first one, whose warm-up would otherwise inflate the ETA.
        cache: folder of the per-checkpoint cache (default ``RUN/analysis``), e.g. elsewhere
            for a read-only run.
        probes: names of the probes to run (default: every registered one; see
            :mod:`probes.registry`); the table holds their rows in registration order.

    Returns:
        Tidy DataFrame with columns ``step, condition, split, metric, layer, head_index, value``;
        ``attrs``: ``circuit``, ``params``, ``skipped``.
    """
    run = Path(run)
    cfg = load_config(run)
    steps = resolve_steps(run, steps)
    if ablation not in ("mean", "zero", "resample"):
        raise ICLError(f"ablation: expected mean, zero or resample, got {ablation!r}")
    chosen = tuple(p.name for p in registry.select(probes) if p.compute is not None)
    if not chosen:
        raise ICLError(f"probes: none of {list(probes or [])} computes anything at a checkpoint")
    source = build_source(cfg.data, cfg.seed, "cpu")
    evals = eval_sets(source, eval_size)
    found = resolve_circuit(run, source, evals, circuit)
    params = AnalysisParams(eval_size, ablation, found.prev_token_heads, found.induction_heads, probes=chosen)
    cache_root = Path(cache) if cache is not None else run / layout.ANALYSIS
    frames: dict[int, pd.DataFrame] = {}
    skipped: list[tuple[int, str]] = []
    todo = []
    for step in steps:
        try:
            path = cache_root / _cache_path(run, step, params).relative_to(run / layout.ANALYSIS)
        except (CheckpointError, RunFolderError) as err:
            skipped.append((step, str(err)))
            continue
        df = _read_cached(path)
        if df is None:
            todo.append((step, path))
        else:
            frames[step] = df

    loader = BridgeLoader(run)  # one bridge, refilled at each checkpoint

    def compute(step: int, path: Path) -> None:
        try:
            model = loader(step)
        except CheckpointError as err:
            skipped.append((step, str(err).split("; nearest good")[0]))
            return
        df = analyze_checkpoint(model, source, evals, params, step)
        write_cache(path, df)
        frames[step] = df

    if todo:
        desc = f"analyse ({len(frames)} cached)" if frames else "analyse"
        compute(*todo[0])  # warm-up outside the bar: its rate is then the steady one
        with tqdm(total=len(todo), initial=1, smoothing=0, disable=not progress, desc=desc, unit="ckpt") as bar:
            for step, path in todo[1:]:
                compute(step, path)
                bar.update(1)
    if not frames:
        raise CheckpointError(f"{run / layout.CHECKPOINTS}: no readable checkpoint ({skipped[0][1]})")
    out = pd.concat([frames[s] for s in sorted(frames)], ignore_index=True)
    out.attrs["circuit"] = found
    out.attrs["params"] = params
    out.attrs["skipped"] = sorted(skipped)
    return out


def write_cache(path: Path, df: pd.DataFrame) -> None:
    """Write an analysis cache table once, atomically; a concurrent writer that got there first wins."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(
            f"{path.parent}: could not create the analysis cache ({err.strerror}); use --out"
        ) from None
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    try:
        write_atomic(path, buf.getvalue(), overwrite=False)
    except RunFolderError:
        if not path.exists():
            raise  # a real write failure; "already exists" means another analysis won
