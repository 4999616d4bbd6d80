"""Bad inputs through the command line: each must end in one line (exit 2), never a traceback
or a hang. The counts (tried / one-line errors / tracebacks / hangs) are printed and asserted.

Cases run in-process through :func:`icl_circuits.cli.main`, each under a wall-clock alarm;
read-only folders are made read-only for real (as an unprivileged user when run as root).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

import pytest

from icl_circuits.cli import main
from icl_circuits.presets import get_preset
from icl_circuits.training import train
from tests.conftest import TINY_OVERRIDES, tiny_config

TINY = [*TINY_OVERRIDES, "data.burst=2"]
HANG_S = 10


class _Hang(BaseException):
    pass


def _alarm(*_):
    raise _Hang


def run_case(argv: list[str]) -> tuple[str, int | None, str]:
    """``(outcome, exit code, stderr)``; outcome is ``one-line``, ``ok``, ``traceback`` or ``hang``."""
    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except _Hang:
        return "hang", None, err.getvalue()
    except BaseException:  # noqa: BLE001 - anything escaping main() is a traceback for the user
        return "traceback", None, err.getvalue() + traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    text = err.getvalue()
    if code == 0:
        return "ok", code, text
    one_line = code == 2 and text.count("\n") == 1 and text.startswith("error: ") and "Traceback" not in text
    return ("one-line" if one_line else "traceback"), code, text


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a finished tiny run, a directory, a plain file and a crafted config."""
    root = tmp_path_factory.mktemp("bad")
    run = train(tiny_config(steps=6, n_checkpoints=3), root / "run", progress=False)
    (root / "adir").mkdir()
    (root / "afile").write_text("not a folder")
    huge = json.loads(get_preset("demo").to_json())
    huge["model"]["n_layers"] = 1e30
    (root / "huge.json").write_text(json.dumps(huge))
    bad_name = json.loads(get_preset("demo").to_json())
    bad_name["name"] = "../../escaped"
    (root / "escape.json").write_text(json.dumps(bad_name))
    # a run folder whose config.json asks for 1e30 layers: analyze must refuse, not hang
    crafted = root / "crafted"
    crafted.mkdir()
    (crafted / "config.json").write_text(json.dumps({"format_version": 1, **huge}))
    return root, run


def bad_cases(root: Path, run: Path) -> list[tuple[list[str], str]]:
    """``(argv, text the one-line error must contain)``."""
    out = str(root / "out")
    t = ["train", "demo", "--no-progress", "--out", out]
    cases = [
        ([*t, "data.n_classes=1000000000"], "data.n_classes"),
        ([*t, "model.d_model=1000000"], "model.d_model"),
        ([*t, "train.batch_size=100000000"], "train.batch_size"),
        ([*t, "train.steps=1e12", "train.n_checkpoints=1e6"], "train.steps"),
        ([*t, "train.n_checkpoints=1e6"], "train.n_checkpoints"),
        ([*t, "train.steps=1000000000", "train.checkpoint_every=1"], "train.checkpoint_every"),
        ([*t, "train.eval_size=1e9"], "train.eval_size"),
        ([*t, "data.n_pairs=1e7"], "data.n_pairs"),
        ([*t, "model.n_layers=1e30"], "model.n_layers"),
        ([*t, "model.n_heads=1e12"], "model.n_heads"),
        ([*t, "model.readout_hidden=[1e9]"], "model.readout_hidden"),
        ([*t, "model.readout_hidden=" + json.dumps([8] * 1000)], "model.readout_hidden"),
        ([*t, "data.d=1e400"], "data.d"),
        ([*t, "train.threads=-1"], "train.threads"),
        ([*t, "train.threads=100000"], "train.threads"),
        ([*t, "seed=1e30"], "seed"),
        ([*t, "data.n_classes=65536", "data.d=65536"], "data."),  # fits the bounds, not the memory
        ([*t, "train.batch_size=1048576", "data.n_pairs=4096"], "train.batch_size"),
        ([*t, "name=../../x"], "name"),
        ([*t, "name=/tmp/abs"], "name"),
        ([*t, "name=.hidden"], "name"),
        ([*t, "name=a/b"], "name"),
        ([*t, "name=a\\\\b"], "name"),
        ([*t, 'name=""'], "name"),
        ([*t, "name=" + "x" * 300], "name"),
        (["train", "--config", str(root / "adir"), "--out", out], "adir"),
        (["train", "--config", "/dev/zero", "--out", out], "/dev/zero"),
        (["train", "--config", str(root / "huge.json"), "--out", out], "model.n_layers"),
        (["train", "--config", str(root / "escape.json")], "name"),
        (["train", "demo", *TINY, "--no-progress", "--out", str(root / "afile")], "afile"),
        (["train", "demo", *TINY, "--no-progress", "--out", str(root / "afile" / "sub")], "afile"),
        (["analyze", str(root / "crafted"), "--no-progress"], "model.n_layers"),
        (["show", str(root / "crafted")], "model.n_layers"),
        (["analyze", str(root / "afile"), "--no-progress"], "afile"),
        (["show", str(run), "extra"], "unrecognized"),
    ]
    for field in ("lr", "weight_decay", "grad_clip", "l2", "momentum"):
        for value in ("Infinity", "-Infinity", "NaN", "1e400"):
            cases.append(([*t, f"train.{field}={value}"], f"train.{field}"))
    for field in ("data.noise", "data.zipf_alpha", "data.p_bursty", "model.init_range"):
        cases.append(([*t, f"{field}=Infinity"], field))
    return cases


def test_bad_inputs_are_one_line(work, capsys):
    root, run = work
    counts = {"tried": 0, "one-line": 0, "traceback": 0, "hang": 0, "ok": 0}
    failures = []
    for argv, needle in bad_cases(root, run):
        start = time.perf_counter()
        outcome, code, err = run_case(argv)
        counts["tried"] += 1
        counts[outcome] += 1
        if outcome != "one-line" or needle not in err or time.perf_counter() - start > HANG_S:
            failures.append((argv, outcome, err[-400:]))
    assert not (root / "out").exists(), "nothing is written on bad input"
    assert not (root.parent / "escaped").exists() and not Path("/tmp/abs").exists()
    with capsys.disabled():
        print(f"\nbad-input fuzz: {counts}")
    assert not failures, failures
    assert counts["traceback"] == 0 and counts["hang"] == 0


class _ClosedPipe(io.TextIOBase):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation("no fd")


def test_show_into_a_closed_pipe_exits_quietly(work):
    """`icl-circuits show RUN | head`: the reader is gone; no traceback, no message."""
    _, run = work
    err = io.StringIO()
    with contextlib.redirect_stdout(_ClosedPipe()), contextlib.redirect_stderr(err):
        code = main(["show", str(run), "--config"])
    assert code == 1 and err.getvalue() == ""


# ------------------------------------------------------------------------------ read-only folders
@contextlib.contextmanager
def unprivileged():
    """Run the block as user nobody when the tests run as root (root ignores permissions)."""
    if os.geteuid() != 0:
        yield
        return
    import icl_circuits.training  # noqa: F401
    import probes.report  # noqa: F401 - imported while root's Python tree is still readable

    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_read_only_folders_give_one_line():
    """Training into, resuming and analysing read-only folders (real permissions)."""
    base = Path(tempfile.mkdtemp(prefix="icl-ro-"))  # outside pytest's root-only tmp tree
    try:
        os.chmod(base, 0o755)
        run = base / "run"
        assert main(["train", "demo", *TINY, "--no-progress", "--out", str(run)]) == 0
        ro = base / "ro"
        ro.mkdir()
        for path in [base, *base.rglob("*")]:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        cases = [
            ["train", "demo", *TINY, "--no-progress", "--out", str(ro / "new")],  # read-only parent
            ["train", "demo", *TINY, "--no-progress", "--out", str(ro)],  # read-only empty folder
            ["train", "demo", *TINY, "--no-progress", "--out", str(run)],  # resume a complete run
            ["train", "demo", *TINY, "train.steps=20", "--no-progress", "--out", str(run)],  # different config
            ["analyze", str(run), "--eval-size", "16", "--no-progress"],  # read-only run, no --out
        ]
        with unprivileged():
            results = [run_case(argv) for argv in cases]
        (o_new, _, e_new), (o_ro, _, e_ro), (o_done, _, e_done), (o_diff, _, e_diff), (o_an, _, e_an) = results
        for outcome, e, where in ((o_new, e_new, "ro"), (o_ro, e_ro, "ro"), (o_an, e_an, "analysis")):
            assert outcome == "one-line" and where in e, e
        assert "--out" in e_an
        assert o_done == "ok", e_done  # a finished run needs no writing: nothing to do
        assert o_diff == "one-line" and "different config" in e_diff, e_diff
    finally:
        for path in [base, *base.rglob("*")]:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------ fuzz: sizes and nesting
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from icl_circuits.limits import FLAG_LIMITS  # noqa: E402

#: Every number option of the command line, with a command that takes it (the bound is checked
#: before the command runs, so nothing trains).
FLAG_COMMANDS = {
    "--eval-size": lambda run, out: ["analyze", run, "--no-progress", "--out", out],
    "--probe-eval-size": lambda run, out: ["sweep", "--base", "demo", "seed=[0]", "--out", out, "--probes"],
    "--workers": lambda run, out: ["sweep", "--base", "demo", "seed=[0]", "--out", out],
    "--max-retries": lambda run, out: ["sweep", "--base", "demo", "seed=[0]", "--out", out],
    "--gpus-per-run": lambda run, out: ["sweep", "--base", "demo", "seed=[0]", "--out", out, "--backend", "ray"],
    "--n": lambda run, out: ["circuits", run, "--out", out],
    "--ig-steps": lambda run, out: ["circuits", run, "--out", out],
    "--llm-heads": lambda run, out: ["analyze", run, "--no-progress", "--out", out],
    "--checkpoints": lambda run, out: ["refine", run, "--between", "0", "10", "--no-progress"],
}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_every_number_option_is_bounded():
    flags = {flag for flag, _, _ in FLAG_LIMITS.values()}
    assert flags == set(FLAG_COMMANDS), "each bounded option is fuzzed below"
    numbers = {
        a.option_strings[0]
        for sub in main_parser_subcommands()
        for a in sub._actions
        if a.type in (int, float) and a.option_strings
    }
    # --target / --min-effect are checked by the circuit search; refine's --between steps must be
    # steps of the run itself, refused in one line otherwise (tests/test_refine.py).
    assert numbers <= flags | {"--target", "--min-effect", "--between"}, "a number option without a bound"


def main_parser_subcommands():
    from icl_circuits.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    return list(sub.choices.values())


def _outside(flag: str):
    lo, hi = next((lo, hi) for f, lo, hi in FLAG_LIMITS.values() if f == flag)
    ints = st.one_of(
        st.integers(max_value=int(lo) - 1, min_value=-(2**80)), st.integers(min_value=int(hi) + 1, max_value=2**80)
    )
    if flag == "--gpus-per-run":
        floats = st.one_of(st.floats(max_value=lo, exclude_max=True), st.floats(min_value=hi, exclude_min=True))
        return st.one_of(ints, floats).map(lambda v: repr(float(v)) if isinstance(v, float) else str(v))
    return ints.map(str)


@FUZZ
@given(data=st.data())
def test_fuzzed_sizes_out_of_bounds_are_one_line(work, data):
    root, run = work
    flag = data.draw(st.sampled_from(sorted(FLAG_COMMANDS)), label="flag")
    value = data.draw(_outside(flag), label="value")
    out = str(root / "fuzz-out")
    argv = [*FLAG_COMMANDS[flag](str(run), out), f"{flag}={value}"]
    if flag == "--workers" and data.draw(st.booleans(), label="reproduce"):
        argv = ["reproduce", "reddy2023", "--out", out, f"--workers={value}"]
    outcome, _, err = run_case(argv)
    assert outcome == "one-line" and flag in err, (argv, outcome, err)
    assert not Path(out).exists(), "nothing is written on bad input"


def _nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


@FUZZ
@given(
    depth=st.one_of(st.integers(1, 50), st.integers(500, 5000), st.integers(50_000, 300_000)),
    kind=st.sampled_from(["list", "object"]),
    where=st.sampled_from(["train --config", "sweep json", "sweep toml", "run config.json", "override"]),
    command=st.sampled_from(["show", "analyze", "circuits"]),
)
def test_fuzzed_nested_configs_are_one_line(work, depth, kind, where, command):
    """A config nested at any depth (past the recursion limit included): one line, never a traceback."""
    root, run = work
    base = Path(tempfile.mkdtemp(dir=root))
    text = _nested(depth, kind)
    out = str(base / "out")
    if where == "train --config":
        (base / "c.json").write_text(text)
        argv = ["train", "--config", str(base / "c.json"), "--out", out]
    elif where == "sweep json":
        (base / "s.json").write_text(text)
        argv = ["sweep", str(base / "s.json"), "--out", out]
    elif where == "sweep toml":
        inline = "[" * depth + "]" * depth if kind == "list" else "{a=" * depth + "1" + "}" * depth
        (base / "s.toml").write_text(f"base = {inline}\n")
        argv = ["sweep", str(base / "s.toml"), "--out", out]
    elif where == "run config.json":
        (base / "run").mkdir()
        (base / "run" / "config.json").write_text(text)
        argv = [command, str(base / "run"), *(["--out", out] if command != "show" else [])]
    else:
        argv = ["train", "demo", f"model.readout_hidden={text}", "--dry-run", "--out", out]
    outcome, _, err = run_case(argv)
    assert outcome in ("one-line", "ok") and "Traceback" not in err, (where, depth, outcome, err[-300:])
    if where != "override":
        assert outcome == "one-line", (where, depth, err)
    assert not Path(out).exists()
