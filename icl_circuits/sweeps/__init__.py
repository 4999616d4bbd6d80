"""Sweeps: grids of ordinary runs, on this machine's cores or on a Ray cluster.

>>> from icl_circuits.sweeps import SweepSpec, run_sweep, read_results, phase_diagram
>>> spec = SweepSpec(base="demo", overrides=("train.steps=300",), grid={"data.n_classes": [32, 1024], "seed": [0, 1]})
>>> result = run_sweep(spec, "sweeps/k")                        # doctest: +SKIP
>>> fig = phase_diagram(read_results("sweeps/k"), x="data.n_classes", split="IC")  # doctest: +SKIP

See ``docs/sweeps.md`` and ``icl-circuits sweep --help``.
"""

from __future__ import annotations

from icl_circuits.sweeps.backends import LocalBackend, RayBackend, make_backend
from icl_circuits.sweeps.phase import phase_diagram, phase_table
from icl_circuits.sweeps.spec import Point, SweepSpec, build_points, load_spec, parse_axis_arg, parse_values
from icl_circuits.sweeps.sweep import (
    SweepResult,
    aggregate,
    load_sweep_spec,
    read_results,
    run_sweep,
    run_sweeps,
)

__all__ = [
    "LocalBackend",
    "Point",
    "RayBackend",
    "SweepResult",
    "SweepSpec",
    "aggregate",
    "build_points",
    "load_spec",
    "load_sweep_spec",
    "make_backend",
    "parse_axis_arg",
    "parse_values",
    "phase_diagram",
    "phase_table",
    "read_results",
    "run_sweep",
    "run_sweeps",
]
