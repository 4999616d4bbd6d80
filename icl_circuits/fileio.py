"""Atomic writes: a file or folder appears complete or not at all, whatever the crash.

Every file the package writes goes through here: :func:`write_atomic` for a file (a temporary
sibling, fsynced, then linked or renamed into place), :func:`temp_dir` and :func:`publish_dir`
for a folder of files (written under a temporary name, renamed when complete). Temporary names
start with :data:`TMP_PREFIX`, so readers skip them.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from pathlib import Path

from icl_circuits.errors import RunFolderError

#: Prefix of every temporary file or folder name; never a name a reader accepts.
TMP_PREFIX = ".tmp-"

_counter = itertools.count()


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}-{next(_counter)}")


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write a new file ``path`` (refused if it exists) and fsync it; not atomic by itself."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def disk_error(path: Path, err: OSError) -> RunFolderError:
    """The one-line error for a failed write of ``path``."""
    if err.errno == errno.ENOSPC:
        return RunFolderError(f"{path}: disk full while writing; earlier checkpoints are intact")
    return RunFolderError(f"{path}: could not write ({err.strerror or err})")


def _exists_error(path: Path) -> RunFolderError:
    return RunFolderError(f"{path}: already exists and is never overwritten")


def write_atomic(path: Path | str, data: bytes | str, *, overwrite: bool) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically and durably.

    Args:
        path: the file; its folder must exist.
        data: the whole content.
        overwrite: replace an existing file (derived tables, figures). When false an existing
            file, or one that another process creates meanwhile, is never replaced.

    Raises:
        RunFolderError: ``path`` exists (``overwrite=False``), the disk is full or the write fails.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    if not overwrite and path.exists():
        raise _exists_error(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: no silent overwrite
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as err:
        raise disk_error(path, err) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def temp_dir(final: Path) -> Path:
    """A fresh, empty temporary folder beside ``final`` (created with its parents)."""
    tmp = temp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename the complete folder ``tmp`` to ``final``, durably.

    Returns:
        True; False when ``final`` already exists (another writer finished first), in which
        case ``tmp`` is removed and ``final`` left as it is.

    Raises:
        OSError: any other failure (``tmp`` is removed first).
    """
    try:
        fsync_dir(tmp)
        if final.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(final))
        os.rename(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, FileExistsError) or err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False
        raise
    fsync_dir(final.parent)
    return True
