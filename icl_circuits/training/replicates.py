"""Seed replicates in one process: vectorised where it pays, separate runs where it does not.

:func:`train_seeds` trains one config once per seed into one ordinary run folder each. With
several seeds (and, where the ensemble falls back to vmap, a model small enough:
:func:`vectorise_pays`) the seeds run through the vectorised ensemble
(:class:`icl_circuits.training.ensemble.VmapEnsemble`, one forward and backward for all of
them); otherwise one ``train()`` after another. Either way
each folder equals ``train(cfg.replace(seed=s), run)`` within float tolerance (vectorised)
or bit for bit (separate), and resumes with either.

Rule: vectorise with at least :data:`VECTORISE_MIN_SEEDS` seeds, and, where the ensemble
falls back to ``vmap`` (:func:`icl_circuits.models.stacked.supports_stacked` false: the CNN
encoder, soft caps), only up to :data:`VECTORISE_MAX_FLOPS` forward + backward FLOPs per seed
and step. Reason: a big single-seed step already keeps the core's matrix units busy, and a few
seeds do not amortise vmap's extra copies; the stacked forward computes less than one model's
training forward and never splits a linear, so it pays on the big presets too. Measurements:
``benchmarks/RESULTS.md``, "Vectorised seeds: how many, and how big" and "Seed replicates:
vectorised against separate runs, and the rule".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from icl_circuits.config import RunConfig
from icl_circuits.data.batch import Batch
from icl_circuits.errors import RunFolderError

#: Largest per-seed step (forward + backward FLOPs, :func:`step_flops`) the vmapped ensemble
#: takes (the stacked forward has no cap): above it vmap lost to separate runs (module docstring).
VECTORISE_MAX_FLOPS = 1e8

#: Fewest seeds worth a vectorised step: fewer did not amortise the batching (module docstring).
VECTORISE_MIN_SEEDS = 4


def step_flops(cfg: RunConfig) -> int:
    """Forward + backward FLOPs of one training step of one seed (``FlopCounterMode`` on one
    sequence of the config's shape, times the batch size; the model is built, no data is)."""
    from torch.utils.flop_counter import FlopCounterMode

    from icl_circuits.models.build import build_native, query_logits

    data = cfg.data
    model = build_native(cfg.model, seed=0, **data.model_shape())
    n = data.n_pairs
    zeros = torch.zeros(1, n + 1, dtype=torch.long)
    batch = Batch(torch.zeros(1, n + 1, data.d_in), zeros[:, :n], zeros, zeros[:, 0], layout=data.layout)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(query_logits(model, batch.tokens()), batch.target).backward()
    return counter.get_total_flops() * cfg.train.batch_size


def vectorise_pays(cfg: RunConfig, n_seeds: int) -> bool:
    """Whether ``n_seeds`` replicates of ``cfg`` train faster vectorised than one after another
    (the measured rule above): enough seeds, and either the stacked forward covers the model
    or its step is small enough for vmap. Early-stopping runs (``train.stop_above``) train
    separately: an ensemble keeps computing a member that has stopped; so do runs with
    ``train.interventions`` (the ensemble does not apply them)."""
    from icl_circuits.models.build import build_native
    from icl_circuits.models.stacked import supports_stacked

    if n_seeds < VECTORISE_MIN_SEEDS or cfg.train.stop_above > 0 or cfg.train.interventions:
        return False
    if supports_stacked(build_native(cfg.model, seed=0, **cfg.data.model_shape())):
        return True
    return step_flops(cfg) <= VECTORISE_MAX_FLOPS


def train_seeds(
    cfg: RunConfig,
    seeds: Sequence[int],
    runs: Sequence[Path | str],
    progress: bool = True,
    vectorise: bool | None = None,
    stop_after: int | None = None,
) -> list[Path]:
    """Train ``cfg`` once per seed into ``runs`` (one ordinary run folder each); resumes.

    Args:
        cfg: the run config; its ``seed`` is replaced by each of ``seeds``.
        seeds: distinct seeds.
        runs: one run folder per seed.
        progress: a progress bar.
        vectorise: ``None`` (default): :func:`vectorise_pays` decides; True / False force it.
        stop_after: stop once this step is checkpointed (as in ``train``).

    Returns:
        The run folders, in the order of ``seeds``.
    """
    return train_group(
        seed_configs(cfg, seeds, len(runs)), runs, progress=progress, vectorise=vectorise, stop_after=stop_after
    )


def seed_configs(cfg: RunConfig, seeds: Sequence[int], n_runs: int) -> list[RunConfig]:
    """``cfg`` once per seed; a one-line error unless the seeds are distinct, one per run folder."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(seeds) != n_runs:
        raise RunFolderError(f"train: expected one run folder per seed, got {len(seeds)} seeds, {n_runs} runs")
    if len(set(seeds)) != len(seeds):
        raise RunFolderError(f"train: seeds must be distinct, got {seeds}")
    return [cfg.replace(seed=s) for s in seeds]


def train_group(
    cfgs: Sequence[RunConfig],
    runs: Sequence[Path | str],
    progress: bool = True,
    vectorise: bool | None = None,
    stop_after: int | None = None,
    prefetch: bool | None = None,
) -> list[Path]:
    """Train configs that share ``model``, ``train`` and the data's shape (seed replicates, or
    grid points differing only in data settings such as ``data.n_train``), one run folder
    each: vectorised (one vmapped model, each member its own data source) or one after another.

    ``vectorise``: ``None`` lets :func:`vectorise_pays` decide on the group's size.
    """
    from icl_circuits.training.ensemble import VmapEnsemble
    from icl_circuits.training.trainer import SingleModel, train_loop

    runs = [Path(r) for r in runs]
    if not cfgs or len(cfgs) != len(runs) or len({r.resolve() for r in runs}) != len(runs):
        raise RunFolderError(
            f"train: expected one distinct run folder per config, got {len(cfgs)} configs, {len(runs)} runs"
        )
    options = {"progress": progress, "stop_after": stop_after, "prefetch": prefetch}
    if vectorise is None:
        vectorise = vectorise_pays(cfgs[0], len(cfgs))
    if vectorise and len(cfgs) > 1:
        try:
            return train_loop(cfgs, runs, VmapEnsemble, **options)
        except RunFolderError as err:
            if "different checkpoints" not in str(err):
                raise
            # Folders left at different steps (an earlier separate run): resume each alone.
    return [train_loop([c], [r], SingleModel, **options)[0] for c, r in zip(cfgs, runs, strict=True)]
