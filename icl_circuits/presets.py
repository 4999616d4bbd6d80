"""Named presets: each a function returning a paper's setting as a RunConfig.

The presets live with their papers (``icl_circuits/papers/NAME/presets.py``, each with a
table parameter | paper | reference code | ours in its docstring) and are found by
:mod:`icl_circuits.registry`. Every preset is also an attribute of this module under its
name with ``-`` as ``_``:

>>> from icl_circuits.presets import demo, get_preset
>>> demo() == get_preset("demo")
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from icl_circuits.config import RunConfig
from icl_circuits.errors import ConfigError
from icl_circuits.registry import presets


def get_preset(name: str) -> RunConfig:
    """The preset ``name``; a one-line error listing the known names otherwise."""
    known = presets()
    if name not in known:
        raise ConfigError(f"preset: expected one of {sorted(known)}, got {name!r}")
    return known[name]()


def describe() -> dict[str, str]:
    """Preset name -> first line of its docstring."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in presets().items()}


def __getattr__(name: str) -> Any:
    if name == "PRESETS":
        return presets()
    fns: dict[str, Callable[[], RunConfig]] = {key.replace("-", "_"): fn for key, fn in presets().items()}
    if name in fns:
        return fns[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["describe", "get_preset"]
