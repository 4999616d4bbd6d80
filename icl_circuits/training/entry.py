"""The one public way to train: :func:`train` (one run, a config's seed replicates, or a group).

::

    import icl_circuits as ic

    run = ic.train(ic.presets.demo(), "checkpoints/demo")                  # a Run
    runs = ic.train(cfg, "checkpoints/demo-seeds", seeds=range(4))        # demo-seeds/seed=0 ...
    runs = ic.train([cfg_a, cfg_b], ["runs/a", "runs/b"], vectorise=True)  # one process

Several runs go through :func:`icl_circuits.training.replicates.train_group` (vectorised where
:func:`~icl_circuits.training.replicates.vectorise_pays` says it pays, else one after another);
one run through :func:`icl_circuits.training.trainer.train_loop` with its single-model backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from icl_circuits.config import RunConfig
from icl_circuits.errors import ConfigError, RunFolderError
from icl_circuits.runs.handle import Run
from icl_circuits.runs.layout import seed_dirname
from icl_circuits.training.replicates import seed_configs, train_group
from icl_circuits.training.trainer import SingleModel, train_loop


def train(
    cfg: RunConfig | Sequence[RunConfig],
    run: str | os.PathLike | Sequence[str | os.PathLike],
    progress: bool = True,
    stop_after: int | None = None,
    prefetch: bool | None = None,
    *,
    seeds: Sequence[int] | None = None,
    vectorise: bool | None = None,
) -> Run | list[Run]:
    """Train ``cfg`` into ``run``, resuming what is already there; returns the run(s) as :class:`Run`.

    A run is a pure function of its config, so re-running this on a stopped or killed run
    continues from its latest good checkpoint and ends as an uninterrupted run would.

    Args:
        cfg: a config; or a list of configs sharing ``model``, ``train`` and the data's shape
            (one run folder each, e.g. grid points that differ in data settings).
        run: the run folder. With ``seeds``: one folder holding ``seed=S`` per seed, or a list
            of folders, one per seed. With a list of configs: a list of folders, one each.
        progress: a tqdm bar with the live loss and ICL / IWL accuracy.
        stop_after: stop (cleanly, as a crash would) once this step is checkpointed.
        prefetch: make the next step's batch in a background thread: None (default) when a
            batch costs over 5% of a step, True always, False never; same result, bitwise.
        seeds: train ``cfg`` once per seed (its ``seed`` replaced), one run folder each.
        vectorise: several runs: None (default) lets the measured rule
            (:func:`~icl_circuits.training.replicates.vectorise_pays`) decide, True trains them
            in one vectorised process, False one after another.

    Returns:
        A :class:`Run` for one config without ``seeds``; else a list of them, in order.

    Raises:
        ConfigError: configs that cannot train together; RunFolderError: folders that do not
        match the configs; DivergedError: the loss became NaN or infinite.
    """
    one_folder = isinstance(run, str | os.PathLike)
    if seeds is not None:
        if not isinstance(cfg, RunConfig):
            raise ConfigError("train: seeds= takes one config, not a list")
        seeds = [int(s) for s in seeds]
        runs = [Path(run) / seed_dirname(s) for s in seeds] if one_folder else list(run)
        cfgs = seed_configs(cfg, seeds, len(runs))
    elif isinstance(cfg, RunConfig):
        if not one_folder:
            raise RunFolderError("train: one config trains into one run folder (several: give seeds=)")
        train_loop([cfg], [run], SingleModel, progress=progress, stop_after=stop_after, prefetch=prefetch)
        return Run(run)
    else:
        cfgs = list(cfg)
        if one_folder:
            raise RunFolderError(f"train: {len(cfgs)} configs need a list of {len(cfgs)} run folders")
        runs = list(run)
    done = train_group(cfgs, runs, progress=progress, vectorise=vectorise, stop_after=stop_after, prefetch=prefetch)
    return [Run(r) for r in done]
