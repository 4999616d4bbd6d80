"""Reading run folders: config, metrics, checkpoints as models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.data.source import DataSource
from icl_circuits.errors import CheckpointError, ConfigError, RunFolderError
from icl_circuits.models.build import build_native, to_bridge
from icl_circuits.runs import layout
from icl_circuits.runs.store import latest_good_checkpoint, list_checkpoints, load_checkpoint, read_json


def load_config(run: Path) -> RunConfig:
    """The RunConfig stored in ``run``; a one-line error if missing or incompatible."""
    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"{run}: no such run folder")
    raw = read_json(run / layout.CONFIG)
    version = raw.pop("format_version", None) if isinstance(raw, dict) else None
    if version not in layout.READABLE_FORMATS:
        raise RunFolderError(
            f"{run / layout.CONFIG}: run-folder format {version!r}, this icl-circuits reads "
            f"formats {', '.join(map(str, layout.READABLE_FORMATS))}"
        )
    # Format 1 used the papers' letters for data fields (K, L, N, ...): from_dict migrates them
    # (each family's RENAMED), so such a folder loads, resumes and analyses as before.
    try:
        return RunConfig.from_dict(raw)
    except ConfigError as err:
        raise RunFolderError(f"{run / layout.CONFIG}: {err}") from None


def config_json(cfg: RunConfig) -> dict:
    """What config.json holds: the config plus the format version."""
    return {"format_version": layout.FORMAT_VERSION, **cfg.to_dict()}


def read_metrics(run: Path) -> pd.DataFrame:
    """Tidy metrics of every committed checkpoint: columns step, split, metric, value.

    Read from each checkpoint's own ``state.json`` (the source of truth), so the table is
    complete even if the run was killed between a checkpoint and its ``metrics.jsonl`` append.
    """
    rows = []
    for step in list_checkpoints(run):
        path = layout.checkpoint_dir(run, step) / layout.STATE
        if not (layout.checkpoint_dir(run, step) / layout.MANIFEST).exists():
            continue
        for row in read_json(path).get("metrics", []):
            rows.append({"step": step, **row})
    return pd.DataFrame(rows, columns=["step", "split", "metric", "value"])


def model_shape(cfg: RunConfig, source: DataSource | None = None) -> dict:
    """The model's data-given shape (input width, labels, tokens), from the config alone.

    ``source`` is accepted for older callers and ignored: building one (for Omniglot, loading
    the image pack) is not needed to know the shape.
    """
    return cfg.data.model_shape()


def load_native(run: Path, step: int | None = None, device: str = "cpu") -> torch.nn.Module:
    """The plain native model of checkpoint ``step`` (default: the latest good one)."""
    run = Path(run)
    cfg = load_config(run)
    if step is None:
        step = latest_good_checkpoint(run)
        if step is None:
            raise CheckpointError(f"{run / layout.CHECKPOINTS}: no readable checkpoint")
    return native_from_checkpoint(run, cfg, step, device)


def native_from_checkpoint(
    run: Path, cfg: RunConfig, step: int, device: str = "cpu", into: torch.nn.Module | None = None
) -> torch.nn.Module:
    """Checkpoint ``step`` of ``run`` (whose config is ``cfg``) as the plain native model, verified.

    ``into``: a native model of ``cfg`` to load the weights into (none is built then).
    """
    ckpt = load_checkpoint(run, step)
    model = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg)) if into is None else into
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{layout.checkpoint_dir(run, step) / layout.MODEL}: does not match the model in "
            f"{run / layout.CONFIG} ({first})"
        ) from None
    return model.to(device).eval()


def bridge_from_checkpoint(run: Path, cfg: RunConfig, step: int, device: str = "cpu"):
    """Checkpoint ``step`` of ``run`` (whose config is ``cfg``) as a TransformerLens bridge."""
    return to_bridge(native_from_checkpoint(run, cfg, step, device), copy_module=False)


def load_model(run: Path, step: int | None = None, device: str = "cpu"):
    """Checkpoint ``step`` as a TransformerLens bridge (``run_with_cache``, hooks, patching)."""
    return to_bridge(load_native(run, step, device), copy_module=False)


class BridgeLoader:
    """Checkpoints of one run as one TransformerLens bridge, built once and refilled.

    Building a bridge costs more than a small model's forward; a loop over checkpoints
    (:func:`probes.over_training.analyze_run`) calls this instead of :func:`load_model`.
    Each call verifies the checkpoint as :func:`load_model` does (the same errors), loads it
    into a plain native model and copies every tensor of its state dict into the bridge's
    own (the bridge wraps its native model's modules in place, so the tensors are shared).
    The bridge returned is the same object every call: it holds the latest checkpoint.

    Args:
        run: run folder.
        device: where the model goes.
    """

    def __init__(self, run: Path, device: str = "cpu") -> None:
        self.run, self.device = Path(run), device
        self.cfg = load_config(self.run)
        self.bridge = None
        self._native: torch.nn.Module | None = None
        self._tensors: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, step: int):
        """Checkpoint ``step`` in the bridge (raises CheckpointError as :func:`load_model`)."""
        if self.bridge is None:
            native = native_from_checkpoint(self.run, self.cfg, step, self.device)
            self._tensors = native.state_dict(keep_vars=True)  # the bridge's tensors, once wrapped
            self.bridge = to_bridge(native, copy_module=False)
            self._native = build_native(self.cfg.model, seed=self.cfg.seed, **model_shape(self.cfg)).to(self.device)
            return self.bridge
        state = native_from_checkpoint(self.run, self.cfg, step, self.device, into=self._native).state_dict()
        for name, tensor in self._tensors.items():
            tensor.copy_(state[name])
        return self.bridge


def load_source(run: Path) -> DataSource:
    """The run's data source (its evaluation splits, ``n_labels``, ``icl_split``...), on the CPU."""
    cfg = load_config(Path(run))
    return build_source(cfg.data, cfg.seed, "cpu")


def iter_checkpoints(
    run: Path, steps: list[int] | None = None, device: str = "cpu", skip_corrupt: bool = True
) -> Iterator[tuple[int, Any]]:
    """``(step, bridge)`` for every checkpoint of ``run`` (or ``steps``), ascending.

    One model at a time is loaded, so memory stays flat however many checkpoints there are.

    Args:
        run: run folder.
        steps: checkpoint steps (default: every checkpoint).
        device: where the models go.
        skip_corrupt: skip a checkpoint that fails its checksums (else raise CheckpointError).
    """
    run = Path(run)
    for step in list_checkpoints(run) if steps is None else steps:
        try:
            model = load_model(run, step, device)
        except CheckpointError:
            if not skip_corrupt:
                raise
            continue
        yield step, model
