"""The one training loop: its vectorised-seed backend honours what ``train`` honours, and the
one atomic-write helper every writer uses."""

from __future__ import annotations

import pytest
import torch

from icl_circuits import fileio
from icl_circuits.errors import RunFolderError
from icl_circuits.training import trainer
from icl_circuits.training.ensemble import VmapEnsemble, train_ensemble
from tests.conftest import tiny_config
from tests.test_tracking import _jsonl

SEEDS = [3, 5]


def test_ensemble_runs_on_train_threads_and_restores_the_callers(tmp_path, monkeypatch):
    seen: list[int] = []
    lr_at = trainer.lr_at

    def spy(tc, step):
        seen.append(torch.get_num_threads())
        return lr_at(tc, step)

    monkeypatch.setattr(trainer, "lr_at", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_ensemble(tiny_config(steps=6, n_checkpoints=2), SEEDS, [tmp_path / str(s) for s in SEEDS], progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}, "train.threads = 1 by default, as for train()"


def test_ensemble_logs_each_seed_to_its_own_tracker(tmp_path, monkeypatch):
    """``train.logger`` opens one tracker per seed's run folder, logging what its metrics.jsonl holds."""
    opened: dict = {}

    class Recorder:
        def __init__(self, cfg, run):
            self.seed, self.rows, self.closed = cfg.seed, {}, False
            opened[run] = self

        def log(self, step, rows):
            self.rows[step] = {f"{r['split']}/{r['metric']}": r["value"] for r in rows}

        def close(self):
            self.closed = True

    monkeypatch.setattr(trainer, "open_logger", Recorder)
    runs = train_ensemble(
        tiny_config(steps=12, n_checkpoints=3), SEEDS, [tmp_path / str(s) for s in SEEDS], progress=False
    )
    assert sorted(opened) == sorted(runs)
    for seed, run in zip(SEEDS, runs, strict=True):
        tracker = opened[run]
        assert tracker.seed == seed and tracker.closed
        assert tracker.rows == _jsonl(run)


def test_write_atomic_never_overwrites_unless_asked(tmp_path):
    path = tmp_path / "a.json"
    fileio.write_atomic(path, "one", overwrite=False)
    with pytest.raises(RunFolderError, match="never overwritten"):
        fileio.write_atomic(path, "two", overwrite=False)
    assert path.read_text() == "one"
    fileio.write_atomic(path, b"three", overwrite=True)
    assert path.read_bytes() == b"three"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"], "no temporary file is left"
    with pytest.raises(RunFolderError, match="could not write"):
        fileio.write_atomic(tmp_path / "missing" / "b.json", "x", overwrite=True)


def test_publish_dir_keeps_the_first_complete_folder(tmp_path):
    final = tmp_path / "report"
    first = fileio.temp_dir(final)
    (first / "summary.txt").write_text("first")
    second = fileio.temp_dir(final)
    (second / "summary.txt").write_text("second")
    assert first.name.startswith(fileio.TMP_PREFIX) and first != second
    assert fileio.publish_dir(first, final)
    assert not fileio.publish_dir(second, final), "a concurrent writer finished first"
    assert (final / "summary.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def _weights_and_metrics(run):
    from icl_circuits.runs.read import read_metrics
    from icl_circuits.runs.store import list_checkpoints, load_checkpoint

    last = load_checkpoint(run, list_checkpoints(run)[-1])
    return last["model"], last["optim"], read_metrics(run)


@pytest.mark.parametrize("ensemble", [False, True], ids=["train", "ensemble"])
def test_prefetch_equals_no_prefetch_bitwise(tmp_path, ensemble, monkeypatch):
    """The next step's batch made in a background thread changes nothing: same weights,
    optimiser state and metrics, bit for bit (and the thread really made the batches)."""
    made_in: set[str] = set()
    original = trainer.Prefetch.__init__

    def spy(self, make, *args, **kwargs):
        import threading

        def recorded(step):
            made_in.add(threading.current_thread().name.split("_")[0])
            return make(step)

        original(self, recorded, *args, **kwargs)

    monkeypatch.setattr(trainer.Prefetch, "__init__", spy)
    cfg = tiny_config(steps=15, n_checkpoints=3)
    outs = {}
    for prefetch in (True, False):
        runs = [tmp_path / f"{prefetch}-{s}" for s in SEEDS]
        if ensemble:
            trainer.train_members(cfg, SEEDS, runs, VmapEnsemble, progress=False, prefetch=prefetch)
        else:
            runs = [trainer.train(cfg, runs[0], progress=False, prefetch=prefetch)]
        outs[prefetch] = [_weights_and_metrics(r) for r in runs]
        assert made_in == ({"icl-prefetch"} if prefetch else {"MainThread"})
        made_in.clear()
    for (wa, oa, ma), (wb, ob, mb) in zip(outs[True], outs[False], strict=True):
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        assert all(torch.equal(oa[k], ob[k]) for k in oa)
        assert ma.equals(mb)  # same rows, same values


@pytest.mark.parametrize(
    ("cost", "thread", "slow_start"), [(0.0, False, False), (0.01, True, False), (0.01, True, True)]
)
def test_prefetch_auto_starts_its_thread_only_for_costly_batches(cost, thread, slow_start, monkeypatch):
    """By default the first batches are made on demand, then in bursts; the thread starts only
    when a batch costs over 5% of a step (the warm-up steps, here 10x slower, left out of the
    comparison), and every step still gets its own batch, in order."""
    import threading
    import time

    from icl_circuits.training.prefetch import Prefetch

    monkeypatch.setattr(Prefetch, "CHUNK_STEPS", 4)

    made_in = []

    def make(step):
        made_in.append(threading.current_thread().name)
        if cost:
            time.sleep(cost)
        return step

    probe = Prefetch.WARMUP_STEPS + Prefetch.PROBE_STEPS
    with Prefetch(make, 2, 20) as data:
        got = []
        for step in range(2, 20):
            got.append(data.get(step))
            slow = slow_start and step - 2 < Prefetch.WARMUP_STEPS
            time.sleep(0.5 if slow else 0.05)  # the step's own work
    assert got == list(range(2, 20))
    assert made_in[: probe + 1] == ["MainThread"] * (probe + 1)
    assert any(name.startswith("icl-prefetch") for name in made_in) == thread
    assert len(made_in) == 18  # each step's batch made once, in a burst or by the thread


@pytest.mark.parametrize(("rows", "burst"), [(8, 32), (2**21, 8)], ids=["small", "capped"])
def test_prefetch_bursts_make_ahead_within_the_byte_cap(rows, burst):
    """Without the thread, a missing input is made with the next ones in one burst: up to
    CHUNK_STEPS steps and CHUNK_BYTES (here 8-row and 8 MiB inputs: bursts of 32 and of 8),
    never past the end; each step gets its own input, in order, made once."""
    from icl_circuits.training.prefetch import Prefetch

    calls = []

    def make(step):
        calls.append(step)
        return (torch.full((rows,), step, dtype=torch.int32),)

    with Prefetch(make, 3, 80, enabled=False) as data:
        firsts = []
        for step in range(3, 80):
            n = len(calls)
            assert data.get(step)[0][0].item() == step
            if len(calls) > n:
                firsts.append((step, len(calls) - n))
    assert calls == list(range(3, 80))
    assert firsts[0] == (3, burst)
    assert all(size <= Prefetch.CHUNK_STEPS for _, size in firsts) and firsts[-1][0] + firsts[-1][1] == 80


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_foreach_optimiser_equals_the_per_parameter_loop_bitwise(optimizer):
    """``build_optimizer`` uses the multi-tensor (foreach) update: bitwise torch's per-parameter loop."""
    import copy

    import torch.nn.functional as F

    from icl_circuits.models.build import build_native, query_logits
    from icl_circuits.runs.read import model_shape
    from icl_circuits.training.optim import build_optimizer

    cfg = tiny_config(optimizer=optimizer, weight_decay=0.01, momentum=0.9)
    src = cfg.data.build_source(cfg.seed)
    model = build_native(cfg.model, seed=0, **model_shape(cfg, src))
    twin = copy.deepcopy(model)
    fast = build_optimizer(model, cfg.train)
    loop = build_optimizer(twin, cfg.train)
    for group in loop.param_groups:
        group["foreach"] = False
    assert all(g["foreach"] for g in fast.param_groups)
    for step in range(5):
        batch = src.train_batch(step, 16)
        for m, opt in ((model, fast), (twin, loop)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(query_logits(m, batch.tokens()), batch.target).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
