"""The next steps' inputs, made ahead: in bursts on the loop's thread, or in a background thread.

Batches are a pure function of ``(seed, step)`` with one generator each, so what is made ahead
is what the loop would make itself: a run is bitwise the same either way (tested).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


class Prefetch:
    """``make(step)`` for steps ``start, start + 1, ... < end`` in order, made ahead. ``waited``:
    seconds ``get`` blocked (data on the critical path); ``waits``: the same, per step.

    Two ways to make ahead:

    - **Bursts** on the loop's own thread: when a step's input is missing, the inputs of up to
      :data:`CHUNK_STEPS` steps (at most :data:`CHUNK_BYTES` of them) are made at once. One
      batch made between two training steps finds cold caches and costs several times what it
      costs in a run of batches (``benchmarks/RESULTS.md``, "Making batches ahead"), and no
      thread contends with the step for the GIL.
    - **A thread** making the next step's input while the step computes, for batches that cost
      a real share of a step even in bursts.

    ``enabled``: True, a thread from the start; False, bursts only; None (auto): the first
    :data:`WARMUP_STEPS` inputs are made one by one (a run's first steps are several times
    slower than the rest: allocator, first backward, which would make every batch look cheap),
    then in bursts; after :data:`PROBE_STEPS` more steps the thread starts if a batch made in
    those bursts took more than :data:`PREFETCH_SHARE` of the median time between two ``get``
    calls (a step). A thread costs more than it saves on cheap batches (``benchmarks/RESULTS.md``).
    """

    WARMUP_STEPS = 5
    PROBE_STEPS = 5
    PREFETCH_SHARE = 0.05
    CHUNK_STEPS = 32
    CHUNK_BYTES = 64 * 2**20

    def __init__(self, make: Callable[[int], Any], start: int, end: int, enabled: bool | None = None) -> None:
        self.make, self.start, self.end, self.waited = make, start, end, 0.0
        self.waits: list[float] = []  # seconds each get blocked
        self.enabled, self.pool, self.next = enabled, None, None
        self.ready: dict[int, Any] = {}  # inputs made in a burst, by step
        self.made: list[float] = []  # seconds per input made on the loop's thread (a burst's mean)
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

    def _burst(self, step: int) -> Any:
        """``make(step)``, and the following steps' inputs into :attr:`ready` (one by one while warming up)."""
        t0 = time.perf_counter()
        out = self.make(step)
        n = 1
        if self.enabled is False or step >= self.start + self.WARMUP_STEPS:
            size = _nbytes(out)
            n = min(self.CHUNK_STEPS, max(1, self.CHUNK_BYTES // size) if size else self.CHUNK_STEPS)
            n = max(1, min(n, self.end - step))
            for s in range(step + 1, step + n):
                self.ready[s] = self.make(s)
        self.made.extend([(time.perf_counter() - t0) / n] * n)
        return out

    def get(self, step: int) -> Any:
        t0 = time.perf_counter()
        if self.last_get is not None:
            self.intervals.append(t0 - self.last_get)
        if step in self.ready:
            out = self.ready.pop(step)
        elif self.next is not None and self.next[0] == step:
            out = self.next[1].result()
        else:
            out = self._burst(step)
        self.last_get = time.perf_counter()
        self.waited += self.last_get - t0
        self.waits.append(self.last_get - t0)
        if self.pool is not None:
            if self.next is None or self.next[0] <= step:  # the thread's input was taken: the next one
                self._submit(max(self.ready, default=step) + 1)
        elif self.enabled is None and len(self.intervals) >= self.WARMUP_STEPS + self.PROBE_STEPS:
            made = statistics.median(self.made[self.WARMUP_STEPS :])
            self.enabled = made > self.PREFETCH_SHARE * statistics.median(self.intervals[self.WARMUP_STEPS :])
            if self.enabled:
                self._start_thread(max(self.ready, default=step) + 1)
        return out

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.ready.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (a tensor, or tuples / lists of them); 0 if none."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(x) for x in obj)
    return 0
