"""Omniglot loading: the packaged pack, Lake's PNG layouts, and one-line errors for bad files."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from icl_circuits.data.omniglot import PACK_DIR, load_omniglot
from icl_circuits.errors import DataError

PACK_FILES = [
    "images_background.npz",
    "images_background.npz.sha256",
    "images_evaluation.npz",
    "images_evaluation.npz.sha256",
]


def test_packaged_pack_loads_and_caches():
    bank = load_omniglot(size=28)
    assert bank.shape == (1623, 20, 784) and bank.dtype == torch.float32
    assert 0 <= bank.min() and bank.max() <= 1
    assert 0.05 < bank.mean().item() < 0.12, "strokes are a small share of the pixels"
    assert load_omniglot(None, 28) is bank and load_omniglot(str(PACK_DIR), 28) is bank, "cached"
    # character 964 is the first evaluation character; compare with a direct area average
    with np.load(PACK_DIR / "images_evaluation.npz") as npz:
        raw = torch.from_numpy(~npz["images"][0, :2]).float()[:, None]
    assert torch.allclose(bank[964, :2], F.adaptive_avg_pool2d(raw, 28).flatten(1))
    for name in ("LICENSE", "README.md", *PACK_FILES):
        assert (PACK_DIR / name).is_file(), name


@pytest.fixture
def pack_copy(tmp_path):
    for name in PACK_FILES:
        shutil.copy(PACK_DIR / name, tmp_path / name)
    return tmp_path


def _one_line_error(path, match: str) -> str:
    with pytest.raises(DataError) as err:
        load_omniglot(path, size=7)
    msg = str(err.value)
    assert match in msg and "\n" not in msg, msg
    return msg


def test_corrupt_pack_names_the_file(pack_copy):
    target = pack_copy / "images_evaluation.npz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    msg = _one_line_error(pack_copy, "sha256 mismatch")
    assert str(target) in msg and "re-copy" in msg


def test_missing_files_name_the_file(pack_copy, tmp_path_factory):
    (pack_copy / "images_background.npz.sha256").unlink()
    assert str(pack_copy / "images_background.npz.sha256") in _one_line_error(pack_copy, "missing checksum")
    other = tmp_path_factory.mktemp("half")
    shutil.copy(PACK_DIR / "images_background.npz", other / "images_background.npz")
    assert str(other / "images_evaluation.npz") in _one_line_error(other, "missing")
    empty = tmp_path_factory.mktemp("empty")
    assert str(empty) in _one_line_error(empty, "no Omniglot pack")
    with pytest.raises(ValueError, match="size"):
        load_omniglot(size=0)


def _write_lake_layout(root, drawers: int = 3, side: int = 10) -> dict[int, np.ndarray]:
    """A tiny Lake-style tree; returns character number -> [drawers, side, side] stroke masks."""
    from PIL import Image

    # Folder names sort differently from Lake's character numbers on purpose.
    layout = {
        "images_background": {"Zeta": {"character01": 1, "character02": 2}, "Alpha": {"character01": 3}},
        "images_evaluation": {"Beta": {"character01": 4}},
    }
    rng = np.random.default_rng(0)
    strokes = {}
    for split, alphabets in layout.items():
        for alphabet, chars in alphabets.items():
            for char, number in chars.items():
                folder = root / split / alphabet / char
                folder.mkdir(parents=True)
                masks = rng.random((drawers, side, side)) < 0.3
                strokes[number] = masks
                for k, mask in enumerate(masks):
                    # Lake's PNGs are 1-bit with a white background; the stroke is black.
                    Image.fromarray(~mask).convert("1").save(folder / f"{number:04d}_{k + 1:02d}.png")
    return strokes


def test_lake_folder_layout(tmp_path):
    strokes = _write_lake_layout(tmp_path)
    bank = load_omniglot(tmp_path, size=5)
    assert bank.shape == (4, 3, 25)
    for number in range(1, 5):
        want = F.adaptive_avg_pool2d(torch.from_numpy(strokes[number]).float()[:, None], 5).flatten(1)
        assert torch.allclose(bank[number - 1], want), f"character {number} in Lake's order"
    full = load_omniglot(tmp_path, size=10)
    assert torch.equal(full[0, 1], torch.from_numpy(strokes[1][1]).float().flatten()), "lossless at full size"


def test_lake_zip_layout_matches_folders(tmp_path):
    _write_lake_layout(tmp_path / "tree")
    zipped = tmp_path / "zips"
    zipped.mkdir()
    for split in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(zipped / f"{split}.zip", "w") as zf:
            for png in sorted((tmp_path / "tree" / split).rglob("*.png")):
                zf.write(png, png.relative_to(tmp_path / "tree").as_posix())
    assert torch.equal(load_omniglot(zipped, size=5), load_omniglot(tmp_path / "tree", size=5))


def test_lake_layout_inconsistent_drawers(tmp_path):
    _write_lake_layout(tmp_path)
    extra = tmp_path / "images_background" / "Alpha" / "character01" / "0003_03.png"
    extra.unlink()
    msg = _one_line_error(tmp_path, "expected 3 drawings")
    assert "Alpha/character01" in msg
