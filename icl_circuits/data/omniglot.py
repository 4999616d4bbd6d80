"""The Omniglot bank (Lake, Salakhutdinov & Tenenbaum 2015) as flattened grey images.

1623 handwritten characters from 50 alphabets, each drawn once by 20 people, 105x105
binary images. :func:`load_omniglot` returns ``[n_characters, n_drawers, size * size]``
float32 with stroke = 1 and background = 0, area-averaged down to ``size x size``;
background-set characters come first, then evaluation-set ones. For example, with the
packaged copy::

    >>> bank = load_omniglot(size=28)
    >>> bank.shape                # character 0 ("0001" in Lake's numbering), drawers 0..19
    torch.Size([1623, 20, 784])

A folder may hold any of three layouts:
    1. The pack shipped in ``icl_circuits/data/omniglot_pack/`` (the default):
       ``images_background.npz`` and ``images_evaluation.npz`` (``images``: bool
       ``[C, 20, 105, 105]``, True = background) with ``.sha256`` files, which are verified.
    2. Lake's folders: ``images_background/<alphabet>/<character>/<cccc_dd>.png`` and the
       same under ``images_evaluation/``.
    3. Lake's zips ``images_background.zip`` and ``images_evaluation.zip`` of that layout.

PNG layouts are decoded with Pillow. Characters are ordered by the character number in
Lake's file names (``0709_01.png`` is character 709, drawer 1), which reproduces the
pack's order, or by (alphabet, character) folder name when the names do not follow that
pattern; drawers are ordered by file name. A missing or corrupt file raises
:class:`~icl_circuits.errors.DataError` naming the file. Results are cached in memory by
(resolved folder, size): treat the returned tensor as read-only.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from icl_circuits.errors import DataError

#: The copy of the pack that ships with the package.
PACK_DIR = Path(__file__).resolve().parent / "omniglot_pack"
SPLITS = ("images_background", "images_evaluation")
PACK_SHAPES = {"images_background": (964, 20, 105, 105), "images_evaluation": (659, 20, 105, 105)}
N_CHARACTERS = 1623
N_DRAWERS = 20
RAW_SIZE = 105

_HINT = "re-copy the Omniglot pack"
_LAKE_NAME = re.compile(r"^(\d+)_(\d+)\.png$")
# Images per pooling call: bounds the float copy to ~90 MB at 105x105.
_CHUNK = 2048


def load_omniglot(path: str | Path | None = None, size: int = 28) -> Tensor:
    """The Omniglot images as ``[n_characters, n_drawers, size * size]`` float32 (stroke = 1).

    Args:
        path: folder holding one of the layouts in the module docstring; None or "" for the
            packaged copy.
        size: side of the downsampled square images (area averaging).

    Raises:
        DataError: a missing, corrupt or inconsistent file (the message names it).
    """
    if size < 1:
        raise ValueError(f"size: expected a positive image side, got {size!r}")
    root = Path(path).expanduser() if path else PACK_DIR
    return _load(str(root.resolve()), int(size))


@functools.lru_cache(maxsize=4)
def _load(root: str, size: int) -> Tensor:
    folder = Path(root)
    readers: list[tuple[str, Callable[[Path], bool], Callable[[Path, str], Tensor]]] = [
        (".npz", Path.is_file, _read_npz),
        ("", Path.is_dir, _read_png_folder),
        (".zip", Path.is_file, _read_zip),
    ]
    for suffix, exists, read in readers:
        files = [folder / f"{split}{suffix}" for split in SPLITS]
        if not any(exists(f) for f in files):
            continue
        for f in files:
            if not exists(f):
                raise DataError(f"{f}: missing (the other Omniglot half is there); {_HINT}")
        if suffix == ".npz":
            # Check both checksums before the slow decompression of either file.
            for f in files:
                _verify_sha256(f)
        parts = [read(f, split) for f, split in zip(files, SPLITS, strict=True)]
        if parts[0].shape[1] != parts[1].shape[1]:
            raise DataError(
                f"{files[1]}: expected {parts[0].shape[1]} drawers per character as in {files[0].name}, "
                f"got {parts[1].shape[1]}"
            )
        return torch.cat([_downsample(p, size) for p in parts])
    raise DataError(
        f"{folder}: no Omniglot pack (expected images_background.npz + images_evaluation.npz with their "
        ".sha256 files, Lake's images_background/ + images_evaluation/ folders, or the two zips)"
    )


def _downsample(stroke: Tensor, size: int) -> Tensor:
    """``[C, D, H, W]`` bool stroke masks -> ``[C, D, size * size]`` float32 area averages."""
    c, d, h, w = stroke.shape
    flat = stroke.reshape(c * d, 1, h, w)
    out = [
        F.adaptive_avg_pool2d(flat[i : i + _CHUNK].float(), size).reshape(-1, size * size)
        for i in range(0, flat.shape[0], _CHUNK)
    ]
    return torch.cat(out).reshape(c, d, size * size)


# ---------------------------------------------------------------------- the pack
def _verify_sha256(file: Path) -> None:
    sha_file = file.with_name(file.name + ".sha256")
    if not sha_file.is_file():
        raise DataError(f"{sha_file}: missing checksum file; {_HINT}")
    words = sha_file.read_text().split()
    expected = words[0].lower() if words else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DataError(f"{sha_file}: expected a sha256 hex digest, got {expected[:80]!r}; {_HINT}")
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DataError(f"{file}: sha256 mismatch (expected {expected}, got {digest.hexdigest()}); {_HINT}")


def _read_npz(file: Path, split: str) -> Tensor:
    try:
        with np.load(file) as npz:
            images = npz["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{file}: unreadable ({type(err).__name__}: {err}); {_HINT}") from None
    want = PACK_SHAPES[split]
    if images.dtype != np.bool_ or images.shape != want:
        raise DataError(f"{file}: expected 'images' bool {want}, got {images.dtype} {images.shape}; {_HINT}")
    return torch.from_numpy(~images)


# ---------------------------------------------------------------------- Lake's PNGs
def _read_png_folder(folder: Path, split: str) -> Tensor:
    groups = {}
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            files = sorted(character.glob("*.png"))
            if files:
                groups[(alphabet.name, character.name)] = [(f.name, f) for f in files]
    return _stack_characters(groups, folder, lambda src: src)


def _read_zip(file: Path, split: str) -> Tensor:
    try:
        archive = zipfile.ZipFile(file)
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{file}: unreadable zip ({err}); {_HINT}") from None
    with archive:
        groups: dict[tuple[str, ...], list[tuple[str, Any]]] = {}
        for name in sorted(archive.namelist()):
            parts = [p for p in name.split("/") if p]
            if name.endswith(".png") and len(parts) >= 3:
                groups.setdefault(tuple(parts[-3:-1]), []).append((parts[-1], name))
        try:
            return _stack_characters(groups, file, lambda src: io.BytesIO(archive.read(src)))
        except zipfile.BadZipFile as err:
            raise DataError(f"{file}: corrupt zip ({err}); {_HINT}") from None


def _stack_characters(groups: dict[tuple[str, ...], list[tuple[str, Any]]], where: Path, opener: Callable) -> Tensor:
    """``{(alphabet, character): [(file name, source)]}`` -> ``[C, D, H, W]`` bool stroke masks."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{where}: reading Omniglot PNGs needs Pillow (pip install pillow)") from None
    if not groups:
        raise DataError(f"{where}: expected <alphabet>/<character>/*.png inside, found no PNG files")
    keys = sorted(groups)
    numbers = {k: [_LAKE_NAME.match(name) for name, _ in groups[k]] for k in keys}
    if all(m is not None for ms in numbers.values() for m in ms):
        keys.sort(key=lambda k: int(numbers[k][0].group(1)))
    n_drawers = len(groups[keys[0]])
    images, shape = [], None
    for key in keys:
        files = sorted(groups[key], key=lambda item: item[0])
        if len(files) != n_drawers:
            raise DataError(
                f"{where}/{'/'.join(key)}: expected {n_drawers} drawings like the first character, got {len(files)}"
            )
        for name, src in files:
            try:
                with Image.open(opener(src)) as img:
                    pixels = np.asarray(img.convert("L"))
            except (OSError, ValueError) as err:
                raise DataError(f"{where}/{'/'.join(key)}/{name}: unreadable PNG ({err})") from None
            if shape is None:
                shape = pixels.shape
            elif pixels.shape != shape:
                raise DataError(f"{where}/{'/'.join(key)}/{name}: expected a {shape} image, got {pixels.shape}")
            images.append(pixels < 128)  # dark pixels are the stroke
    stacked = torch.from_numpy(np.stack(images))
    return stacked.reshape(len(keys), n_drawers, *stacked.shape[1:])
