"""Forks of trained runs from a checkpoint, with interventions during training, trained in parallel.

A :class:`Fork` names a run folder, the checkpoint it continues from, the config with its
interventions and the step it is trained to. :func:`train_forks` makes the fork folders
(:func:`icl_circuits.training.interventions.fork_run`) and trains them in a pool of worker
processes, one torch thread each, as a sweep trains its runs; a fork already at its horizon
is not trained again, and one stopped early resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from icl_circuits.config import RunConfig
from icl_circuits.runs.store import list_checkpoints


@dataclasses.dataclass(frozen=True)
class Fork:
    """One fork: ``cfg`` continues ``base`` from its checkpoint ``step`` in ``folder`` up to ``end``.

    Attributes:
        name: the test it belongs to (``block``, ``freeze-control`` ...).
        base: the plain run's folder.
        step: the checkpoint it starts from.
        cfg: the base run's config with the fork's interventions.
        folder: the fork's run folder.
        end: the checkpoint step it is trained to (None: the run's end).
    """

    name: str
    base: Path
    step: int
    cfg: RunConfig
    folder: Path
    end: int | None = None

    @property
    def last(self) -> int:
        """The step it is trained to."""
        return self.end or self.cfg.train.steps

    def done(self) -> bool:
        return self.folder.exists() and list_checkpoints(self.folder)[-1] >= self.last


def _train(fork: Fork) -> str:
    import torch

    from icl_circuits.training import train

    torch.set_num_threads(1)
    train(fork.cfg, fork.folder, progress=False, stop_after=fork.end)
    return fork.name


def train_forks(forks: list[Fork], workers: int | None = None) -> None:
    """Make and train every fork not yet at its end, ``workers`` at a time (default: the cores)."""
    from icl_circuits.sweeps.backends import default_workers, mp_context
    from icl_circuits.training.interventions import fork_run

    todo = []
    for fork in forks:
        if not fork.folder.exists():
            fork_run(fork.base, fork.step, fork.cfg, fork.folder)
        if not fork.done():
            todo.append(fork)
    if not todo:
        return
    n = min(workers or default_workers(), len(todo))
    # Longest first, so the workers' tails stay short.
    todo.sort(key=lambda f: f.last - f.step, reverse=True)
    if n == 1:
        for fork in todo:
            _train(fork)
        return
    with ProcessPoolExecutor(n, mp_context=mp_context()) as pool:
        list(pool.map(_train, todo))
