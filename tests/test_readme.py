"""The README's Python API section runs as written (on a tiny run instead of the demo)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

import icl_circuits.presets
from tests.conftest import tiny_config

README = Path(__file__).parents[1] / "README.md"


def python_section_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python\n") : text.index("\n## ", text.index("## Python\n") + 1)]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_python_api_runs(tmp_path, monkeypatch):
    blocks = python_section_blocks()
    assert len(blocks) == 3
    code = "\n".join(blocks)
    for needed in ("import icl_circuits as ic", "iter_checkpoints", "load_model", "evaluate_split", "ablate_heads"):
        assert needed in code, f"the README shows {needed}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(icl_circuits.presets, "demo", lambda: tiny_config(steps=12, n_checkpoints=3, eval_size=32))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    table = namespace["table"]
    assert isinstance(table, pd.DataFrame) and {"ICL", "IWL"} <= set(table.columns)
    rows = pd.DataFrame(namespace["rows"])
    assert set(rows.condition) == {"clean", "L1H0 ablated"} and rows.step.nunique() == 3
    assert (tmp_path / "checkpoints" / "demo" / "config.json").exists()
