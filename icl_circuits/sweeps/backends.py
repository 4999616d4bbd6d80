"""Where a sweep's runs execute: worker processes on this machine, or tasks on a Ray cluster.

A backend gets a list of :class:`Job` and calls ``on_done(Outcome)`` as each point finishes.
A job is one ordinary ``train(cfg, run)`` call, or, for points sharing a model (seed
replicates, data settings: ``Job.replicates``), one
:func:`icl_circuits.training.replicates.train_group` call that trains them vectorised in one
process and writes each point's ordinary run folder. Either
resumes its run folders from their last good checkpoint; so a retried job (a worker killed,
a node lost) continues where it stopped and nothing finished is recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from icl_circuits.errors import ICLError

BACKENDS = ("local", "ray")
#: How long a job waits for a run folder's lock held by a dying process (e.g. the orphaned
#: worker of a killed sweep) before training reports the folder as busy.
LOCK_WAIT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Job:
    """One grid point to train: its config as JSON (portable across machines) and its run folder."""

    point: str
    config_json: str
    run: str
    probes: bool = False
    probe_eval_size: int = 512
    #: Points trained with this one in one vectorised process: (point, config JSON, run).
    replicates: tuple[tuple[str, str, str], ...] = ()

    @property
    def points(self) -> list[str]:
        return [self.point, *(r[0] for r in self.replicates)]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a job ended: ``ok``, or the one-line ``error``; ``attempts`` counts worker deaths + 1."""

    point: str
    ok: bool
    error: str | None = None
    seconds: float = 0.0
    attempts: int = 1


# ---------------------------------------------------------------------------- the work itself
def run_point(job: Job) -> Outcome | list[Outcome]:
    """Train one grid point, or a point and its ``replicates`` (resuming their folders); with
    ``job.probes``, also fill the probe cache. One Outcome per point (a list with replicates).

    User errors (a locked or foreign run folder, a bad checkpoint) come back as an Outcome;
    anything else propagates to the backend as a bug would.
    """
    import torch

    from icl_circuits.config import RunConfig
    from icl_circuits.runs.store import list_checkpoints, run_end
    from icl_circuits.training.replicates import train_group

    torch.set_num_threads(1)
    t0 = time.monotonic()
    members = [(job.point, job.config_json, job.run), *job.replicates]
    try:
        cfgs = [RunConfig.from_dict(json.loads(c)) for _, c, _ in members]
        runs = [Path(r) for _, _, r in members]
        for run in runs:
            _wait_for_lock(run, LOCK_WAIT_S)
        # A finished run (final step, or stopped early) is never touched again.
        todo = [
            (cfg, run)
            for cfg, run in zip(cfgs, runs, strict=True)
            if cfg.train.steps not in list_checkpoints(run) and run_end(run, cfg.train.steps) is None
        ]
        if todo:
            # The driver grouped points only where vectorising pays (sweeps.sweep.group_jobs).
            train_group([c for c, _ in todo], [r for _, r in todo], progress=False, vectorise=True)
        if job.probes:
            from probes.over_training import analyze_run

            # Computes and caches in the run folder; the driver's aggregate() reads the cache.
            for run in runs:
                analyze_run(run, eval_size=job.probe_eval_size, progress=False)
    except ICLError as err:
        outcomes = [Outcome(p, False, str(err), time.monotonic() - t0) for p, _, _ in members]
    else:
        outcomes = [Outcome(p, True, None, time.monotonic() - t0) for p, _, _ in members]
    return outcomes if job.replicates else outcomes[0]


def _outcomes(result: Outcome | list[Outcome]) -> list[Outcome]:
    return result if isinstance(result, list) else [result]


def _wait_for_lock(run: Path, timeout: float) -> None:
    """Wait (up to ``timeout``) while another process holds the run's lock; train() then takes it.

    A sweep killed with SIGKILL leaves its workers to notice and exit (see ``_watch_driver``);
    until they do they hold their run folders' locks. Waiting here turns that race into a
    short delay instead of a "run folder is locked" failure. A live concurrent writer still
    gets train()'s usual error once the wait is over.
    """
    from icl_circuits.runs import layout

    path = run / layout.LOCK
    if not path.exists():
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return
        finally:
            os.close(fd)  # releases the lock if we took it
        time.sleep(0.25)


# ---------------------------------------------------------------------------- local
def _watch_driver(driver_pid: int, parent_pid: int) -> None:
    """In a worker: exit as soon as the sweep process (or our parent) is gone.

    ProcessPoolExecutor workers outlive a driver killed with SIGKILL; left alone they would
    keep training and hold run-folder locks that the rerun needs.
    """

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if os.getppid() != parent_pid or not _alive(driver_pid):
                os._exit(3)

    threading.Thread(target=watch, name="icl-sweep-watchdog", daemon=True).start()


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed driver nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): existence is all we can tell
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _init_worker(driver_pid: int) -> None:
    import torch

    torch.set_num_threads(1)
    _watch_driver(driver_pid, os.getppid())


def mp_context():
    """forkserver (torch preloaded once, cheap workers) where available, else spawn; never fork."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["icl_circuits.sweeps.backends", "icl_circuits.training"])
        return ctx
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class LocalBackend:
    """A pool of worker processes on this machine, one run per worker (one torch thread each).

    At most ``workers`` jobs are in flight, so when a worker dies (killed, out of memory) and
    the pool breaks, exactly the in-flight jobs are resubmitted to a fresh pool, up to
    ``max_retries`` times each; they resume from their last checkpoint.
    """

    name = "local"

    def __init__(self, workers: int | None = None, max_retries: int = 2, target: Callable[[Job], Outcome] = run_point):
        if workers is not None and workers < 1:
            raise ICLError(f"--workers: expected at least 1, got {workers}")
        if max_retries < 0:
            raise ICLError(f"--max-retries: expected 0 or more, got {max_retries}")
        self.workers = workers or default_workers()
        self.max_retries = max_retries
        self.target = target

    def describe(self) -> str:
        return f"local ({self.workers} worker{'s' * (self.workers != 1)})"

    def run(self, jobs: list[Job], on_done: Callable[[Outcome], None]) -> None:
        queue = list(jobs)
        attempts = {job.point: 1 for job in jobs}
        n = min(self.workers, len(queue))
        if n == 0:
            return
        pool = self._pool(n)
        inflight: dict[Future, Job] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < n:
                    job = queue.pop(0)
                    inflight[pool.submit(self.target, job)] = job
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    broken |= self._settle(fut, inflight.pop(fut), attempts, queue, on_done)
                if broken:
                    # The other in-flight jobs die with the pool (or finished just before it broke).
                    for fut in wait(inflight).done:
                        self._settle(fut, inflight.pop(fut), attempts, queue, on_done)
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = self._pool(n)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _pool(self, n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=mp_context(), initializer=_init_worker, initargs=(os.getpid(),))

    def _settle(self, fut: Future, job: Job, attempts: dict, queue: list, on_done) -> bool:
        """Report a finished future; requeue its job if its worker died. True if the pool broke."""
        try:
            outcomes = _outcomes(fut.result())
        except BrokenProcessPool:
            self._retry_or_fail(job, attempts, queue, on_done)
            return True
        except Exception as err:  # a bug in a run: record it, carry on with the others
            outcomes = [Outcome(p, False, _one_line(err)) for p in job.points]
        for outcome in outcomes:
            on_done(dataclasses.replace(outcome, attempts=attempts[job.point]))
        return False

    def _retry_or_fail(self, job: Job, attempts: dict, queue: list, on_done) -> None:
        if attempts[job.point] > self.max_retries:
            for point in job.points:
                on_done(
                    Outcome(
                        point,
                        False,
                        f"its worker process died {attempts[job.point]} times (killed or out of memory?)",
                        attempts=attempts[job.point],
                    )
                )
        else:
            attempts[job.point] += 1
            queue.insert(0, job)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------- ray
RAY_MISSING = "--backend ray needs Ray: pip install 'icl-circuits[ray]' (or pip install ray)"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ICLError(RAY_MISSING) from None
    return ray


class RayBackend:
    """Each run is a Ray task (``num_cpus=1``) on the cluster at ``address``, or on a local Ray.

    Ray itself retries a task whose worker or node died (``max_retries``); the retried task
    resumes its run folder. With a cluster the sweep folder must be on a filesystem that
    every node mounts at the same path, and icl-circuits must be installed on every node.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        max_retries: int = 2,
        num_cpus: int | None = None,
        cpus_per_run: float = 1.0,
        gpus_per_run: float = 0.0,
    ):
        if max_retries < 0:
            raise ICLError(f"--max-retries: expected 0 or more, got {max_retries}")
        if num_cpus is not None and address:
            raise ICLError("--workers: a Ray cluster's size is set by the cluster; drop --workers with --address")
        if num_cpus is not None and num_cpus < 1:
            raise ICLError(f"--workers: expected at least 1, got {num_cpus}")
        if gpus_per_run < 0:
            raise ICLError(f"--gpus-per-run: expected 0 or more, got {gpus_per_run}")
        self.address = address
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.cpus_per_run = cpus_per_run
        self.gpus_per_run = gpus_per_run
        self.ray = _import_ray()

    def describe(self) -> str:
        return f"ray ({self.address or 'local instance'})"

    @contextlib.contextmanager
    def _session(self):
        ray = self.ray
        if ray.is_initialized():  # the caller's own Ray session (notebooks, tests)
            yield
            return
        kwargs: dict = {"log_to_driver": False}
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs.update(include_dashboard=False, num_cpus=self.num_cpus)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise ICLError(
                f"--backend ray: could not connect to {where} ({_one_line(err)}); is `ray start --head` running "
                "there? With token authentication set RAY_AUTH_MODE=token and the cluster's token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        try:
            yield
        finally:
            ray.shutdown()

    def run(self, jobs: list[Job], on_done: Callable[[Outcome], None]) -> None:
        if not jobs:
            return
        ray = self.ray
        with self._session():
            remote = ray.remote(run_point).options(
                num_cpus=self.cpus_per_run,
                num_gpus=self.gpus_per_run,
                max_retries=self.max_retries,
                retry_exceptions=False,
                name="icl-circuits-run",
            )
            pending = {remote.remote(job): job for job in jobs}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        outcomes = _outcomes(ray.get(ref))
                    except ray.exceptions.RayTaskError as err:  # an exception inside train: a bug
                        cause = getattr(err, "cause", None) or err
                        outcomes = [Outcome(p, False, _one_line(cause)) for p in job.points]
                    except ray.exceptions.RayError as err:  # worker/node lost more than max_retries times
                        outcomes = [
                            Outcome(
                                p,
                                False,
                                f"{type(err).__name__}: its worker or node died {self.max_retries + 1} times",
                                attempts=self.max_retries + 1,
                            )
                            for p in job.points
                        ]
                    for outcome in outcomes:
                        on_done(outcome)


def make_backend(
    name: str,
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 2,
    gpus_per_run: float = 0.0,
):
    """The backend called ``name`` (``local`` or ``ray``) with its options checked."""
    if name == "local":
        if address:
            raise ICLError("--address: only for --backend ray")
        if gpus_per_run:
            raise ICLError("--gpus-per-run: only for --backend ray (local runs use train.device)")
        return LocalBackend(workers, max_retries)
    if name == "ray":
        return RayBackend(address, max_retries, num_cpus=workers, gpus_per_run=gpus_per_run)
    raise ICLError(f"--backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
