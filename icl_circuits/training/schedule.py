"""Checkpoint and learning-rate schedules, both computed up front from the config."""

from __future__ import annotations

import heapq
import math

import numpy as np

from icl_circuits.config import TrainConfig


def checkpoint_steps(steps: int, n: int, every: int = 0) -> list[int]:
    """Steps at which to checkpoint: ``0``, ``steps`` and about ``n`` in all.

    Half are log-spaced (dense early, where circuits form abruptly) and half linear (even
    coverage later); ``every > 0`` adds every k-th step. Where rounding merges steps, the
    widest gaps are split until ``n`` distinct steps exist (or every step is taken).

    Example: ``checkpoint_steps(4000, 8) == [0, 1, 16, 252, 1333, 2000, 2667, 4000]``.
    """
    n = min(n, steps + 1)
    n_log = n // 2
    log_part = np.geomspace(1, steps, n_log) if n_log > 0 else np.array([])
    lin_part = np.linspace(0, steps, n - n_log)
    chosen = {int(round(s)) for s in np.concatenate([log_part, lin_part])} | {0, steps}
    if every > 0:
        chosen |= set(range(0, steps + 1, every))
    out = sorted(chosen)
    # Split the widest gap (the earliest among equals) until n steps exist: a heap keyed by
    # (-width, start) makes this O(n log n) rather than a scan of every gap per insertion.
    heap = [(-(b - a), a) for a, b in zip(out, out[1:], strict=False)]
    heapq.heapify(heap)
    added = []
    while len(out) + len(added) < n and heap:
        neg_gap, start = heapq.heappop(heap)
        gap = -neg_gap
        if gap < 2:
            break
        mid = start + gap // 2
        added.append(mid)
        heapq.heappush(heap, (-(mid - start), start))
        heapq.heappush(heap, (-(start + gap - mid), mid))
    return sorted(out + added)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate used for the update taken at ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * math.sqrt(max(cfg.warmup_steps, 1) / max(step + 1, 1))
    span = max(cfg.steps - cfg.warmup_steps, 1)
    frac = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr * (1 - frac)
