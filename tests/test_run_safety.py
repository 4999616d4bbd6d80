"""A run folder never reaches outside itself; sizes are bounded; a diverging run stops cleanly.

Fuzzed: MANIFEST entries (names, sizes, links, devices), run names, and every size field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_circuits.config import NAME_RE, RunConfig, apply_overrides
from icl_circuits.errors import CheckpointError, ConfigError, DivergedError
from icl_circuits.limits import SIZE_LIMITS, check_memory, estimate_bytes
from icl_circuits.presets import PRESETS, get_preset
from icl_circuits.runs import layout, store
from icl_circuits.training import train
from icl_circuits.training.schedule import checkpoint_steps
from tests.conftest import tiny_config


# ------------------------------------------------------------------------------ manifests
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A one-checkpoint run and a file outside it with known bytes."""
    root = tmp_path_factory.mktemp("manifest")
    run = train(tiny_config(steps=2, n_checkpoints=2), root / "run", progress=False)
    secret = root / "secret.bin"
    secret.write_bytes(b"outside the run folder")
    return run, secret


def _with_manifest(run: Path, files: dict) -> Path:
    """Rewrite checkpoint 0's manifest with ``files`` entries; returns the manifest path."""
    mpath = layout.checkpoint_dir(run, 0) / layout.MANIFEST
    os.chmod(mpath, 0o644)
    mpath.write_text(json.dumps({"format_version": layout.FORMAT_VERSION, "step": 0, "files": files}))
    return mpath


@pytest.fixture
def fresh(ckpt, tmp_path):
    import shutil

    run, secret = ckpt
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, secret


def _entry(data: bytes) -> dict:
    import hashlib

    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize(
    "name",
    ["../../secret.bin", "../../../secret.bin", "ABSOLUTE", "/dev/zero", "/etc/passwd", "sub/../../x", ".hidden", ""],
)
def test_manifest_entries_outside_the_folder_are_refused(fresh, name):
    run, secret = fresh
    if name == "ABSOLUTE":
        name = str(secret)
    data = secret.read_bytes()
    _with_manifest(run, {name: _entry(data)})
    with pytest.raises(CheckpointError, match="not a plain file name"):
        store.verify_checkpoint(run, 0)
    with pytest.raises(CheckpointError, match="nearest good checkpoint: step 1$"):
        store.load_checkpoint(run, 0)


def test_manifest_links_devices_and_sizes_are_bounded(fresh):
    run, secret = fresh
    folder = layout.checkpoint_dir(run, 0)
    model = (folder / layout.MODEL).read_bytes()
    # a link named like a checkpoint file, to a file outside or to a device
    for target in (secret, Path("/dev/zero")):
        (folder / "link.bin").unlink(missing_ok=True)
        (folder / "link.bin").symlink_to(target)
        _with_manifest(run, {"link.bin": {"sha256": "0" * 64, "bytes": 10}})
        with pytest.raises(CheckpointError, match="symbolic link"):
            store.verify_checkpoint(run, 0)
    # a FIFO is refused without blocking
    os.mkfifo(folder / "pipe.bin")
    _with_manifest(run, {"pipe.bin": {"sha256": "0" * 64, "bytes": 10}})
    with pytest.raises(CheckpointError, match="not a regular file"):
        store.verify_checkpoint(run, 0)
    # a file longer than its manifest says is read no further than the declared size + 1
    _with_manifest(run, {layout.MODEL: {"sha256": "0" * 64, "bytes": 5}})
    with pytest.raises(CheckpointError, match="larger than the 5 bytes"):
        store.verify_checkpoint(run, 0)
    for bad in (-1, 2**50, 1.5, "10", None):
        _with_manifest(run, {layout.MODEL: {"sha256": _entry(model)["sha256"], "bytes": bad}})
        with pytest.raises(CheckpointError, match="needs a size"):
            store.verify_checkpoint(run, 0)
    # the manifest itself as a link to a device
    mpath = folder / layout.MANIFEST
    mpath.unlink()
    mpath.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="corrupt manifest"):
        store.verify_checkpoint(run, 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.one_of(
        st.text(alphabet="./\\ab\x00", min_size=0, max_size=12),
        st.sampled_from(["..", ".", "/", "//x", "a/b", "..\\x", "model.safetensors/..", "~"]),
    )
)
def test_fuzzed_manifest_names(ckpt, name):
    """Any entry is either a plain name inside the folder or refused as one; nothing else is read."""
    run, secret = ckpt
    folder = layout.checkpoint_dir(run, 0)
    original = (folder / layout.MANIFEST).read_bytes()
    try:
        _with_manifest(run, {name: _entry(secret.read_bytes())})
        try:
            store.verify_checkpoint(run, 0)
            raise AssertionError(f"entry {name!r} was accepted")
        except CheckpointError as err:
            plain = layout.is_plain_name(name)
            assert plain == ("not a plain file name" not in str(err)), (name, str(err))
            if plain:
                assert "\x00" not in name and "/" not in name and not name.startswith(".")
    finally:
        (folder / layout.MANIFEST).write_bytes(original)
    store.verify_checkpoint(run, 0)


# ------------------------------------------------------------------------------ names and sizes
@settings(max_examples=50, deadline=None)
@given(name=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80))
def test_fuzzed_run_names(name):
    """A name is accepted only if it is a plain folder name; otherwise one line naming `name`."""
    raw = json.loads(get_preset("demo").to_json())
    raw["name"] = name
    try:
        cfg = RunConfig.from_dict(raw)
    except ConfigError as err:
        assert str(err).startswith("name: expected a plain name") and "\n" not in str(err)
        return
    assert Path(cfg.name).name == cfg.name and cfg.name not in ("", ".", "..") and not cfg.name.startswith(".")
    assert (Path("checkpoints") / cfg.name).parent == Path("checkpoints") and NAME_RE.fullmatch(cfg.name)


def _int_fields(cfg, prefix=""):
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _int_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, int) and not isinstance(value, bool) and f.name != "seed":
            yield f"{prefix}{f.name}"


SIZE_FIELDS = sorted({(p, f) for p in PRESETS for f in _int_fields(get_preset(p))})


@settings(max_examples=120, deadline=None)
@given(case=st.sampled_from(SIZE_FIELDS), exponent=st.integers(6, 40))
def test_fuzzed_sizes_are_bounded_and_fast(case, exponent):
    """Every size of every preset: a huge value is refused (naming the field) or fits, in < 1 s."""
    preset, field = case
    start = time.perf_counter()
    try:
        cfg = apply_overrides(get_preset(preset), [f"{field}={10**exponent}"])
        check_memory(cfg, available=2**40)
        checkpoint_steps(cfg.train.steps, cfg.train.n_checkpoints, cfg.train.checkpoint_every)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).split(":")[0].startswith(("data.", "model.", "train."))
    else:
        assert sum(estimate_bytes(cfg).values()) <= 2**40
    assert time.perf_counter() - start < 1.0


def test_size_limits_name_real_fields():
    known = {f for _, f in SIZE_FIELDS} | {"model.readout_hidden", "data.n_train"}
    from icl_circuits.data import data_config_from_dict

    for family in ("gaussian", "stylized", "classbank"):
        known |= {f"data.{f.name}" for f in dataclasses.fields(data_config_from_dict({"family": family}))}
    assert set(SIZE_LIMITS) <= known, set(SIZE_LIMITS) - known


def test_memory_estimate_names_the_field():
    with pytest.raises(ConfigError, match=r"^train\.batch_size: expected a smaller value: this run needs about"):
        check_memory(apply_overrides(get_preset("demo"), ["train.batch_size=1000000"]), available=2**34)
    with pytest.raises(ConfigError, match=r"^model\.d_model: .*parameters"):
        check_memory(apply_overrides(get_preset("demo"), ["model.d_model=65536"]), available=2**34)
    for name in PRESETS:  # every preset fits a 16 GiB machine
        check_memory(get_preset(name), available=2**34)


def test_checkpoint_schedule_is_fast_for_the_largest_sizes():
    start = time.perf_counter()
    steps = checkpoint_steps(10**7, 10**5)
    assert len(steps) == 10**5 and steps[0] == 0 and steps[-1] == 10**7 and steps == sorted(set(steps))
    assert time.perf_counter() - start < 3.0  # was quadratic: > 25 s
    assert checkpoint_steps(4000, 8) == [0, 1, 16, 252, 1333, 2000, 2667, 4000]


# ------------------------------------------------------------------------------ divergence
def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverging_run_stops_with_one_line_and_keeps_its_checkpoints(tmp_path):
    cfg = tiny_config(steps=40, n_checkpoints=6, lr=1e30)
    run = tmp_path / "run"
    with pytest.raises(DivergedError) as err:
        train(cfg, run, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "last good checkpoint" in msg and "train.lr" in msg
    steps = store.list_checkpoints(run)
    assert steps and f"step {steps[-1]}" in msg
    for step in steps:
        for row in store.load_checkpoint(run, step)["state"]["metrics"]:
            assert math.isfinite(row["value"])
    for line in (run / layout.METRICS).read_text().splitlines():
        assert math.isfinite(_strict(line)["value"])
    _strict((run / layout.CONFIG).read_text())
    assert not [p for p in (run / layout.CHECKPOINTS).iterdir() if p.name.startswith(".")], "nothing half-written"


# ------------------------------------------------------------------------------ unsafe loads
UNSAFE = re.compile(
    r"pickle\.loads?\(|allow_pickle\s*=\s*True|yaml\.load\(|torch\.load\((?![^)]*weights_only\s*=\s*True)"
)


def test_no_unsafe_deserialisation_in_the_code():
    """Tensors only via safetensors or torch.load(weights_only=True); nothing is unpickled."""
    root = Path(__file__).resolve().parents[1]
    hits = []
    for folder in ("icl_circuits", "probes", "scripts", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if UNSAFE.search(line):
                    hits.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not hits, hits
    assert UNSAFE.search("x = torch.load(f)") and not UNSAFE.search("torch.load(f, weights_only=True)")
