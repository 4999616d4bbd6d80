"""Shared machinery for the frozen config dataclasses.

Configs are plain frozen dataclasses. Building one does no I/O and no seeding; it only
validates. ``from_dict`` rejects unknown keys and checks each value's type, so a typo in a
JSON file or a CLI override is a one-line :class:`~icl_circuits.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from icl_circuits.errors import ConfigError

T = TypeVar("T", bound="FrozenConfig")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {short_repr(value)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {short_repr(value)}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, FrozenConfig):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of {tp.__name__} fields, got {short_repr(value)}")
        return tp.from_dict(value, prefix=f"{where}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {short_repr(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {short_repr(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            raise ConfigError(f"{where}: expected a finite number, got {short_repr(value)}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {number!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short_repr(value)}")
        return value
    raise ConfigError(f"{where}: cannot check values of type {_type_name(tp)}")


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    """Base for config dataclasses: typed ``from_dict``/``to_dict`` and ``validate``.

    Subclasses override :meth:`validate` and raise :class:`ConfigError` (a ``ValueError``)
    naming the field. ``__post_init__`` calls it, so an invalid config cannot exist.
    """

    def __post_init__(self) -> None:
        self._check_finite()
        self.validate()

    def _check_finite(self) -> None:
        """Refuse NaN and infinities in every float field (they train to NaN silently)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{self._field_prefix()}{f.name}: expected a finite number, got {v!r}")

    def _field_prefix(self) -> str:
        """How error messages name this section's fields (``train.`` for ``TrainConfig``)."""
        if hasattr(self, "family"):
            return "data."
        return {"TrainConfig": "train.", "ModelConfig": "model."}.get(type(self).__name__, "")

    def validate(self) -> None:
        """Raise ConfigError if a field or a combination of fields is invalid."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
        """Build from a plain dict (JSON), rejecting unknown keys and mistyped values."""
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix or cls.__name__}: expected a table, got {data!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of {sorted(fields)})")
        kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as err:
            if prefix and not str(err).startswith(prefix):
                raise ConfigError(f"{prefix}{err}") from None
            raise

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` round-trips."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, FrozenConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, FrozenConfig) else v for v in value]
            out[f.name] = value
        return out

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so one-line errors stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...({len(text)} chars)"


def require(condition: bool, field: str, expected: str, value: Any) -> None:
    """Raise ``ConfigError('field: expected ..., got value')`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{field}: expected {expected}, got {short_repr(value)}")
