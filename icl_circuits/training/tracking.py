"""Opt-in experiment tracking: the metrics of ``metrics.jsonl`` also sent to W&B or TensorBoard.

``train.logger`` picks the tracker:

* ``none`` (default): only ``metrics.jsonl`` and the checkpoints' ``state.json``.
* ``wandb``: Weights & Biases, **offline** unless ``WANDB_MODE`` says otherwise; files go to
  ``RUN/wandb/`` (upload later with ``wandb sync RUN/wandb/offline-run-*``). The W&B run id is
  derived from the run folder and config, so a resumed run continues the same W&B run.
* ``tensorboard``: ``RUN/tensorboard/`` (``tensorboard --logdir RUN/tensorboard``); needs the
  ``tensorboard`` package (``pip install 'icl-circuits[tensorboard]'``).

Every checkpoint's rows ``{"split", "metric", "value"}`` are logged at that step as scalars
named ``split/metric`` (e.g. ``IC/acc``, ``train/loss``): the same values as ``metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from icl_circuits.config import RunConfig
from icl_circuits.errors import ConfigError

LOGGERS = ("none", "wandb", "tensorboard")
WANDB_DIR = "wandb"
TENSORBOARD_DIR = "tensorboard"


def scalars(rows: list[dict]) -> dict[str, float]:
    """``{"split/metric": value}`` of a checkpoint's metric rows."""
    return {f"{r['split']}/{r['metric']}": float(r["value"]) for r in rows}


class NullLogger:
    """Logs nothing (``train.logger = none``)."""

    def log(self, step: int, rows: list[dict]) -> None:
        """Log a checkpoint's metric rows at ``step``."""

    def close(self) -> None:
        """Flush and release the tracker."""


class WandbLogger(NullLogger):
    """Weights & Biases, offline by default, writing into ``RUN/wandb``."""

    def __init__(self, cfg: RunConfig, run: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.logger: wandb is not installed (pip install 'icl-circuits[wandb]')") from None
        (run / WANDB_DIR).mkdir(exist_ok=True)
        key = f"{Path(run).resolve()}\n{cfg.to_json()}"
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "icl-circuits"),
            name=cfg.name,
            id=hashlib.sha256(key.encode()).hexdigest()[:16],
            resume="allow",
            dir=str(run),
            config=cfg.to_dict(),
            mode=os.environ.get("WANDB_MODE", "offline"),
            # Vectorised seeds keep one W&B run per seed open in one process.
            reinit="create_new",
        )

    def log(self, step: int, rows: list[dict]) -> None:
        self._run.log(scalars(rows), step=step)

    def close(self) -> None:
        self._run.finish()


class TensorBoardLogger(NullLogger):
    """TensorBoard event files in ``RUN/tensorboard``."""

    def __init__(self, cfg: RunConfig, run: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.logger: tensorboard is not installed (pip install 'icl-circuits[tensorboard]')"
            ) from None
        self._writer = SummaryWriter(log_dir=str(run / TENSORBOARD_DIR))

    def log(self, step: int, rows: list[dict]) -> None:
        for name, value in scalars(rows).items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._writer.close()


def check_logger(cfg: RunConfig) -> None:
    """Raise a one-line ConfigError if ``cfg.train.logger``'s library is not installed."""
    import importlib.util

    kind = cfg.train.logger
    module = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(kind)
    if module is not None and importlib.util.find_spec(module) is None:
        raise ConfigError(f"train.logger: {kind} is not installed (pip install 'icl-circuits[{kind}]')")


def open_logger(cfg: RunConfig, run: Path) -> NullLogger:
    """The tracker ``cfg.train.logger`` names, writing into the run folder ``run``."""
    kind = cfg.train.logger
    if kind == "wandb":
        return WandbLogger(cfg, Path(run))
    if kind == "tensorboard":
        return TensorBoardLogger(cfg, Path(run))
    return NullLogger()
