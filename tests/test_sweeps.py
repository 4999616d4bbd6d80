"""Sweeps: grid parsing, the local and Ray backends, resuming a killed sweep, phase diagrams."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from icl_circuits.cli import main
from icl_circuits.errors import ConfigError, ICLError
from icl_circuits.runs import layout
from icl_circuits.sweeps import (
    LocalBackend,
    SweepSpec,
    build_points,
    load_spec,
    parse_axis_arg,
    parse_values,
    phase_diagram,
    read_results,
    run_sweep,
)
from icl_circuits.sweeps.backends import Job, Outcome, run_point
from icl_circuits.sweeps.sweep import INDEX, RESULTS, SPEC
from tests.conftest import TINY_OVERRIDES

TINY = TINY_OVERRIDES
GRID = {"data.n_classes": [16, 64], "data.burst": [0, 2], "seed": [0, 1]}
ROOT = Path(__file__).resolve().parents[1]


def _spec(grid=GRID, overrides=TINY) -> SweepSpec:
    return SweepSpec(base="demo", overrides=tuple(overrides), grid=dict(grid))


def _final_weights(run: Path, steps: int = 12) -> str:
    manifest = json.loads((layout.checkpoint_dir(run, steps) / layout.MANIFEST).read_text())
    return manifest["files"][layout.MODEL]["sha256"]


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every run's provenance.json and checkpoint folder."""
    snap = {}
    for run in (out / "runs").iterdir():
        if (run / layout.PROVENANCE).exists():
            st = (run / layout.PROVENANCE).stat()
            snap[f"{run.name}/{layout.PROVENANCE}"] = (st.st_ino, st.st_mtime_ns)
        for ckpt in (run / layout.CHECKPOINTS).glob(f"{layout.STEP_PREFIX}*"):
            st = ckpt.stat()
            snap[f"{run.name}/{ckpt.name}"] = (st.st_ino, st.st_mtime_ns)
    return snap


# ---------------------------------------------------------------------------- grid parsing
def test_axis_expressions():
    assert parse_values("[32, 1024]") == [32, 1024]
    assert parse_values("range(3)") == [0, 1, 2]
    assert parse_values("range(2, 10, 3)") == [2, 5, 8]
    assert parse_values("[2**i for i in range(5,14)]") == [2**i for i in range(5, 14)]
    assert parse_values("[10**-i for i in range(2, 4)]") == [0.01, 0.001]
    assert parse_values("[2*i+1 for i in range(4) if i != 2]") == [1, 3, 7]
    assert parse_values("['adam', 'sgd']") == ["adam", "sgd"]
    assert parse_values("[[64], [128, 128]]") == [[64], [128, 128]]
    assert parse_axis_arg("data.n_classes=[32,1024]") == ("data.n_classes", [32, 1024])
    assert parse_axis_arg("seed=range(3)") == ("seed", [0, 1, 2])
    for bad, needle in [
        ("__import__('os').system('true')", "not allowed|unknown name"),
        ("[x for x in open('f')]", "not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("[i.real for i in range(3)]", "not allowed"),
        ("range(10**9)", "more than"),
        ("[2**10**10 for i in range(2)]", "too large"),
        ("32", "expected a list"),
        ("[1, 1]", "appears twice"),
        ("[]", "no values"),
        ("[1,", "cannot parse"),
    ]:
        with pytest.raises(ConfigError, match=needle) as err:
            parse_axis_arg(f"data.n_classes={bad}")
        assert "\n" not in str(err.value)


def test_spec_files_and_bad_keys(tmp_path):
    toml = tmp_path / "k.toml"
    toml.write_text(
        'base = "demo"\noverrides = ["train.steps=300"]\n\n[grid]\n"data.n_classes" = "[2**i for i in range(5, 7)]"\n'
        "seed = [0, 1]\ndata.burst = [0, 4]\n"
    )
    spec = load_spec(toml)
    assert spec.grid == {"data.n_classes": [32, 64], "seed": [0, 1], "data.burst": [0, 4]}
    points = build_points(spec)
    assert len(points) == 8 and points[0].name == "data.n_classes=32,seed=0,data.burst=0"
    assert (
        points[-1].config.data.n_classes == 64 and points[-1].config.seed == 1 and points[-1].config.train.steps == 300
    )
    as_json = tmp_path / "k.json"
    as_json.write_text(json.dumps(spec.to_dict()))
    assert load_spec(as_json) == spec
    # The config's own one-line errors, before anything runs.
    with pytest.raises(ConfigError, match=r"^data\.KK: unknown key"):
        build_points(_spec({"data.KK": [1, 2]}))
    with pytest.raises(ConfigError, match=r"^data\.burst: expected a divisor of n_pairs=4"):
        build_points(_spec({"data.burst": [2, 3]}))
    with pytest.raises(ConfigError, match=r"^preset: expected one of"):
        build_points(SweepSpec(base="nope", grid={"seed": [0]}))
    (tmp_path / "bad.toml").write_text('base = "demo"\nbackend = "x"\n[grid]\nseed = [0]\n')
    with pytest.raises(ConfigError, match="unknown key 'backend'"):
        load_spec(tmp_path / "bad.toml")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--base", "demo", "data.KK=[1,2]"], "data.KK: unknown key"),
        (["--base", "demo", "data.n_classes=32"], "data.n_classes: expected a list"),
        (["--base", "demo"], "give at least one axis"),
        (["--base", "demo", "seed=[0]", "--backend", "local", "--address", "x:1"], "--address: only for --backend ray"),
        (["missing.toml"], "missing.toml: no such sweep spec file"),
        ([], "give a SPEC file"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "sweep"
    assert main(["sweep", *argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


# ---------------------------------------------------------------------------- local backend
@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "local"
    t0 = time.monotonic()
    # Every run alone: the bitwise reference of the Ray and killed-worker sweeps (vectorised
    # sweeps are tested in tests/test_replicates.py).
    result = run_sweep(_spec(), out, backend=LocalBackend(workers=2), progress=False, vectorise=False)
    result.seconds = time.monotonic() - t0
    return result


def test_local_sweep(local_sweep):
    out = local_sweep.out
    assert local_sweep.counts()["done"] == 8 and not local_sweep.failed
    assert json.loads((out / SPEC).read_text())["grid"] == GRID
    index = pd.read_csv(out / INDEX)
    assert list(index.columns[:4]) == ["point", "data.n_classes", "data.burst", "seed"]
    assert (index.status == "done").all() and (index.last_step == 12).all()
    results = read_results(out)
    assert list(results.columns) == ["point", *GRID, "kind", "step", "split", "metric", "layer", "head_index", "value"]
    assert set(results.point) == set(index.point)
    assert results.groupby("point").step.nunique().eq(4).all() and {0, 12} <= set(results.step)
    assert {"IC", "IW", "train"} <= set(results.split)
    # Each point's run folder is an ordinary, finished run with that point's config.
    run = out / "runs" / "data.n_classes=16,data.burst=2,seed=1"
    cfg = json.loads((run / layout.CONFIG).read_text())
    assert (cfg["data"]["n_classes"], cfg["data"]["burst"], cfg["seed"]) == (16, 2, 1)
    assert {p.name for p in local_sweep.figures} == {"phase_IC.png", "phase_IW.png"}
    assert all(p.stat().st_size > 1000 for p in local_sweep.figures)
    print(f"local 2x2x2 sweep: {local_sweep.seconds:.1f}s")


def test_rerun_of_a_finished_sweep_trains_nothing(local_sweep):
    before = _snapshot(local_sweep.out)
    again = run_sweep(_spec(), local_sweep.out, backend=LocalBackend(workers=2), progress=False)
    assert again.trained == 0 and again.counts()["done"] == 8
    assert _snapshot(local_sweep.out) == before
    pd.testing.assert_frame_equal(again.results, local_sweep.results)
    with pytest.raises(ICLError, match="holds a different spec"):
        run_sweep(_spec({**GRID, "seed": [0, 1, 2]}), local_sweep.out, progress=False)


def test_phase_diagram(local_sweep):
    results = read_results(local_sweep.out)
    fig = phase_diagram(results, x="data.n_classes", y="data.burst", split="IC", metric="acc")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["$2^{4}$", "$2^{6}$"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "2"]
    assert "mean over 2 seeds" in ax.get_title()
    final = results[(results.step == 12) & (results.split == "IC") & (results.metric == "acc")]
    cell = final[(final["data.n_classes"] == 64) & (final["data.burst"] == 2)].value.mean()
    assert ax.images[0].get_array()[1, 1] == pytest.approx(cell)
    with pytest.raises(ICLError, match="not a grid axis"):
        phase_diagram(results, x="data.n_pairs", y="data.burst")


# ---------------------------------------------------------------------------- worker death, probes
def _die_once(job: Job) -> Outcome:
    """Worker target: the first attempt of the first point is killed (SIGKILL) mid-run."""
    from icl_circuits.config import RunConfig
    from icl_circuits.training import train

    marker = Path(job.run).parents[1] / "killed-once"
    if job.point.endswith("seed=0") and not marker.exists():
        marker.touch()
        train(RunConfig.from_dict(json.loads(job.config_json)), job.run, progress=False, stop_after=3)
        os.kill(os.getpid(), signal.SIGKILL)
    return run_point(job)


def test_killed_worker_is_retried_and_resumes(local_sweep, tmp_path):
    grid = {"data.n_classes": [64], "data.burst": [2], "seed": [0, 1]}
    result = run_sweep(
        _spec(grid),
        tmp_path / "sweep",
        backend=LocalBackend(workers=2, target=_die_once),
        probes=True,
        probe_eval_size=16,
        progress=False,
        figures=False,
    )
    assert (tmp_path / "sweep" / "killed-once").exists()
    assert result.counts()["done"] == 2 and not result.failed
    for point in result.points:  # resumed from its checkpoint: same weights as the uninterrupted run
        assert _final_weights(tmp_path / "sweep" / "runs" / point.name) == _final_weights(
            local_sweep.out / "runs" / point.name
        )
    probes = result.results[result.results.kind == "probes"]
    assert {"induction", "prev_token"} & set(probes.metric) and probes.layer.notna().any()
    assert set(probes.point) == {p.name for p in result.points}


# ---------------------------------------------------------------------------- a killed sweep
def test_killed_sweep_resumes_without_recomputing(tmp_path):
    out = tmp_path / "sweep"
    steps = 40
    overrides = [o for o in TINY if not o.startswith(("train.steps", "train.n_checkpoints"))]
    overrides += [f"train.steps={steps}", "train.n_checkpoints=8"]
    # Six points, killed when the first finishes: a loaded machine's slow polling cannot let
    # them all finish before the kill (with three, it sometimes did).
    # Every run alone (--vectorise no): six seeds would otherwise train as one job.
    argv = ["sweep", "--base", "demo", "--out", str(out), "seed=range(6)", "--no-progress", "--vectorise", "no"]
    argv += [f"--set={o}" for o in overrides]
    proc = subprocess.Popen(
        [sys.executable, "-m", "icl_circuits.cli", *argv, "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    final = layout.step_dirname(steps)
    deadline = time.monotonic() + 300  # a loaded machine: starting python, torch and the first run
    try:
        while not any((out / "runs").glob(f"*/{layout.CHECKPOINTS}/{final}")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.parents[1].name for p in (out / "runs").glob(f"*/{layout.CHECKPOINTS}/{final}")}
    before = _snapshot(out)
    assert finished and len(finished) < 6

    assert main(argv + ["--workers", "2"]) == 0
    after = _snapshot(out)
    # Nothing that existed was rewritten (provenance.json is written once per run folder) ...
    assert {k: after.get(k) for k in before} == before
    # ... and runs finished before the kill gained no checkpoint: none was computed twice.
    for name in finished:
        assert {k for k in after if k.startswith(f"{name}/")} == {k for k in before if k.startswith(f"{name}/")}
    index = pd.read_csv(out / INDEX)
    assert (index.status == "done").all() and (index.last_step == steps).all()
    assert (out / RESULTS).exists() and not list(out.glob(".tmp-*"))


# ---------------------------------------------------------------------------- ray backend
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(monkeypatch):
    """A real single-node Ray cluster on loopback (2 CPUs, token auth), killed afterwards."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("the ray command line is not installed next to this python")
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytest.importorskip("ray")  # after the environment: Ray reads its auth mode when imported
    temp = tempfile.mkdtemp(prefix="icl-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    log = Path(temp) / "head.log"
    t0 = time.monotonic()
    with open(log, "w") as f:
        head = subprocess.Popen(
            [str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
            + ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats", "--block"],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,  # its own process group: killed as one below
        )
    try:
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() - t0 < 60, "ray start --head took over 60 s"
            time.sleep(0.2)
        print(f"ray head started in {time.monotonic() - t0:.1f}s")
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_backend_matches_local(local_sweep, ray_head, tmp_path):
    from icl_circuits.sweeps import RayBackend

    t0 = time.monotonic()
    result = run_sweep(_spec(), tmp_path / "ray", backend=RayBackend(address=ray_head), progress=False)
    print(f"ray 2x2x2 sweep: {time.monotonic() - t0:.1f}s")
    assert result.counts()["done"] == 8 and not result.failed
    pd.testing.assert_frame_equal(
        read_results(tmp_path / "ray").drop(columns="point"), read_results(local_sweep.out).drop(columns="point")
    )
    for point in result.points:
        assert _final_weights(result.out / "runs" / point.name) == _final_weights(local_sweep.out / "runs" / point.name)


def test_ray_missing_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["sweep", "--base", "demo", "seed=[0]", "--backend", "ray", "--out", str(tmp_path / "s")]) == 2
    assert "pip install 'icl-circuits[ray]'" in capsys.readouterr().err
