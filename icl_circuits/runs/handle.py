"""A handle on one run folder: its config, data and checkpoints, each read once.

::

    run = Run("checkpoints/demo")
    run.config                    # the RunConfig (config.json, read once)
    run.source                    # its data source (evaluation splits, n_labels, ...)
    run.checkpoints               # committed checkpoint steps, ascending
    model = run.load_model()      # a TransformerBridge at the latest good checkpoint
    for step, model in run.iter_checkpoints(): ...
    run.metrics()                 # tidy: step, split, metric, value

A ``Run`` is an ``os.PathLike``: every function that takes a run folder's path takes a ``Run``
too (``Path(run)``, ``run / "metrics.jsonl"``, and the folder's ``Path`` methods: ``run.exists()``). What it reads is cached on the handle; after
training more into the folder, :meth:`refresh` (or a new handle) sees the new checkpoints.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.data.source import DataSource
from icl_circuits.errors import CheckpointError, RunFolderError
from icl_circuits.runs import layout, read
from icl_circuits.runs.store import latest_good_checkpoint, list_checkpoints


class Run(os.PathLike):
    """A run folder (``RUN/config.json``, ``RUN/checkpoints/step_*``) opened for reading.

    Args:
        path: the run folder (or another ``Run``).

    Raises:
        RunFolderError: ``path`` is not a folder.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunFolderError(f"{self.path}: no such run folder")

    # ------------------------------------------------------------------ path-like
    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.path / other

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Run | Path | str):
            return self.path == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    def __getattr__(self, name: str) -> Any:
        # The folder's Path methods and attributes (exists, rglob, parent, name, ...): code that
        # treated a run as a Path keeps working with a Run.
        path = self.__dict__.get("path")
        if path is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(path, name)

    # ------------------------------------------------------------------ read once
    @functools.cached_property
    def config(self) -> RunConfig:
        """The run's config (``config.json``; older formats migrated)."""
        return read.load_config(self.path)

    @functools.cached_property
    def source(self) -> DataSource:
        """The run's data source on the CPU: ``splits``, ``n_labels``, ``icl_split``, ``iwl_split``."""
        cfg = self.config
        return build_source(cfg.data, cfg.seed, "cpu")

    @functools.cached_property
    def checkpoints(self) -> list[int]:
        """Steps of the committed checkpoints (a manifest written), ascending; not verified."""
        return [
            s for s in list_checkpoints(self.path) if (layout.checkpoint_dir(self.path, s) / layout.MANIFEST).exists()
        ]

    @functools.cached_property
    def last_step(self) -> int | None:
        """The newest checkpoint that passes its checksums, or None."""
        return latest_good_checkpoint(self.path)

    def refresh(self) -> Run:
        """Forget what was read (after more training into the folder); returns the handle."""
        for name in ("config", "source", "checkpoints", "last_step"):
            self.__dict__.pop(name, None)
        return self

    # ------------------------------------------------------------------ models and metrics
    def load_model(self, step: int | None = None, device: str = "cpu") -> Any:
        """Checkpoint ``step`` (default: the latest good one) as a TransformerLens bridge.

        Raises:
            CheckpointError: no readable checkpoint, or ``step``'s fails its checksums.
        """
        if step is None:
            step = self.last_step
            if step is None:
                raise CheckpointError(f"{self.path / layout.CHECKPOINTS}: no readable checkpoint")
        return read.bridge_from_checkpoint(self.path, self.config, step, device)

    def iter_checkpoints(
        self, steps: list[int] | None = None, device: str = "cpu", skip_corrupt: bool = True
    ) -> Iterator[tuple[int, Any]]:
        """``(step, bridge)`` for every checkpoint (or ``steps``), ascending; one model in memory at a time.

        Args:
            steps: checkpoint steps (default: every committed one).
            device: where the models go.
            skip_corrupt: skip a checkpoint that fails its checksums (else raise CheckpointError).
        """
        for step in self.checkpoints if steps is None else steps:
            try:
                model = self.load_model(step, device)
            except CheckpointError:
                if not skip_corrupt:
                    raise
                continue
            yield step, model

    def metrics(self) -> pd.DataFrame:
        """Tidy metrics logged at every committed checkpoint: columns step, split, metric, value."""
        return read.read_metrics(self.path)
