"""The full probe suite at every checkpoint of a run, cached in the run folder.

:func:`analyze_run` returns one tidy DataFrame with columns
``step, condition, split, metric, layer, head, value``:

* output metrics of every evaluation split (``layer``/``head`` are ``<NA>``),
* per-head scores on the ICL split (:mod:`probes.scores`),
* every split's metrics with each named subcircuit ablated (``condition`` names it).

Results are cached per checkpoint under ``RUN/analysis/`` in a file keyed by the analysis
version, the analysis parameters and the checkpoint's own weights checksum: a second call
reads them back, a new checkpoint costs one checkpoint, and two concurrent analyses at worst
compute the same file twice (the first complete write wins; files are never overwritten).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from icl_circuits.data import build_source
from icl_circuits.errors import ICLError, RunFolderError
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, load_model
from icl_circuits.runs.store import list_checkpoints, read_json, write_new_file
from icl_circuits.training.evaluate import eval_sets
from probes.circuits import FoundCircuit, find_icl_circuit
from probes.scores import head_scores
from probes.subcircuits import icl_circuit, iwl_path, subcircuit_effects

#: Bump whenever what an analysis computes changes: old cache files are then ignored.
ANALYSIS_VERSION = 1
COLUMNS = ["step", "condition", "split", "metric", "layer", "head", "value"]


@dataclasses.dataclass(frozen=True)
class AnalysisParams:
    """What an analysis computes; part of the cache key."""

    eval_size: int = 512
    ablation: str = "mean"
    prev_token_heads: tuple[tuple[int, int], ...] = ()
    induction_heads: tuple[tuple[int, int], ...] = ()

    def key(self) -> str:
        blob = json.dumps({"version": ANALYSIS_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _tidy(df: pd.DataFrame, step: int, condition: str | None = None) -> pd.DataFrame:
    df = df.copy()
    df["step"] = step
    if condition is not None:
        df["condition"] = condition
    for col in ("layer", "head"):
        if col not in df:
            df[col] = pd.NA
    return df[COLUMNS]


def analyze_checkpoint(model, source, evals: dict, params: AnalysisParams, step: int = 0) -> pd.DataFrame:
    """The full suite on one model (a bridge in eval mode); pure apart from compute."""
    circuits = [icl_circuit(params.prev_token_heads, params.induction_heads), iwl_path(model)]
    # The clean rows of the effects table are the output metrics of every split.
    effects = subcircuit_effects(
        model, evals, source.n_labels, circuits, method=params.ablation, reference=evals[source.icl_split]
    )
    scores = head_scores(model, evals[source.icl_split])
    scores["split"] = source.icl_split
    frames = [_tidy(effects, step), _tidy(scores, step, "clean")]
    out = pd.concat(frames, ignore_index=True)
    out["layer"] = out["layer"].astype("Int64")
    out["head"] = out["head"].astype("Int64")
    return out


def _cache_path(run: Path, step: int, params: AnalysisParams) -> Path:
    manifest = read_json(layout.checkpoint_dir(run, step) / layout.MANIFEST)
    weights = manifest["files"][layout.MODEL]["sha256"][:12]
    return run / layout.ANALYSIS / f"v{ANALYSIS_VERSION}-{params.key()}" / f"{layout.step_dirname(step)}-{weights}.csv"


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
    df["head"] = df["head"].astype("Int64")
    return df


def resolve_circuit(run: Path, source, evals, circuit: FoundCircuit | None) -> FoundCircuit:
    """The user's circuit, or the one found from the scores at the run's last checkpoint."""
    if circuit is not None:
        return circuit
    steps = list_checkpoints(run)
    model = load_model(run, steps[-1])
    return find_icl_circuit(head_scores(model, evals[source.icl_split]))


def analyze_run(
    run: Path | str,
    steps: list[int] | None = None,
    circuit: FoundCircuit | None = None,
    eval_size: int = 512,
    ablation: str = "mean",
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate every checkpoint (or ``steps``) of ``run`` with the full probe suite.

    Args:
        run: run folder.
        steps: checkpoint steps to analyse (default: all).
        circuit: the ICL circuit to ablate; default: found from the last checkpoint's scores.
        eval_size: sequences per evaluation split.
        ablation: ``mean``, ``zero`` or ``resample``.
        progress: tqdm bar over checkpoints.

    Returns:
        Tidy DataFrame with columns ``step, condition, split, metric, layer, head, value``.
    """
    run = Path(run)
    cfg = load_config(run)
    available = list_checkpoints(run)
    if not available:
        raise RunFolderError(f"{run / layout.CHECKPOINTS}: no checkpoints to analyse")
    steps = available if steps is None else list(steps)
    missing = sorted(set(steps) - set(available))
    if missing:
        raise ICLError(f"steps: no checkpoint at step {missing[0]} in {run} (have {available[0]}..{available[-1]})")
    if ablation not in ("mean", "zero", "resample"):
        raise ICLError(f"ablation: expected mean, zero or resample, got {ablation!r}")
    source = build_source(cfg.data, cfg.seed, "cpu")
    evals = eval_sets(source, eval_size)
    found = resolve_circuit(run, source, evals, circuit)
    params = AnalysisParams(eval_size, ablation, found.prev_token_heads, found.induction_heads)
    frames = []
    for step in tqdm(steps, disable=not progress, desc="analyse", unit="ckpt"):
        path = _cache_path(run, step, params)
        df = _read_cached(path)
        if df is None:
            df = analyze_checkpoint(load_model(run, step), source, evals, params, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.StringIO()
            df.to_csv(buf, index=False)
            try:
                write_new_file(path, buf.getvalue().encode())
            except RunFolderError:
                if not path.exists():
                    raise  # a real write failure; "already exists" means another analysis won
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["circuit"] = found
    out.attrs["params"] = params
    return out
