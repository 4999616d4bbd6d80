"""The paper registry: every folder under ``icl_circuits/papers/`` joins by itself.

A paper is a package ``icl_circuits/papers/NAME/`` whose ``__init__.py`` declares

* ``PRESETS``: preset name -> a function returning its :class:`~icl_circuits.config.RunConfig`;
* ``REPRODUCTIONS``: reproduction name -> ``(module, one-line description)``, the module
  (relative to the paper's package) defining ``run(out, scale, workers, progress)``.

Nothing else lists papers: :func:`papers` finds the packages, and a new folder is a new
paper. The registry imports them by name when first asked, so this module sits below the
papers in the layer order (``docs/architecture.md``) and importing it is cheap.

>>> from icl_circuits.registry import presets, reproductions
>>> "demo" in presets() and "chan2024" in reproductions()
True
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Any

PAPERS_PACKAGE = "icl_circuits.papers"


@dataclasses.dataclass(frozen=True)
class ReproductionEntry:
    """Where a reproduction lives.

    Attributes:
        name: the name ``icl-circuits reproduce`` takes.
        paper: the paper's package name (its folder under ``icl_circuits/papers/``).
        module: the module in that package that defines ``run``.
        description: one line for ``icl-circuits reproduce --list``.
    """

    name: str
    paper: str
    module: str
    description: str

    def load(self) -> ModuleType:
        return importlib.import_module(f"{PAPERS_PACKAGE}.{self.paper}.{self.module}")


@functools.cache
def papers() -> dict[str, ModuleType]:
    """Paper package name -> its imported package, for every folder under ``papers/``."""
    root = importlib.import_module(PAPERS_PACKAGE)
    found = {}
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
        if info.ispkg and not info.name.startswith("_"):
            found[info.name] = importlib.import_module(f"{PAPERS_PACKAGE}.{info.name}")
    return found


def _merged(attr: str) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for paper, module in papers().items():
        for name, value in getattr(module, attr, {}).items():
            if name in out:
                raise RuntimeError(f"{attr[:-1].lower()} {name!r} is declared by both {out[name][0]} and {paper}")
            out[name] = (paper, value)
    return out


@functools.cache
def presets() -> dict[str, Callable[[], Any]]:
    """Preset name -> the function returning its RunConfig, over every paper."""
    return {name: fn for name, (_, fn) in _merged("PRESETS").items()}


@functools.cache
def reproductions() -> dict[str, ReproductionEntry]:
    """Reproduction name -> where it lives, over every paper."""
    return {
        name: ReproductionEntry(name, paper, module, description)
        for name, (paper, (module, description)) in _merged("REPRODUCTIONS").items()
    }
