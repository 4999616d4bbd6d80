"""What every training backend does with a run folder: prepare, resume, checkpoint.

These are the steps of :func:`icl_circuits.training.trainer.train_loop` that do not
depend on how a step is computed: checking or creating the folder, finding the checkpoint to
resume from, evaluating and saving a checkpoint, and the one-line errors for a stopped run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from icl_circuits.config import RunConfig
from icl_circuits.data.batch import Batch
from icl_circuits.errors import DivergedError, RunFolderError
from icl_circuits.fileio import write_atomic
from icl_circuits.metrics import evaluate
from icl_circuits.runs import layout
from icl_circuits.runs.read import config_json, load_config
from icl_circuits.runs.store import (
    append_lines,
    flatten_optimizer,
    latest_good_checkpoint,
    list_checkpoints,
    read_json,
    save_checkpoint,
)


def resolve_device(name: str) -> torch.device:
    """``train.device`` as a torch device (``auto``: CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunFolderError(f"train.device: {name} requested but no CUDA device is available")
    return torch.device(name)


@contextlib.contextmanager
def torch_threads(n: int):
    """Use ``n`` torch CPU threads inside the block (0: leave torch's choice); restored after."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(cfg: RunConfig, device: torch.device) -> dict:
    """``provenance.json``: package versions, git commit, host, seed, device, start time."""
    import transformer_lens

    from icl_circuits import __version__

    return {
        "icl_circuits": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "transformer_lens": getattr(transformer_lens, "__version__", None),
        "python": platform.python_version(),
        "host": platform.node(),
        "seed": cfg.seed,
        "device": str(device),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    """``key: stored X, given Y`` for the first differing (nested) key of two config dicts."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            if va != vb:
                return first_difference(va, vb, f"{prefix}{key}.")
        elif va != vb:
            return f"{prefix}{key}: stored {va!r}, given {vb!r}"
    return "no difference"


def prepare_folder(cfg: RunConfig, run: Path, device: torch.device) -> None:
    """Create the run folder, or check that an existing one holds this very config."""
    if (run / layout.CONFIG).exists():
        stored = load_config(run)
        if stored != cfg:
            diff = first_difference(stored.to_dict(), cfg.to_dict())
            raise RunFolderError(
                f"{run / layout.CONFIG}: this run folder holds a different config ({diff}); "
                "resume with the same config or choose another output folder"
            )
        if stored.train.l2 > 0 and read_json(run / layout.CONFIG).get("format_version") == 1:
            raise RunFolderError(
                f"{run / layout.CONFIG}: run-folder format 1 trained train.l2 as l2 * sum ||p||^2; format 2's "
                "train.l2 is icl-dynamics' l2 * sum ||p||, so this run cannot be resumed (its checkpoints "
                "still load for analysis); train it again in a new folder"
            )
        return
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"{run}: exists and is not a folder; choose another output folder (--out)")
    if run.exists() and any(p.name != layout.LOCK for p in run.iterdir()):
        raise RunFolderError(f"{run}: exists, is not empty and has no {layout.CONFIG}; not a run folder")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(
            f"{run}: cannot create the run folder ({err.strerror or err}); choose another (--out)"
        ) from None
    text = json.dumps(provenance(cfg, device), indent=2, allow_nan=False)
    write_atomic(run / layout.PROVENANCE, text, overwrite=False)
    # config.json last: its presence marks a usable run folder.
    text = json.dumps(config_json(cfg), indent=2, sort_keys=True, allow_nan=False)
    write_atomic(run / layout.CONFIG, text, overwrite=False)


def is_complete(run: Path, steps: int) -> bool:
    """Whether the run's last checkpoint is its final step and verifies."""
    done = list_checkpoints(run)
    return bool(done) and done[-1] == steps and latest_good_checkpoint(run) == steps


def resume_step(runs: Sequence[Path]) -> int | None:
    """The latest good checkpoint all ``runs`` share (None: fresh folders).

    Raises:
        RunFolderError: a folder has a corrupt checkpoint after its last good one, or the
            folders stop at different checkpoints.
    """
    starts = []
    for run in runs:
        start = latest_good_checkpoint(run)
        bad = [s for s in list_checkpoints(run) if start is None or s > start]
        if bad:
            raise RunFolderError(
                f"{layout.checkpoint_dir(run, bad[0])}: corrupt checkpoint after the last good one "
                f"(step {start}); move it aside to resume from step {start}"
            )
        starts.append(start)
    if len(set(starts)) > 1:
        found = ", ".join(f"{run}: {s}" for run, s in zip(runs, starts, strict=True))
        raise RunFolderError(
            f"train_ensemble: the run folders stop at different checkpoints ({found}); resume each with train() instead"
        )
    return starts[0]


def diverged(what: str, value: float, step: int, run: Path) -> DivergedError:
    """The error for a loss or metric that became NaN or infinite by ``step``."""
    steps = list_checkpoints(run)
    kept = f"its last good checkpoint, step {steps[-1]}, is kept" if steps else "no checkpoint was saved"
    return DivergedError(
        f"train: {what} became {value} by step {step}; training stopped and {kept} (nothing after it "
        "was written); lower train.lr or set train.grad_clip, in a new run folder"
    )


def stop_rule(cfg: RunConfig, icl_split: str, iwl_split: str) -> tuple[str, float] | None:
    """``(split, threshold)`` of ``train.stop_above`` (None: no early stop)."""
    tc = cfg.train
    if tc.stop_above <= 0:
        return None
    return (icl_split if tc.stop_metric == "ICL" else iwl_split), tc.stop_above


def stop_record(rows: list[dict], rule: tuple[str, float] | None) -> dict | None:
    """What ``state.json`` records when ``rows`` (a checkpoint's metrics) pass ``rule``, else None."""
    if rule is None:
        return None
    split, above = rule
    value = next((r["value"] for r in rows if r["split"] == split and r["metric"] == "acc"), None)
    if value is None:
        raise RunFolderError(f"train.stop_metric: the evaluation has no {split} accuracy to stop on")
    return {"split": split, "metric": "acc", "value": value, "above": above} if value > above else None


def checkpoint(
    run: Path,
    step: int,
    model: torch.nn.Module,
    optim_state: dict,
    evals: dict[str, Batch],
    n_labels: int,
    train_loss: float,
    device: torch.device,
    stop: tuple[str, float] | None = None,
    evaluated: list[dict] | None = None,
) -> list[dict]:
    """Evaluate ``model``, save it with ``optim_state`` (an optimiser ``state_dict()``), log metrics.

    Takes the optimiser's state dict rather than the optimiser so that a backend training
    several seeds at once can save each seed's slice of a stacked optimiser.

    Args:
        stop: the early-stop rule (:func:`stop_rule`); when this checkpoint passes it, its
            ``state.json`` records ``stopped`` (:func:`stop_record`), atomically with the
            checkpoint, so a crash right after still leaves a stopped run.
        evaluated: ``model``'s evaluation rows, already computed as ``evaluate(model, evals,
            n_labels)`` makes them (a backend evaluating its members together); None:
            evaluated here.

    Returns:
        The checkpoint's metric rows ``{"split", "metric", "value"}`` (training loss first).

    Raises:
        DivergedError: a metric is NaN or infinite (nothing is saved).
    """
    rows = [{"split": "train", "metric": "loss", "value": train_loss}]
    rows += evaluate(model, evals, n_labels) if evaluated is None else evaluated
    bad = next((r for r in rows if not math.isfinite(r["value"])), None)
    if bad is not None:
        raise diverged(f"{bad['split']} {bad['metric']}", bad["value"], step, run)
    optim_tensors, optim_meta = flatten_optimizer(optim_state)
    rng = {"cpu": torch.get_rng_state()}
    state = {"step": step, "optim": optim_meta, "metrics": rows, "device": str(device)}
    stopped = stop_record(rows, stop)
    if stopped is not None:
        state["stopped"] = stopped
    save_checkpoint(run, step, model.state_dict(), optim_tensors, rng, state)
    append_lines(run / layout.METRICS, [json.dumps({"step": step, **row}, allow_nan=False) for row in rows])
    return rows


def headline(rows: list[dict], icl_split: str, iwl_split: str) -> dict[str, float]:
    """Training loss and ICL / IWL accuracy of a checkpoint's rows (NaN where absent)."""
    get = {(r["split"], r["metric"]): r["value"] for r in rows}
    return {
        "loss": get.get(("train", "loss"), float("nan")),
        "ICL": get.get((icl_split, "acc"), float("nan")),
        "IWL": get.get((iwl_split, "acc"), float("nan")),
    }
