"""The data-family interface: what the rest of the toolkit may ask of a family's config.

Nothing outside ``icl_circuits/data/`` names a family. Code that needs the model's shape,
the input width, the label vocabulary, the evaluation splits, the sampler or the memory
estimate's terms asks the config (``cfg.data``) through this interface, and a new family
is one module that subclasses :class:`DataConfigBase` and :class:`~.source.DataSource` and
calls :func:`register_family` (see ``docs/architecture.md``).

Field names mean one thing in every family: ``n_classes`` (classes), ``n_labels`` (label
vocabulary, where a family sets it), ``n_pairs`` (context pairs), ``d`` (exemplar
dimension), ``burst`` (copies of a class in a bursty context), ``p_bursty``, ``zipf_alpha``,
``noise`` (within-class spread). Each family's ``RENAMED`` maps its old names (the papers'
letters: ``K``, ``L``, ``N``, ``D``, ``B``, ``p_B``, ``alpha``, ``eps``, ``sigma``,
``exemplar_noise``) to these; configs and CLI overrides written with the old names still load.

>>> from icl_circuits.data import data_config_from_dict
>>> cfg = data_config_from_dict({"family": "gaussian", "K": 32, "N": 4, "B": 2})
>>> cfg.n_classes, cfg.n_pairs, cfg.model_shape()
(32, 4, {'d_in': 63, 'n_labels': 32, 'n_ctx': 9})
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from icl_circuits.configbase import FrozenConfig
from icl_circuits.errors import ConfigError

if TYPE_CHECKING:
    from icl_circuits.data.source import DataSource

#: family name -> (config class, source class); filled by :func:`register_family`.
FAMILIES: dict[str, tuple[type[DataConfigBase], type[DataSource]]] = {}


@dataclasses.dataclass(frozen=True)
class MemoryTerms:
    """A family's inputs to the memory estimate (:mod:`icl_circuits.limits`).

    Attributes:
        world: sizes whose product is the family's tables (class means, banks), keyed by
            the config field that sets each.
        d_in: (field, value) of the input width.
        pairs: (field, value) of the context length in pairs.
        n_labels: output size.
        splits: number of evaluation splits.
    """

    world: dict[str, int]
    d_in: tuple[str, int]
    pairs: tuple[str, int]
    n_labels: int
    splits: int


class DataConfigBase(FrozenConfig):
    """Base of every family's (frozen dataclass) config. Subclasses define the fields."""

    #: old field name -> current one (loaded configs and overrides are migrated).
    RENAMED: ClassVar[dict[str, str]] = {}

    family: str
    n_pairs: int

    @property
    def d_in(self) -> int:
        """Input width of one exemplar (flattened)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """Number of label ids the model predicts."""
        raise NotImplementedError

    def memory_terms(self) -> MemoryTerms:
        raise NotImplementedError

    def model_shape(self) -> dict[str, int]:
        """The model's data-given shape: input width, label vocabulary, tokens per sequence."""
        return {"d_in": self.d_in, "n_labels": self.vocab_size, "n_ctx": 2 * self.n_pairs + 1}

    @classmethod
    def source_class(cls) -> type[DataSource]:
        """The sampler class (its ``splits``, ``icl_split``, ``iwl_split``)."""
        return FAMILIES[cls.__dataclass_fields__["family"].default][1]

    def build_source(self, seed: int, device: torch.device | str = "cpu") -> DataSource:
        """The seeded sampler of this config."""
        return self.source_class()(self, seed, device)

    @classmethod
    def migrate(cls, data: dict[str, Any], prefix: str = "data.") -> dict[str, Any]:
        """``data`` with old field names replaced by current ones; both given is an error."""
        out = dict(data)
        for old, new in cls.RENAMED.items():
            if old in out:
                if new in out:
                    raise ConfigError(f"{prefix}{old}: the old name of {prefix}{new}; give only one of them")
                out[new] = out.pop(old)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = ""):
        if isinstance(data, dict):
            data = cls.migrate(data, prefix or "data.")
        return super().from_dict(data, prefix)


def register_family(config_cls: type[DataConfigBase], source_cls: type[DataSource]) -> None:
    """Make a family known to ``data_config_from_dict`` and ``build_source``."""
    name = config_cls.__dataclass_fields__["family"].default
    FAMILIES[name] = (config_cls, source_cls)
