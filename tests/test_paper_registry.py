"""Adding a paper is one new folder: the registry finds its presets and reproductions."""

from __future__ import annotations

import sys
import textwrap

import pytest

import icl_circuits.papers
from icl_circuits import registry
from icl_circuits.errors import ConfigError
from icl_circuits.presets import describe, get_preset
from icl_circuits.reproduce import reproduce

PAPER_INIT = '''
"""Toy 2026: a paper added as one folder."""

from icl_circuits.papers.toy2026.presets import toy

PRESETS = {"toy2026": toy}
REPRODUCTIONS = {"toy2026": ("reproduce", "Toy 2026: one claim, no training")}
'''
PAPER_PRESETS = '''
"""The preset of Toy 2026."""

from icl_circuits.presets import get_preset


def toy():
    """Toy 2026: the demo with 32 classes."""
    return get_preset("demo").replace(name="toy2026", data=get_preset("demo").data.replace(n_classes=32))
'''
PAPER_REPRODUCE = """
from icl_circuits.reproduce.common import Claim, Reproduction


def run(out, scale="cpu", workers=None, progress=True):
    return Reproduction("toy2026", scale, {}, claims=[Claim("exists", "yes", "yes", True)])
"""


@pytest.fixture
def toy_paper(tmp_path, monkeypatch):
    root = tmp_path / "extra_papers"
    folder = root / "toy2026"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(PAPER_INIT))
    (folder / "presets.py").write_text(textwrap.dedent(PAPER_PRESETS))
    (folder / "reproduce.py").write_text(textwrap.dedent(PAPER_REPRODUCE))
    monkeypatch.setattr(icl_circuits.papers, "__path__", [*icl_circuits.papers.__path__, str(root)])
    for fn in (registry.papers, registry.presets, registry.reproductions):
        fn.cache_clear()
    yield
    for name in [m for m in sys.modules if m.startswith("icl_circuits.papers.toy2026")]:
        del sys.modules[name]
    for fn in (registry.papers, registry.presets, registry.reproductions):
        fn.cache_clear()


def test_a_new_folder_is_a_new_paper(toy_paper, tmp_path):
    assert get_preset("toy2026").data.n_classes == 32
    assert describe()["toy2026"] == "Toy 2026: the demo with 32 classes."
    rep = reproduce("toy2026", tmp_path / "out", scale="smoke", progress=False)
    assert [c.holds for c in rep.claims] == [True]
    assert (tmp_path / "out" / "claims.md").exists()


def test_registry_is_complete_without_the_folder():
    assert "toy2026" not in registry.presets()
    with pytest.raises(ConfigError, match=r"^preset: expected one of"):
        get_preset("toy2026")
    assert set(registry.papers()) == {"chan2024", "nguyen_reddy2024", "reddy2023", "singh2023", "singh2024"}


def test_every_preset_builds_and_has_a_letters_line():
    for name, fn in registry.presets().items():
        cfg = fn()
        assert cfg.name == name
        assert "Letters:" in (fn.__doc__ or ""), name
