"""Reliability: kill -9 at random moments, fuzzed configs and CLI arguments, concurrent analyses.

The kill test runs 4 kills in the default suite and 20 in the slow target (``make test-slow``).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_circuits.cli import main
from icl_circuits.config import RunConfig
from icl_circuits.errors import ConfigError
from icl_circuits.presets import PRESETS, get_preset
from icl_circuits.runs import layout, store
from icl_circuits.runs.read import load_native, read_metrics
from icl_circuits.training import train
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PRESET_NAMES = set(PRESETS)

# A run that checkpoints at every step, so kills land inside checkpoint writes and appends.
KILL_CFG = tiny_config(steps=30, n_checkpoints=31)

CHILD = """
import sys, json
import torch
torch.set_num_threads(1)  # as in the test process: results are bitwise equal per thread count
sys.path.insert(0, {root!r})
from icl_circuits.config import RunConfig
from icl_circuits.training import train
cfg = RunConfig.from_dict(json.loads({cfg!r}))
print("ready", flush=True)
train(cfg, {run!r}, progress=False)
print("done", flush=True)
"""


def _child(run: Path) -> subprocess.Popen:
    code = CHILD.format(root=str(ROOT), cfg=KILL_CFG.to_json(), run=str(run))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _kill_and_check(tmp_path: Path, n_kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    run = tmp_path / "killed"
    report = {"tried": 0, "survived": 0, "lost": 0}
    seen: set[int] = set()
    for _ in range(n_kills):
        proc = _child(run)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.6))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        report["tried"] += 1
        steps = store.list_checkpoints(run)
        # every checkpoint written before the kill still loads; none disappeared
        for step in steps:
            store.load_checkpoint(run, step)
        report["lost"] += len(seen - set(steps))
        seen |= set(steps)
        read_metrics(run)
        metrics = run / layout.METRICS  # absent if the kill came before the first checkpoint
        for line in (metrics.read_text() if metrics.exists() else "").splitlines()[:-1]:
            json.loads(line)  # only the last line may be torn by a kill
        report["survived"] += 1
        if finished:
            break
    train(KILL_CFG, run, progress=False)
    return report


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return train(KILL_CFG, tmp_path_factory.mktemp("ref") / "ref", progress=False)


def _assert_same_run(run: Path, ref: Path) -> None:
    ref_w, got_w = load_native(ref).state_dict(), load_native(run).state_dict()
    for k, v in ref_w.items():
        assert (v == got_w[k]).all(), k
    assert read_metrics(run).equals(read_metrics(ref))


def test_kill9_resume_identical(tmp_path, reference_run):
    report = _kill_and_check(tmp_path, n_kills=4, seed=0)
    assert report["lost"] == 0 and report["survived"] == report["tried"]
    _assert_same_run(tmp_path / "killed", reference_run)


@pytest.mark.slow
def test_kill9_twenty_times(tmp_path, reference_run):
    report = _kill_and_check(tmp_path, n_kills=20, seed=1)
    print(f"kills survived {report['survived']}/{report['tried']}, files lost {report['lost']}")
    assert report["lost"] == 0 and report["survived"] == report["tried"]
    _assert_same_run(tmp_path / "killed", reference_run)


# ------------------------------------------------------------------------------ fuzzing
SECTIONS = {
    "": RunConfig(),
    "data": get_preset("demo").data,
    "model": get_preset("demo").model,
    "train": get_preset("demo").train,
}
# (field path, invalid values): every one must be refused with an error naming the field
INVALID = {
    "seed": [-1, "x", 1.5, None],
    "data.n_classes": [0, -2, "many", 2.5, [1]],
    "data.n_labels": [1, 0, "x"],
    "data.d": [0, -3, None],
    "data.n_pairs": [0, "eight"],
    "data.burst": [3, -1, 5, 7],
    "data.p_bursty": [1.5, -0.1, "half"],
    "data.zipf_alpha": [-1.0, "zipf"],
    "data.noise": [-0.5, [0.1]],
    "data.label_mode": ["ternary", 3],
    "model.n_layers": [0, -1, "two"],
    "model.n_heads": [0, 3, 5, 7],
    "model.d_model": [0, -64],
    "model.positional": ["alibi", 1],
    "model.normalization": ["batchnorm"],
    "model.encoder": ["resnet", None],
    "model.readout": ["softmax"],
    "model.readout_hidden": [[0], [-5], "wide"],
    "train.steps": [0, -10, "long", 1.5],
    "train.batch_size": [0, -1],
    "train.lr": [0, -1e-3, "fast"],
    "train.optimizer": ["lion", 0],
    "train.betas": [[0.9], [1.5, 0.9], "x"],
    "train.weight_decay": [-1.0],
    "train.decay_on": ["mlp"],
    "train.warmup_steps": [-1, 10**9],
    "train.n_checkpoints": [1, 0],
    "train.eval_size": [0],
    "train.device": ["tpu", 3],
    "train.compile": ["yes", 2],
}
CASES = [(field, value) for field, values in INVALID.items() for value in values]


def _mutated(field: str, value) -> dict:
    raw = json.loads(get_preset("demo").to_json())
    node = raw
    *parents, leaf = field.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES))
def test_fuzzed_invalid_configs(case):
    field, value = case
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(_mutated(field, value))
    msg = str(err.value)
    assert msg.startswith(field) and "\n" not in msg, msg


@settings(max_examples=60, deadline=None)
@given(
    section=st.sampled_from(["", "data.", "model.", "train."]),
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
def test_fuzzed_unknown_keys(section, key):
    known = SECTIONS[section.rstrip(".")].to_dict()
    if key in known or (section == "" and key in {"data", "model", "train", "name", "seed"}):
        return
    raw = json.loads(get_preset("demo").to_json())
    node = raw[section.rstrip(".")] if section else raw
    node[key] = 1
    with pytest.raises(ConfigError, match=rf"^{section}{key}: unknown key"):
        RunConfig.from_dict(raw)


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES))
def test_fuzzed_cli_overrides(tmp_path, case):
    field, value = case
    out = tmp_path / f"run-{abs(hash((field, repr(value))))}"
    code, err = _run_cli(["train", "demo", f"{field}={json.dumps(value)}", "--out", str(out), "--no-progress"])
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and field in err, err
    assert not out.exists(), "nothing written on bad input"


@settings(max_examples=40, deadline=None)
@given(argv=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz=.-_0123456789", min_size=1, max_size=10), max_size=4))
def test_fuzzed_cli_garbage(argv):
    if (argv and argv[0] == "presets") or any(a in PRESET_NAMES or a.startswith(("-h", "--h")) for a in argv):
        return  # valid commands (listing, help, real training) are not garbage
    code, err = _run_cli(argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err


# ------------------------------------------------------------------------------ concurrency
def test_two_analyses_at_once_keep_the_cache_consistent(tmp_path):
    run = train(tiny_config(steps=8, n_checkpoints=4), tmp_path / "run", progress=False)
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from probes.over_training import analyze_run\n"
        f"df = analyze_run({str(run)!r}, eval_size=32, progress=False)\n"
        "print(len(df))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    from probes.over_training import analyze_run

    files = sorted((run / layout.ANALYSIS).rglob("*.csv"))
    assert len(files) == 4 and not [p for p in (run / layout.ANALYSIS).rglob(".tmp*")]
    before = {p: p.read_bytes() for p in files}
    again = analyze_run(run, eval_size=32, progress=False)
    assert str(len(again)) == outs[0]
    assert {p: p.read_bytes() for p in files} == before, "cache files are never rewritten"
