"""Seed replicates in one process: vectorised where it pays, separate runs where it does not.

:func:`train_seeds` trains one config once per seed into one ordinary run folder each. With
several seeds (and, where the ensemble falls back to vmap, a model small enough:
:func:`vectorise_pays`) the seeds run through the vectorised ensemble
(:class:`icl_circuits.training.ensemble.VmapEnsemble`, one forward and backward for all of
them); otherwise one ``train()`` after another. Either way
each folder equals ``train(cfg.replace(seed=s), run)`` within float tolerance (vectorised)
or bit for bit (separate), and resumes with either.

The rule is measured (``benchmarks/replicates.py``, in ``benchmarks/RESULTS.md``; one torch
thread, 2 CPU cores shared with other jobs, load 5-7): per-seed throughput of the ensemble
over separate runs was, at S = 16 seeds, 2.65x for chan2024-stylized (0.043 GFLOP per seed
step), 1.80x for singh2024-induction (0.031), 0.80-1.19x for demo (0.435) and 0.61x for
nguyen-reddy2024 (1.31); at S = 3 it was 0.96-1.10x for the small ones and 0.72-0.75x for
the big ones. A big single-seed step already keeps the core's matrix units busy, and a few
seeds do not amortise vmap's extra copies. Hence: at least :data:`VECTORISE_MIN_SEEDS`
seeds and at most :data:`VECTORISE_MAX_FLOPS` forward + backward FLOPs per seed and step.

Re-measured for the small presets with the attention as matmuls under vmap and with the
stacked forward (:mod:`icl_circuits.models.stacked`): CPU milliseconds per seed and step,
one thread, 3 interleaved rounds at load 2.7-3.4, against 4.9-6.3 (chan2024-stylized) and
4.3-6.2 (singh2024-induction) for one seed alone: S = 4 took 2.2-3.5 and 2.5-3.3 stacked,
3.0-4.7 and 3.4-4.7 vmapped; S = 3 took 2.7-3.6 and 3.0-3.8 stacked; S = 2 3.6-4.9 stacked,
4.6-7.2 vmapped. So 4 seeds pay (about 2x stacked, 1.3-1.5x vmapped); a reproduction's
8-run grids then vectorise in two chunks of 4 on 2 workers.

The FLOP cap is vmap's: the stacked forward also pays on the big presets, since it computes
less than one model's training forward (the last layer's query at the query only, a norm's
affine folded into the next linear) and never splits a linear. Per-seed throughput over
separate runs, ``benchmarks/perf.py``'s loop timing (between first and last checkpoint, 3
interleaved rounds, load 4.0-4.4), S = 16: demo (0.435 GFLOP) 1.13x (1.06-1.17; vmapped
0.91x), nguyen-reddy2024 (1.31 GFLOP, 2 rounds) 1.32x (1.29-1.35; vmapped 0.59x),
chan2024-stylized 1.48x (vmapped 1.49x); the step alone in CPU time at S = 4: demo
1.03-1.09x, nguyen-reddy2024 1.24-1.36x. Hence the cap applies only where the ensemble
falls back to vmap (:func:`icl_circuits.models.stacked.supports_stacked` false: the CNN
encoder, soft caps).
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
#: takes (the stacked forward has no cap). Measured on 2 shared CPU cores (module docstring).
VECTORISE_MAX_FLOPS = 1e8

#: Fewest seeds worth a vectorised step (measured: 4 seeds gain 1.3-2x per seed; see the module docstring).
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
    seeds = [int(s) for s in seeds]
    if not seeds or len(seeds) != len(runs):
        raise RunFolderError(f"train: expected one run folder per seed, got {len(seeds)} seeds, {len(runs)} runs")
    if len(set(seeds)) != len(seeds):
        raise RunFolderError(f"train: seeds must be distinct, got {seeds}")
    return train_group([cfg.replace(seed=s) for s in seeds], runs, progress, vectorise, stop_after)


def train_group(
    cfgs: Sequence[RunConfig],
    runs: Sequence[Path | str],
    progress: bool = True,
    vectorise: bool | None = None,
    stop_after: int | None = None,
) -> list[Path]:
    """Train configs that share ``model``, ``train`` and the data's shape (seed replicates, or
    grid points differing only in data settings such as ``data.n_train``), one run folder
    each: vectorised (one vmapped model, each member its own data source) or one after another.

    ``vectorise``: ``None`` lets :func:`vectorise_pays` decide on the group's size.
    """
    from icl_circuits.training.ensemble import VmapEnsemble
    from icl_circuits.training.trainer import train, train_configs

    runs = [Path(r) for r in runs]
    if not cfgs or len(cfgs) != len(runs) or len({r.resolve() for r in runs}) != len(runs):
        raise RunFolderError(
            f"train: expected one distinct run folder per config, got {len(cfgs)} configs, {len(runs)} runs"
        )
    if vectorise is None:
        vectorise = vectorise_pays(cfgs[0], len(cfgs))
    if vectorise and len(cfgs) > 1:
        try:
            return train_configs(cfgs, runs, VmapEnsemble, progress, stop_after)
        except RunFolderError as err:
            if "different checkpoints" not in str(err):
                raise
            # Folders left at different steps (an earlier separate run): resume each alone.
    return [train(c, r, progress=progress, stop_after=stop_after) for c, r in zip(cfgs, runs, strict=True)]
