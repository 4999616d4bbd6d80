"""icl-circuits: train small TransformerLens models on bursty data and study ICL vs IWL circuits.

The everyday names, in one import::

    import icl_circuits as ic

    run = ic.train(ic.presets.demo(), "checkpoints/demo")   # a Run; resumes if the folder exists
    model = run.load_model()                               # TransformerBridge, latest good checkpoint
    ic.evaluate_split(model, run.source, "IC", n=256)
    table = ic.analyze_run(run)                            # probes at every checkpoint, tidy
    study = ic.find_circuits(run, split="IC", method="eap-ig")

Names are imported on first use, so ``import icl_circuits`` itself loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> (module, attribute); ``None``: the module itself.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "presets": ("icl_circuits.presets", None),
    "get_preset": ("icl_circuits.presets", "get_preset"),
    "RunConfig": ("icl_circuits.config", "RunConfig"),
    "apply_overrides": ("icl_circuits.config", "apply_overrides"),
    "train": ("icl_circuits.training.entry", "train"),
    "Run": ("icl_circuits.runs.handle", "Run"),
    "evaluate_split": ("icl_circuits.metrics", "evaluate_split"),
    "analyze_run": ("probes.over_training", "analyze_run"),
    "find_circuits": ("probes.circuit_study", "find_circuits"),
    "scrub_html": ("probes.viz", "scrub_html"),
}

__all__ = [
    "Run",
    "RunConfig",
    "__version__",
    "analyze_run",
    "apply_overrides",
    "evaluate_split",
    "find_circuits",
    "get_preset",
    "presets",
    "scrub_html",
    "train",
]

if TYPE_CHECKING:  # for type checkers and editors; at run time, __getattr__ imports on first use
    from icl_circuits import presets
    from icl_circuits.config import RunConfig, apply_overrides
    from icl_circuits.metrics import evaluate_split
    from icl_circuits.presets import get_preset
    from icl_circuits.runs.handle import Run
    from icl_circuits.training.entry import train
    from probes.circuit_study import find_circuits
    from probes.over_training import analyze_run
    from probes.viz import scrub_html


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
