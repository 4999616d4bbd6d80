"""Reproductions of the seed papers' experiments: ``icl-circuits reproduce NAME``.

Each reproduction lives in its paper's folder (``icl_circuits/papers/NAME/``, found by
:mod:`icl_circuits.registry`) and runs at three scales (see :mod:`.common`): ``smoke`` for
the tests, ``cpu`` (default; sized for 2 cores, run times in docs/reproductions/) and ``full`` (the paper's
scale). This package is the framework they share. ``docs/reproductions/`` puts their
numbers next to the papers'.

>>> from icl_circuits.reproduce import REPRODUCTIONS, reproduce
>>> sorted(REPRODUCTIONS)  # doctest: +NORMALIZE_WHITESPACE
['chan2024', 'chan2024-ablation', 'chan2024-llm', 'chan2024-omniglot', 'nguyen-reddy2024', 'nguyen-reddy2024-mechanism',
 'reddy2023', 'singh2023', 'singh2023-competition', 'singh2023-competition-threshold',
 'singh2023-threshold-l2', 'singh2024']
>>> rep = reproduce("singh2024", "out/singh2024", scale="smoke")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from icl_circuits.errors import ConfigError
from icl_circuits.registry import reproductions
from icl_circuits.reproduce.common import SCALES, Claim, Reproduction, check_scale, timed, write_outputs


def reproduce(
    name: str, out: Path | str, scale: str = "cpu", workers: int | None = None, progress: bool = True
) -> Reproduction:
    """Run reproduction ``name`` at ``scale`` into ``out``; write and return its results.

    Rerunning into the same folder resumes: finished runs are not trained again.
    """
    known = reproductions()
    if name not in known:
        raise ConfigError(f"reproduce: expected one of {', '.join(sorted(known))}, got {name!r}")
    check_scale(scale)
    module = known[name].load()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = timed(lambda: module.run(out, scale=scale, workers=workers, progress=progress))
    write_outputs(out, rep)
    return rep


def __getattr__(name: str) -> Any:
    if name == "REPRODUCTIONS":  # name -> (module, one-line description), over every paper
        return {key: (e.module, e.description) for key, e in reproductions().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REPRODUCTIONS", "SCALES", "Claim", "Reproduction", "reproduce"]
