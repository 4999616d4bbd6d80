"""The config of one intervention during training (``train.interventions``).

An intervention names what it acts on (``targets``), how (``kind``, ``method``) and over which
optimiser steps (``start`` <= step < ``end``). It is part of the run's config, so it is stored
in ``config.json``, a resumed run applies it again exactly, and it is set like any other field:
from Python (``TrainConfig(interventions=(InterventionConfig(...),))``), a JSON config file or a
CLI override::

    train.interventions='[{"kind": "ablate", "targets": ["L1H0"], "method": "mean", "start": 1000}]'

What each kind does, and the hooks it uses, is :mod:`icl_circuits.training.interventions`.
Whether a named head or module exists is checked against the model when training starts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from icl_circuits.configbase import FrozenConfig, require

#: A head target: ``L{layer}H{head}``, e.g. ``L1H3``.
HEAD_RE = re.compile(r"L(\d+)H(\d+)")
#: The ``path`` sender that is the query's own input (token embedding plus position).
EMBED = "embed"
#: A ``freeze`` target that is rows ``a`` to ``b - 1`` of one parameter: ``NAME[a:b]``.
ROWS_RE = re.compile(r"([A-Za-z_][\w.]*)\[(\d+):(\d+)\]")
#: ``method`` values per ``kind`` (the first is the default that ``""`` stands for).
METHODS = {
    "ablate": ("zero", "mean"),
    "pattern": ("previous_token", "induction"),
    "path": ("zero", "mean"),
    "freeze": ("",),
}


def parse_head(target: str) -> tuple[int, int] | None:
    """``(layer, head)`` of a head target ``L{layer}H{head}``; None for anything else."""
    match = HEAD_RE.fullmatch(target)
    return (int(match[1]), int(match[2])) if match else None


def parse_rows(target: str) -> tuple[str, int, int] | None:
    """``(parameter name, first row, end row)`` of a row target ``NAME[a:b]``; None for anything else."""
    match = ROWS_RE.fullmatch(target)
    return (match[1], int(match[2]), int(match[3])) if match else None


@dataclasses.dataclass(frozen=True)
class InterventionConfig(FrozenConfig):
    """One intervention during training.

    Attributes:
        kind: ``ablate`` (heads' outputs replaced through ``hook_z``), ``pattern`` (heads'
            attention patterns clamped through ``hook_pattern``), ``path`` (a sender's direct
            path into the readout at the query position removed) or ``freeze`` (weights kept
            bitwise unchanged).
        targets: ``ablate``, ``pattern``: heads ``L{layer}H{head}``. ``path``: senders, heads or
            ``embed`` (the query token's embedding plus its position). ``freeze``: heads (their
            rows of W_Q, W_K, W_V and the biases, their columns of W_O), parameter-name
            prefixes of the model (``layers.0.attn``, ``head``, ``tok_embed`` ...) or rows
            ``a`` to ``b - 1`` of one parameter, ``NAME[a:b]`` (``head.mlp.0.weight[0:195]``:
            the input weights of 195 hidden units of the readout).
        method: ``ablate`` and ``path``: ``zero`` (default) or ``mean`` (the mean over the
            step's batch, per position, detached). ``pattern``: ``previous_token`` or
            ``induction``. ``freeze``: empty.
        start: first optimiser step it acts on (0-based: step ``t`` makes checkpoint ``t + 1``).
        end: first step it no longer acts on; 0 = until the end of training.
    """

    kind: Literal["ablate", "pattern", "path", "freeze"] = "ablate"
    targets: tuple[str, ...] = ()
    method: str = ""
    start: int = 0
    end: int = 0

    def validate(self) -> None:
        require(len(self.targets) > 0, "targets", "at least one head or module", list(self.targets))
        require(
            self.method in METHODS[self.kind] or (self.method == "" and self.kind != "pattern"),
            "method",
            f"one of {[m for m in METHODS[self.kind] if m]} for kind {self.kind}"
            if self.kind != "freeze"
            else "empty for kind freeze",
            self.method,
        )
        require(self.start >= 0, "start", "a step >= 0", self.start)
        require(
            self.end == 0 or self.end > self.start, "end", f"0 (the end) or a step after start={self.start}", self.end
        )
        for target in self.targets:
            if self.kind in ("ablate", "pattern"):
                require(parse_head(target) is not None, "targets", "heads written L{layer}H{head}, e.g. L1H0", target)
            elif self.kind == "path":
                require(
                    parse_head(target) is not None or target == EMBED,
                    "targets",
                    f"{EMBED!r} or heads written L{{layer}}H{{head}}",
                    target,
                )
            elif "[" in target:
                rows = parse_rows(target)
                require(rows is not None and rows[2] > rows[1], "targets", "rows written NAME[a:b] with a < b", target)
            else:
                require(bool(target), "targets", "a head L{layer}H{head} or a parameter-name prefix", target)

    @property
    def resolved_method(self) -> str:
        """``method`` with the default filled in (``zero`` for ``ablate`` and ``path``)."""
        return self.method or METHODS[self.kind][0]

    def active(self, step: int) -> bool:
        """Whether it acts on optimiser step ``step``."""
        return self.start <= step and (self.end == 0 or step < self.end)
