"""Dependencies run one way (docs/architecture.md, "Layers"), checked on every test run.

The contracts live in pyproject.toml (``[tool.importlinter]``); ``lint-imports`` prints the
import chain that breaks one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("icl_circuits", "probes")
#: The data families' names as ``data.family`` takes them.
FAMILIES = ("gaussian", "stylized", "classbank")


def _modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def test_import_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e '.[dev]')")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"lint-imports: a layer contract is broken\n{run.stdout}\n{run.stderr}"
    assert "0 broken" in run.stdout, run.stdout


def test_no_private_transformer_lens_module_is_imported():
    """Only TransformerLens's public modules: a private one may change in any release."""
    found = []
    for path in _modules(*PACKAGES):
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "transformer_lens" and any(p.startswith("_") for p in parts[1:]):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not found, "private TransformerLens imports:\n" + "\n".join(found)


def _names_a_family(node: ast.AST) -> bool:
    """``x == "stylized"``, ``{"family": "gaussian"}``, ``family="classbank"`` or ``FAMILIES["..."]``."""
    is_family = lambda n: isinstance(n, ast.Constant) and n.value in FAMILIES  # noqa: E731
    if isinstance(node, ast.Compare):
        return any(is_family(n) for n in [node.left, *node.comparators])
    if isinstance(node, ast.Dict):
        return any(
            isinstance(k, ast.Constant) and k.value == "family" and is_family(v)
            for k, v in zip(node.keys, node.values, strict=True)
        )
    if isinstance(node, ast.keyword):
        return node.arg == "family" and is_family(node.value)
    if isinstance(node, ast.Subscript):
        return is_family(node.slice)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(f"family={f}" in node.value or f"family == {f!r}" in node.value for f in FAMILIES)
    return False


def test_no_module_outside_data_names_a_family():
    """Only icl_circuits/data/ names or branches on a family; the rest asks the data-family interface.

    (A bank called ``gaussian`` is not a family: only comparisons, ``family`` keys and
    arguments, and lookups by a family name count.)
    """
    data = ROOT / "icl_circuits" / "data"
    found = []
    for path in _modules(*PACKAGES):
        if data in path.parents:
            continue
        for node in ast.walk(_tree(path)):
            if _names_a_family(node):
                found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}")
    assert not found, "data-family names outside icl_circuits/data/:\n" + "\n".join(found)
