"""Sweep specs: a base preset, fixed overrides and grid axes, parsed without ``eval``.

A spec file (TOML or JSON)::

    base = "demo"
    overrides = ["train.steps=300"]

    [grid]
    "data.n_classes" = [32, 1024]
    "data.burst" = [0, 4]
    seed = "range(3)"
    "train.lr" = "[10**-i for i in range(2, 5)]"

Axis values are a list, or a string holding a list, ``range(a[, b[, c]])`` or a list
comprehension over ranges and lists with arithmetic (``[2**i for i in range(5, 14)]``).
Strings are parsed with :mod:`ast` and evaluated by a small interpreter that knows only
numbers, strings, lists, ``range``, arithmetic and comprehensions: nothing is ever ``eval``-ed.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import math
import operator
import re
import tomllib
from pathlib import Path
from typing import Any

from icl_circuits.config import RunConfig, apply_overrides
from icl_circuits.errors import ConfigError
from icl_circuits.presets import get_preset

#: Bump when sweep.json changes incompatibly.
SPEC_VERSION = 1
#: Most grid points one sweep may have, and most values one axis expression may produce.
MAX_POINTS = 100_000
MAX_VALUES = 10_000
_SPEC_KEYS = ("base", "overrides", "grid")
_SAFE = re.compile(r"[^A-Za-z0-9._+\-]")
_MAX_NAME = 200


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """What a sweep computes: every combination of the grid's axis values, applied to ``base``.

    Attributes:
        base: preset name (``icl-circuits presets``).
        overrides: fixed ``key=value`` overrides applied to every point before the axes.
        grid: axis key -> its values, in axis order (the first axis varies slowest).
    """

    base: str
    overrides: tuple[str, ...] = ()
    grid: dict[str, list] = dataclasses.field(default_factory=dict)

    @property
    def axes(self) -> list[str]:
        return list(self.grid)

    def to_dict(self) -> dict:
        return {
            "format_version": SPEC_VERSION,
            "base": self.base,
            "overrides": list(self.overrides),
            "grid": {k: list(v) for k, v in self.grid.items()},
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "spec") -> SweepSpec:
        """Parse a spec table (from TOML, JSON or ``sweep.json``); one-line errors name ``where``."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table with base, overrides and grid")
        raw = dict(raw)
        version = raw.pop("format_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ConfigError(f"{where}: sweep format {version!r}, this icl-circuits reads format {SPEC_VERSION}")
        unknown = sorted(set(raw) - set(_SPEC_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_SPEC_KEYS)})")
        base = raw.get("base")
        if not isinstance(base, str):
            raise ConfigError(f"{where}: base: expected a preset name (icl-circuits presets), got {base!r}")
        overrides = raw.get("overrides", [])
        if isinstance(overrides, str) or not isinstance(overrides, list | tuple):
            raise ConfigError(f"{where}: overrides: expected a list of key=value strings, got {overrides!r}")
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(
                    f"{where}: overrides: expected key=value strings (e.g. data.n_classes=32), got {item!r}"
                )
        grid_raw = raw.get("grid", {})
        if not isinstance(grid_raw, dict):
            raise ConfigError(f"{where}: grid: expected a table of axis = values, got {grid_raw!r}")
        grid = {key: axis_values(key, value) for key, value in _flatten(grid_raw).items()}
        if not grid:
            raise ConfigError(f'{where}: grid: no axes (add e.g. "data.n_classes" = [32, 1024])')
        return cls(base=base, overrides=tuple(overrides), grid=grid)

    def n_points(self) -> int:
        return math.prod(len(v) for v in self.grid.values())


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """TOML's ``data.n_classes = [...]`` (unquoted) nests tables; flatten them back to dotted keys."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------------- axis values
def axis_values(key: str, value: Any) -> list:
    """The values of axis ``key``: a list as is, or a string parsed as a list expression."""
    if not isinstance(key, str) or not key or "=" in key or key != key.strip():
        raise ConfigError(f"grid: {key!r} is not a config key (e.g. data.n_classes)")
    if isinstance(value, str):
        value = parse_values(value, key)
    if not isinstance(value, list | tuple):
        raise ConfigError(
            f"{key}: expected a list of values, range(...) or [... for i in range(...)], got {value!r} "
            "(fixed settings go in overrides / --set)"
        )
    values = [_plain(v, key) for v in value]
    if not values:
        raise ConfigError(f"{key}: the axis has no values")
    seen = set()
    for v in values:
        token = json.dumps(v, sort_keys=True)
        if token in seen:
            raise ConfigError(f"{key}: value {v!r} appears twice on the axis")
        seen.add(token)
    return values


def _plain(v: Any, key: str) -> Any:
    """Values become JSON-clean: ints, floats, strings, bools, None and lists of them."""
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"{key}: expected finite numbers, got {v!r}")
        return v
    if isinstance(v, list | tuple):
        return [_plain(x, key) for x in v]
    raise ConfigError(f"{key}: expected numbers, strings, booleans or lists, got {v!r}")


def parse_values(text: str, key: str = "axis") -> list:
    """Parse an axis expression: JSON list, ``range(a[, b[, c]])`` or a list comprehension.

    >>> parse_values("[2**i for i in range(5, 8)]")
    [32, 64, 128]
    """
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError:
        raise ConfigError(f"{key}: values nested too deeply to parse") from None
    else:
        if isinstance(value, list):
            return value
        raise ConfigError(
            f"{key}: expected a list of values, range(...) or [... for i in range(...)], got {text!r} "
            "(fixed settings go in overrides / --set)"
        )
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ConfigError(
            f"{key}: cannot parse {text!r} (expected a list like [32, 1024], range(3) or [2**i for i in range(5, 14)])"
        ) from None
    try:
        value = _Interp(key).eval(tree.body, {})
    except RecursionError:
        raise ConfigError(f"{key}: {text!r} is nested too deeply") from None
    if isinstance(value, range):
        value = list(value)
    if not isinstance(value, list):
        raise ConfigError(
            f"{key}: expected a list of values, range(...) or [... for i in range(...)], got {text!r} "
            "(fixed settings go in overrides / --set)"
        )
    return value


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


class _Interp:
    """Evaluates the whitelisted subset; anything else is a one-line ConfigError."""

    def __init__(self, key: str):
        self.key = key

    def fail(self, node: ast.AST, why: str) -> ConfigError:
        return ConfigError(
            f"{self.key}: {why} in {ast.unparse(node)!r} (allowed: numbers, lists, range, + - * / // % **, [x for i in ...])"
        )

    def eval(self, node: ast.AST, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool | type(None)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise self.fail(node, f"unknown name {node.id!r}")
        if isinstance(node, ast.List | ast.Tuple):
            return [self.eval(e, env) for e in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = self._number(node.operand, env)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = self._number(node.left, env), self._number(node.right, env)
            if isinstance(node.op, ast.Pow) and (abs(b) > 256 or abs(a) > 2**64):
                raise self.fail(node, "power too large")
            if isinstance(node.op, ast.Mult) and abs(a) * abs(b) > 2**128:
                raise self.fail(node, "product too large")
            try:
                return _BINOPS[type(node.op)](a, b)
            except (ZeroDivisionError, OverflowError) as err:
                raise self.fail(node, str(err)) from None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            if node.keywords or not 1 <= len(node.args) <= 3:
                raise self.fail(node, "range takes 1 to 3 integers")
            args = [self.eval(a, env) for a in node.args]
            if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
                raise self.fail(node, "range takes integers")
            if len(args) == 3 and args[2] == 0:
                raise self.fail(node, "range step must not be zero")
            r = range(*args)
            if len(r) > MAX_VALUES:
                raise self.fail(node, f"more than {MAX_VALUES} values")
            return list(r)
        if isinstance(node, ast.ListComp):
            return self._comprehension(node, env)
        raise self.fail(node, f"{type(node).__name__} is not allowed")

    def _number(self, node: ast.AST, env: dict[str, Any]) -> int | float:
        v = self.eval(node, env)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(node, "expected a number")
        return v

    def _comprehension(self, node: ast.ListComp, env: dict[str, Any]) -> list:
        out: list = []

        def loop(i: int, scope: dict[str, Any]) -> None:
            if i == len(node.generators):
                if len(out) >= MAX_VALUES:
                    raise self.fail(node, f"more than {MAX_VALUES} values")
                out.append(self.eval(node.elt, scope))
                return
            gen = node.generators[i]
            if gen.is_async or not isinstance(gen.target, ast.Name):
                raise self.fail(node, "only `for NAME in ...` loops are allowed")
            items = self.eval(gen.iter, scope)
            if not isinstance(items, list):
                raise self.fail(gen.iter, "a loop runs over a list or range")
            for item in items:
                inner = {**scope, gen.target.id: item}
                if all(self._condition(cond, inner) for cond in gen.ifs):
                    loop(i + 1, inner)

        loop(0, dict(env))
        return out

    def _condition(self, node: ast.AST, env: dict[str, Any]) -> bool:
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
            return bool(_CMPOPS[type(node.ops[0])](self.eval(node.left, env), self.eval(node.comparators[0], env)))
        raise self.fail(node, "only a single comparison is allowed in `if`")


def parse_axis_arg(item: str) -> tuple[str, list]:
    """A command-line axis ``KEY=VALUES``, e.g. ``data.n_classes=[32,1024]`` or ``seed=range(3)``."""
    if "=" not in item:
        raise ConfigError(f"{item}: expected KEY=VALUES (e.g. 'data.n_classes=[32,1024]' or 'seed=range(3)')")
    key, text = item.split("=", 1)
    return key, axis_values(key, parse_values(text, key))


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``0,1,2``, ``[0,1,2]`` or ``range(3)`` (a seed axis's values) -> distinct seeds."""
    text = text.strip()
    values = parse_values(text if text.startswith(("[", "range")) else f"[{text}]", "--seeds")
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"--seeds: expected integers like 0,1,2 or range(3), got {text!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--seeds: seeds must be distinct, got {text!r}")
    return list(values)


# ---------------------------------------------------------------------------- files
def load_spec(path: Path | str) -> SweepSpec:
    """Read a TOML or JSON spec file (by extension; others are tried as TOML, then JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such sweep spec file") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as err:
        raise ConfigError(f"{path}: cannot read the sweep spec ({err.__class__.__name__})") from None
    raw = None
    if path.suffix.lower() != ".json":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            if path.suffix.lower() == ".toml":
                raise ConfigError(f"{path}: not valid TOML ({err})") from None
        except RecursionError:
            raise ConfigError(f"{path}: not a sweep spec: nested too deeply to parse") from None
    if raw is None:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON or TOML ({err})") from None
        except RecursionError:
            raise ConfigError(f"{path}: not a sweep spec: nested too deeply to parse") from None
    return SweepSpec.from_dict(raw, where=str(path))


# ---------------------------------------------------------------------------- points
@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its folder name, axis values and full run config."""

    name: str
    values: dict[str, Any]
    config: RunConfig


def format_value(v: Any) -> str:
    """An axis value as it appears in a point name: ``32``, ``0.001``, ``adam``, ``64_64``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "_".join(format_value(x) for x in v) or "empty"
    return str(v)


def point_name(values: dict[str, Any]) -> str:
    """``data.n_classes=32,data.burst=4,seed=0``: filesystem-safe; long names end in a short hash."""
    name = ",".join(f"{_SAFE.sub('_', k)}={_SAFE.sub('_', format_value(v))}" for k, v in values.items())
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 11]}~{digest}"
    return name


def build_points(spec: SweepSpec) -> list[Point]:
    """Every grid point's RunConfig, built up front so any bad key or value fails before a run starts."""
    if spec.n_points() > MAX_POINTS:
        raise ConfigError(f"grid: {spec.n_points()} points, more than the {MAX_POINTS} one sweep may have")
    base = get_preset(spec.base)
    base = apply_overrides(base, list(spec.overrides))
    points: list[Point] = []
    names: dict[str, dict] = {}
    for combo in itertools.product(*spec.grid.values()):
        values = dict(zip(spec.axes, combo, strict=True))
        cfg = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in values.items()])
        name = point_name(values)
        if name in names:
            raise ConfigError(f"grid: points {names[name]} and {values} get the same folder name {name!r}")
        names[name] = values
        points.append(Point(name, values, cfg))
    return points
