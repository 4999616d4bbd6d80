"""Atomic, checksummed checkpoints, the run folder's lock, and bounded reads of its files.

A checkpoint is written into a hidden temporary folder, every file fsynced, a manifest of
sha256 sums written last, and the folder renamed into place: a crash at any moment leaves
either no checkpoint or a complete one, and every earlier checkpoint untouched. Tensors are
stored only with safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from icl_circuits.errors import CheckpointError, RunFolderError
from icl_circuits.fileio import disk_error, publish_dir, temp_dir
from icl_circuits.fileio import write_synced as _write_synced  # a module global: tests replace it
from icl_circuits.runs import layout


# ---------------------------------------------------------------------------- files
def append_lines(path: Path, lines: list[str]) -> None:
    """Append lines with one fsync; a torn last line from a crash is repaired first."""
    path = Path(path)
    try:
        if path.exists() and path.stat().st_size:
            with open(path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = path.read_bytes()
                    f.truncate(data.rfind(b"\n") + 1)
        with open(path, "ab") as f:
            f.write("".join(line + "\n" for line in lines).encode())
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise disk_error(path, err) from None


#: Largest JSON file of a run folder read (config, state, manifest, cache index).
MAX_JSON_BYTES = 256 * 2**20
#: Largest checkpoint file a manifest may declare.
MAX_FILE_BYTES = 2**40


def read_regular(path: Path, max_bytes: int, follow: bool = True) -> bytes:
    """Read a regular file of at most ``max_bytes`` bytes, never more.

    Devices, FIFOs and folders are refused (a FIFO is opened non-blocking, so it cannot
    hang), as is a symbolic link when ``follow`` is false.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunFolderError: not a regular file, a link where none is allowed, or too large.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise RunFolderError(f"{path}: a symbolic link, not a file of the run folder") from None
        raise RunFolderError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFolderError(f"{path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise RunFolderError(f"{path}: larger than the {max_bytes} bytes expected")
    return data


def read_json(path: Path) -> Any:
    """A JSON file of the run folder (a regular file of at most ``MAX_JSON_BYTES``)."""
    try:
        return json.loads(read_regular(Path(path), MAX_JSON_BYTES))
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunFolderError(f"{path}: not valid JSON (corrupt?)") from None
    except RecursionError:
        raise RunFolderError(f"{path}: nested too deeply to parse (corrupt?)") from None


# ---------------------------------------------------------------------------- lock
@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold the run folder's lock; a second process is refused (released even on kill -9)."""
    path = Path(run) / layout.LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunFolderError(
            f"{run}: cannot write into this run folder ({err.strerror or err}); it needs write access to train"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"{run}: another process is training into this run folder (lock {path} is held)"
            ) from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- checkpoints
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    run: Path,
    step: int,
    model: dict[str, torch.Tensor],
    optim: dict[str, torch.Tensor],
    rng: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write checkpoint ``step`` atomically and return its folder."""
    final = layout.checkpoint_dir(run, step)
    if final.exists():
        raise CheckpointError(f"{final}: already exists and is never overwritten")
    files = {
        layout.MODEL: st_save({k: v.detach().cpu().contiguous() for k, v in model.items()}),
        layout.OPTIM: st_save({k: v.detach().cpu().contiguous() for k, v in optim.items()}),
        layout.RNG: st_save({k: v.cpu().contiguous() for k, v in rng.items()}),
        layout.STATE: json.dumps(state, indent=1, sort_keys=True, allow_nan=False).encode(),
    }
    manifest = {
        "format_version": layout.FORMAT_VERSION,
        "step": step,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()},
    }
    tmp = None
    try:
        tmp = temp_dir(final)
        for name, data in files.items():
            _write_synced(tmp / name, data)
        _write_synced(tmp / layout.MANIFEST, json.dumps(manifest, indent=1).encode())
        published = publish_dir(tmp, final)
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(final, err) from None
    if not published:
        raise CheckpointError(f"{final}: already exists and is never overwritten")
    return final


def list_checkpoints(run: Path) -> list[int]:
    """Steps of the committed checkpoint folders, ascending (unverified)."""
    root = Path(run) / layout.CHECKPOINTS
    if not root.is_dir():
        return []
    steps = (layout.parse_step(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(s for s in steps if s is not None)


def _manifest_entries(mpath: Path, manifest: Any) -> dict[str, tuple[int, str]]:
    """``{name: (bytes, sha256)}`` of a manifest, refusing anything but plain file names."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath}: corrupt manifest")
    if manifest.get("format_version") != layout.FORMAT_VERSION:
        raise CheckpointError(
            f"{mpath}: format version {manifest.get('format_version')!r}, "
            f"this icl-circuits reads version {layout.FORMAT_VERSION}"
        )
    out = {}
    for name, entry in manifest["files"].items():
        if not layout.is_plain_name(name) or name == layout.MANIFEST:
            raise CheckpointError(f"{mpath}: entry {name[:80]!r} is not a plain file name inside the checkpoint folder")
        size = entry.get("bytes") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if type(size) is not int or not 0 <= size <= MAX_FILE_BYTES or not isinstance(digest, str):
            raise CheckpointError(f"{mpath}: entry {name!r} needs a size in [0, {MAX_FILE_BYTES}] and a sha256")
        out[name] = (size, digest)
    return out


def verify_checkpoint(run: Path, step: int) -> dict[str, bytes]:
    """Read and checksum every file of checkpoint ``step``; return their bytes.

    Only regular files directly inside the checkpoint folder are read (no links, no paths),
    each no further than the size its manifest declares.
    """
    folder = layout.checkpoint_dir(run, step)
    mpath = folder / layout.MANIFEST
    if folder.is_symlink():
        raise CheckpointError(f"{folder}: a symbolic link, not a checkpoint folder of this run")
    try:
        manifest = json.loads(read_regular(mpath, 2**20, follow=False))
    except FileNotFoundError:
        raise CheckpointError(f"{mpath}: missing (checkpoint incomplete)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RunFolderError):
        raise CheckpointError(f"{mpath}: corrupt manifest") from None
    out = {}
    for name, (size, digest) in _manifest_entries(mpath, manifest).items():
        path = folder / name
        try:
            data = read_regular(path, size, follow=False)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing") from None
        except RunFolderError as err:
            raise CheckpointError(f"{err} (checkpoint corrupt)") from None
        if len(data) != size or _sha256(data) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupt)")
        out[name] = data
    return out


def load_checkpoint(run: Path, step: int) -> dict[str, Any]:
    """Verify and load checkpoint ``step``: ``{"model", "optim", "rng", "state"}``.

    Raises:
        CheckpointError: naming the bad file and the nearest good checkpoint.
    """
    try:
        raw = verify_checkpoint(run, step)
        return {
            "model": st_load(raw[layout.MODEL]),
            "optim": st_load(raw[layout.OPTIM]),
            "rng": st_load(raw[layout.RNG]),
            "state": json.loads(raw[layout.STATE]),
        }
    except (CheckpointError, SafetensorError, KeyError, json.JSONDecodeError) as err:
        msg = (
            str(err) if isinstance(err, CheckpointError) else f"{layout.checkpoint_dir(run, step)}: unreadable ({err})"
        )
        good = nearest_good_checkpoint(run, step)
        hint = f"; nearest good checkpoint: step {good}" if good is not None else "; no good checkpoint left"
        raise CheckpointError(msg + hint) from None


def _first_good(run: Path, steps: list[int]) -> int | None:
    for s in steps:
        try:
            verify_checkpoint(run, s)
            return s
        except CheckpointError:
            continue
    return None


def nearest_good_checkpoint(run: Path, step: int) -> int | None:
    """The verified checkpoint closest to ``step`` (earlier preferred on ties), or None."""
    others = sorted((s for s in list_checkpoints(run) if s != step), key=lambda s: (abs(s - step), s))
    return _first_good(run, others)


def latest_good_checkpoint(run: Path) -> int | None:
    """The newest checkpoint that passes its checksums, or None."""
    return _first_good(run, list(reversed(list_checkpoints(run))))


def stopped_early(run: Path, step: int | None = None) -> dict | None:
    """The early-stop record of the run's latest good checkpoint, or None (``train.stop_above``).

    Returns:
        ``{"step", "split", "metric", "value", "above"}``: the checkpoint at which the run
        stopped and the accuracy that passed the threshold. ``step``: the latest good
        checkpoint when already known (it is not verified again).
    """
    step = latest_good_checkpoint(run) if step is None else step
    if step is None:
        return None
    stopped = read_json(layout.checkpoint_dir(run, step) / layout.STATE).get("stopped")
    return {"step": step, **stopped} if isinstance(stopped, dict) else None


def run_end(run: Path, steps: int) -> int | None:
    """The step at which the run is over: ``steps`` once that checkpoint verifies, the
    early-stop checkpoint of a run that stopped early, else None (still to train)."""
    last = latest_good_checkpoint(run)
    if last is None:
        return None
    if last == steps and list_checkpoints(run)[-1] == steps:
        return steps
    stop = stopped_early(run)
    return stop["step"] if stop is not None else None


# ---------------------------------------------------------------------------- optimiser state
def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
