"""docs/reproductions/ equals what scripts/make_docs.py makes from the presets, settings and claims."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from icl_circuits.registry import reproductions

ROOT = Path(__file__).resolve().parents[1]
#: Committed figures stay small (bytes).
MAX_FIGURE = 200 * 1024


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_docs = _make_docs()


@pytest.mark.parametrize("page", make_docs.pages(), ids=lambda p: p.name)
def test_page_equals_the_generator_output(page):
    text = page.read_text()
    assert make_docs.render(text) == text, f"{page.relative_to(ROOT)} is stale: run `make docs`"


def test_every_reproduction_has_a_claims_table_a_run_time_and_a_page():
    names = set(reproductions())
    tables = {p.stem for p in make_docs.CLAIMS.glob("*.md")}
    assert tables | make_docs.unrun() == names and not tables & make_docs.unrun()
    assert set(make_docs.run_times()) == names
    included = {m.group(3) for page in make_docs.pages() for m in make_docs.BLOCK.finditer(page.read_text())}
    assert names <= included


def test_claims_tables_are_claims_md_tables():
    for path in make_docs.CLAIMS.glob("*.md"):
        lines = path.read_text().splitlines()
        assert lines[:2] == ["| claim | paper | ours | holds |", "| --- | --- | --- | --- |"], path.name
        assert all(
            line.startswith("| ") and line.rstrip().endswith(("| yes |", "| **no** |", "| – |")) for line in lines[2:]
        )


def test_setup_table_comes_from_the_preset_table():
    rows = {r["parameter"]: r for r in make_docs.preset_table("chan2024-stylized")}
    assert "lecun_normal" in rows["label embedding"]["reference"]
    assert rows["positions"]["reference"].count("\\|") == 1  # a pipe inside a cell is escaped
    table = make_docs.setup_table("chan2024")
    steps = next(line for line in table.splitlines() if line.startswith("| steps |"))
    assert "10000 (`train.steps`)" in steps and "50000 (`train.steps`)" in steps  # cpu and full overrides
    assert make_docs.preset_table("nguyen-reddy2024")  # a Markdown table in the docstring
    assert make_docs.preset_table("demo") == []  # no table: no rows


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    page = tmp_path / "x.md"
    page.write_text("<!-- make_docs: runtime chan2024 -->\nold\n<!-- /make_docs -->\n")
    monkeypatch.setattr(make_docs, "pages", lambda: [page])
    assert make_docs.main(["--check"]) == 1
    assert make_docs.main([]) == 0 and "cpu run time" in page.read_text()
    assert make_docs.main(["--check"]) == 0


def test_figures_exist_and_are_small():
    docs = [ROOT / "README.md", *make_docs.pages()]
    for doc in docs:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", doc.read_text()):
            path = (doc.parent / target).resolve()
            assert path.exists(), f"{doc.name}: {target} missing"
            assert path.stat().st_size <= MAX_FIGURE, f"{target}: {path.stat().st_size} bytes"
