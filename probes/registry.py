"""The probe registry: every analysis of ``analyze_run`` and ``icl-circuits analyze`` is a named, versioned entry.

A :class:`Probe` says what it computes at one checkpoint (``compute``: a tidy table), which
metric names it produces, and optionally its part of the report (``report``: figures written
into the report folder and summary lines). :func:`probes.over_training.analyze_run` runs the
``compute`` of every registered probe (or a selection) at every checkpoint, and
:func:`probes.report.write_report` calls every probe's ``report``.

The analysis cache key derives from the names and versions of the probes that ran (and the
analysis parameters): bumping one probe's ``version`` recomputes the cached tables, and only
that probe's module changes.

Adding a probe (see ``docs/architecture.md``, "Adding a probe")::

    from probes.registry import Probe, register

    def my_score(model, source, evals, params, step):
        ...  # a DataFrame with columns split, metric, value (and layer, head_index per head)

    register(Probe("my_score", version=1, metrics=("my_score",), compute=my_score))

The built-in probes live in :mod:`probes.builtin` (imported by ``import probes``, which
registers them); a probe of your own registers when its module is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from icl_circuits.errors import ICLError

if TYPE_CHECKING:
    from probes.circuits import FoundCircuit
    from probes.competition import Transition


@dataclasses.dataclass(frozen=True)
class ReportContext:
    """What a probe's report section gets from :func:`probes.report.write_report`.

    Attributes:
        run: the run folder (read only).
        cfg: its :class:`icl_circuits.config.RunConfig`.
        source: its data source (``icl_split``, ``iwl_split``, ``splits``, ``n_pairs``...).
        df: the probe table of :func:`probes.over_training.analyze_run` (every probe's rows;
            ``attrs``: ``circuit``, ``params``, ``skipped``).
        transitions: ICL / IWL emergence detection (:func:`probes.competition.summarize`).
        cache: the analysis cache folder (``RUN/analysis`` or ``--out``), for a probe that
            caches tables of its own.
        out: the report folder being written: figures and tables go here.
        progress: whether to show progress bars.
    """

    run: Path
    cfg: Any
    source: Any
    df: pd.DataFrame
    transitions: dict[str, Transition]
    cache: Path
    out: Path
    progress: bool = False

    @property
    def circuit(self) -> FoundCircuit:
        """The ICL circuit the analysis ablated (given, or found at the last checkpoint)."""
        return self.df.attrs["circuit"]

    @property
    def steps(self) -> list[int]:
        """The analysed (readable) checkpoint steps."""
        return sorted(int(s) for s in set(self.df.step))


#: ``compute(model, source, evals, params, step)``: the tidy rows of one checkpoint.
Compute = Callable[[Any, Any, dict, Any, int], pd.DataFrame]
#: ``report(ctx)``: write figures / tables into ``ctx.out``; return the summary lines.
Report = Callable[[ReportContext], list[str]]


@dataclasses.dataclass(frozen=True)
class Probe:
    """One named, versioned analysis.

    Attributes:
        name: unique name (``analyze_run(probes=[...])`` selects by it).
        version: bump whenever what the probe computes changes: cached tables that hold its
            rows are then recomputed. Nothing else needs bumping.
        metrics: the metric names its rows carry (column ``metric``); every one is checked.
        compute: ``(model, source, evals, params, step) -> DataFrame`` at one checkpoint:
            ``model`` a bridge in eval mode, ``source`` the run's data source, ``evals`` its
            fixed evaluation batches by split, ``params`` the
            :class:`probes.over_training.AnalysisParams`. Columns: ``split, metric, value``;
            optionally ``condition`` (default ``clean``) and ``layer, head_index`` (per-head
            rows; default ``<NA>``). ``step`` is filled in. None: a probe with a report
            section only (it computes and caches what it needs itself).
        report: its section of the ``analyze`` report (see :class:`ReportContext`); None: none.
        report_rank: where its summary lines go among the other sections (lower first; ties
            in registration order). The built-ins use 10, 20 and 30.
        description: one line for listings and docs.
        opt_in: run only when named (``analyze --with NAME``, ``probes=[...]``), never by
            default: for a costly probe (the LLC samples thousands of SGLD steps per checkpoint).
    """

    name: str
    version: int
    metrics: tuple[str, ...] = ()
    compute: Compute | None = None
    report: Report | None = None
    report_rank: int = 100
    description: str = ""
    opt_in: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"probe name: expected a non-empty string, got {self.name!r}")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 0:
            raise ValueError(f"probe {self.name}: version must be a non-negative int, got {self.version!r}")
        if self.compute is None and self.report is None:
            raise ValueError(f"probe {self.name}: give compute, report or both")
        if self.compute is not None and not self.metrics:
            raise ValueError(f"probe {self.name}: a probe that computes must name its metrics")
        object.__setattr__(self, "metrics", tuple(self.metrics))


_REGISTRY: dict[str, Probe] = {}


def register(probe: Probe, replace: bool = False) -> Probe:
    """Add ``probe`` to the registry (in order: its rows follow those of earlier probes).

    Args:
        probe: the probe.
        replace: allow replacing the probe of the same name (it keeps its place).

    Raises:
        ValueError: the name is taken (and not ``replace``), or one of its metric names
            is produced by another probe.
    """
    if probe.name in _REGISTRY and not replace:
        raise ValueError(f"probe {probe.name!r} is already registered (pass replace=True to replace it)")
    for other in _REGISTRY.values():
        shared = set(other.metrics) & set(probe.metrics)
        if other.name != probe.name and shared:
            raise ValueError(f"probe {probe.name}: metric(s) {sorted(shared)} already produced by probe {other.name!r}")
    _REGISTRY[probe.name] = probe
    return probe


def unregister(name: str) -> Probe:
    """Remove the probe ``name`` from the registry and return it."""
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise ICLError(f"probes: no probe named {name!r} (registered: {', '.join(_REGISTRY)})") from None


@contextlib.contextmanager
def registered(probe: Probe, replace: bool = False) -> Iterator[Probe]:
    """Register ``probe`` for the ``with`` block; the registry is restored after (order included).

    With ``replace=True`` it stands in for the registered probe of the same name, e.g. the
    same probe with another version.
    """
    saved = dict(_REGISTRY)
    register(probe, replace=replace)
    try:
        yield probe
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


def get(name: str) -> Probe:
    """The registered probe ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ICLError(f"probes: no probe named {name!r} (registered: {', '.join(_REGISTRY)})") from None


def all_probes() -> list[Probe]:
    """Every registered probe, in registration order."""
    return list(_REGISTRY.values())


def select(names: Sequence[str] | None = None) -> list[Probe]:
    """The probes named ``names`` (default: all but the opt-in ones), in registration order; unknown names are an error."""
    if names is None:
        return [p for p in all_probes() if not p.opt_in]
    if isinstance(names, str):
        names = [names]
    wanted = set(names)
    for name in names:
        get(name)
    return [p for p in _REGISTRY.values() if p.name in wanted]


def metric_names(names: Sequence[str] | None = None) -> dict[str, str]:
    """``{metric: probe name}`` of every metric the probes (default: all, opt-in ones included) produce."""
    chosen = all_probes() if names is None else select(names)
    return {metric: p.name for p in chosen for metric in p.metrics}


def versions(names: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """``[(name, version)]`` of the probes (default: all), in registration order: part of the cache key."""
    return [(p.name, p.version) for p in select(names)]
