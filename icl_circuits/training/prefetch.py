"""The next step's inputs, made in a background thread while this step computes.

Batches are a pure function of ``(seed, step)`` with one generator each, so what the thread
makes is what the loop would make itself: a run is bitwise the same either way (tested).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


class Prefetch:
    """``make(step)`` for steps ``start, start + 1, ... < end`` in order, each made one step ahead
    in a background thread or on demand. ``waited``: seconds ``get`` blocked (data on the
    critical path).

    ``enabled``: True, a thread from the start; False, never; None (auto), batches are made on
    demand, and after :data:`WARMUP_STEPS` + :data:`PROBE_STEPS` steps the thread starts if the
    median batch of the probe steps took more than :data:`PREFETCH_SHARE` of the median time
    between two ``get`` calls (a step). The warm-up steps are left out of that comparison: a
    run's first steps are several times slower than the rest (allocator, first backward), which
    made every batch look cheap. A thread contends for the GIL and the cores, which costs more
    than a cheap batch (measured in ``benchmarks/RESULTS.md``: chan2024-stylized, 0.1 ms
    batches, trained at 0.65x the hand-written loop with the thread and 0.94x without).
    """

    WARMUP_STEPS = 5
    PROBE_STEPS = 5
    PREFETCH_SHARE = 0.05

    def __init__(self, make: Callable[[int], Any], start: int, end: int, enabled: bool | None = None) -> None:
        self.make, self.end, self.waited = make, end, 0.0
        self.waits: list[float] = []  # seconds each get blocked
        self.enabled, self.pool, self.next = enabled, None, None
        self.made: list[float] = []  # seconds per batch made on demand (auto mode)
        self.last_get: float | None = None
        self.intervals: list[float] = []
        if enabled:
            self._start_thread(start)

    def _start_thread(self, step: int) -> None:
        # A new thread starts at OpenMP's default thread count, not the caller's: match it, so
        # that the data's kernels run as they would in the loop's own thread.
        threads = torch.get_num_threads()
        self.pool = ThreadPoolExecutor(
            1, thread_name_prefix="icl-prefetch", initializer=torch.set_num_threads, initargs=(threads,)
        )
        self._submit(step)

    def _submit(self, step: int) -> None:
        if self.pool is not None and step < self.end:
            self.next = (step, self.pool.submit(self.make, step))

    def get(self, step: int) -> Any:
        t0 = time.perf_counter()
        if self.last_get is not None:
            self.intervals.append(t0 - self.last_get)
        if self.next is not None and self.next[0] == step:
            out = self.next[1].result()
        else:
            out = self.make(step)
            self.made.append(time.perf_counter() - t0)
        self.last_get = time.perf_counter()
        self.waited += self.last_get - t0
        self.waits.append(self.last_get - t0)
        if self.pool is not None:
            self._submit(step + 1)
        elif self.enabled is None and len(self.intervals) >= self.WARMUP_STEPS + self.PROBE_STEPS:
            made = statistics.median(self.made[self.WARMUP_STEPS :])
            self.enabled = made > self.PREFETCH_SHARE * statistics.median(self.intervals[self.WARMUP_STEPS :])
            if self.enabled:
                self._start_thread(step + 1)
        return out

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
