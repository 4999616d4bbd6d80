"""Reproductions of the seed papers' experiments: ``icl-circuits reproduce NAME``.

Each module reproduces one paper at three scales (see :mod:`.common`): ``smoke`` for the
tests, ``cpu`` (default; at most 30 minutes on 2 cores) and ``full`` (the paper's scale).
``docs/reproductions.md`` puts their numbers next to the papers'.

>>> from icl_circuits.reproduce import REPRODUCTIONS, reproduce
>>> sorted(REPRODUCTIONS)  # doctest: +NORMALIZE_WHITESPACE
['chan2024', 'chan2024-ablation', 'chan2024-llm', 'chan2024-omniglot', 'nguyen-reddy2024', 'reddy2023', 'singh2023', 'singh2024']
>>> rep = reproduce("singh2024", "out/singh2024", scale="smoke")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from pathlib import Path

from icl_circuits.errors import ConfigError
from icl_circuits.reproduce.common import SCALES, Claim, Reproduction, check_scale, timed, write_outputs

#: name -> (module under icl_circuits.reproduce, one-line description)
REPRODUCTIONS: dict[str, tuple[str, str]] = {
    "chan2024": ("chan2024", "Chan et al. 2024: training-set size sweep on stylized data + the gating model"),
    "chan2024-ablation": ("chan2024_ablation", "Chan et al. 2024: which setting carries rare-class ICL"),
    "chan2024-omniglot": ("chan2024_omniglot", "Chan et al. 2024: the stylized sweep with Omniglot exemplars"),
    "chan2024-llm": ("chan2024_llm", "Chan et al. 2024 §5: fine-tuning SmolLM2-135M to memorise trades away ICL"),
    "nguyen-reddy2024": ("nguyen_reddy2024", "Nguyen & Reddy 2024: K* vs context length, t_ICL, bimodality"),
    "singh2023": ("singh2023", "Singh et al. 2023: transient ICL, and L2 keeping it"),
    "reddy2023": ("reddy2023", "Reddy 2023: (K, B) phase diagram and the abrupt induction head"),
    "singh2024": ("singh2024", "Singh et al. 2024: induction heads in 2x8 attention-only models"),
}


def reproduce(
    name: str, out: Path | str, scale: str = "cpu", workers: int | None = None, progress: bool = True
) -> Reproduction:
    """Run reproduction ``name`` at ``scale`` into ``out``; write and return its results.

    Rerunning into the same folder resumes: finished runs are not trained again.
    """
    if name not in REPRODUCTIONS:
        raise ConfigError(f"reproduce: expected one of {', '.join(sorted(REPRODUCTIONS))}, got {name!r}")
    check_scale(scale)
    module = importlib.import_module(f"icl_circuits.reproduce.{REPRODUCTIONS[name][0]}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = timed(lambda: module.run(out, scale=scale, workers=workers, progress=progress))
    write_outputs(out, rep)
    return rep


__all__ = ["REPRODUCTIONS", "SCALES", "Claim", "Reproduction", "reproduce"]
