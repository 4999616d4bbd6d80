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
(32, 4, {'d_in': 63, 'n_labels': 32, 'n_ctx': 9, 'layout': 'interleaved'})

Every family has ``layout`` (:data:`LAYOUTS`): ``interleaved`` (one token per exemplar and one
per label, ``2 * n_pairs + 1`` tokens) or ``packed`` (one token per context item, exemplar and
label together, then the query: ``n_pairs + 1`` tokens; see :mod:`icl_circuits.data.batch`).
The samplers are the same for both: the layout only changes :meth:`Batch.tokens` and the
model's embedding stage.

>>> data_config_from_dict({"family": "gaussian", "N": 4, "B": 2, "layout": "packed"}).model_shape()["n_ctx"]
5
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from icl_circuits.configbase import FrozenConfig, require
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


#: The token layouts every family supports (``data.layout``).
LAYOUTS = ("interleaved", "packed")


@dataclasses.dataclass(frozen=True)
class DataConfigBase(FrozenConfig):
    """Base of every family's (frozen dataclass) config. Subclasses define the fields.

    Attributes:
        layout: ``interleaved`` (``x_1 y_1 ... x_N y_N x_q``, ``2N + 1`` tokens) or ``packed``
            (one token per context item holding exemplar and label, the query's label part
            zeroed: ``N + 1`` tokens). A keyword-only field, so it is the same on every family
            and adds nothing to the families' positional fields.
    """

    #: old field name -> current one (loaded configs and overrides are migrated).
    RENAMED: ClassVar[dict[str, str]] = {}

    if TYPE_CHECKING:
        family: str
        n_pairs: int

    layout: Literal["interleaved", "packed"] = dataclasses.field(default="interleaved", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.layout in LAYOUTS, "data.layout", f"one of {list(LAYOUTS)}", self.layout)

    def to_dict(self) -> dict[str, Any]:
        """As the base, without ``layout`` when it is the default: an interleaved run's
        ``config.json`` is byte for byte what it was before the field existed."""
        out = super().to_dict()
        if out.get("layout") == "interleaved":
            del out["layout"]
        return out

    @property
    def seq_len(self) -> int:
        """Tokens per sequence: ``2 * n_pairs + 1`` interleaved, ``n_pairs + 1`` packed."""
        return self.n_pairs + 1 if self.layout == "packed" else 2 * self.n_pairs + 1

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

    def model_shape(self) -> dict[str, int | str]:
        """The model's data-given shape: input width, label vocabulary, tokens per sequence, layout."""
        return {"d_in": self.d_in, "n_labels": self.vocab_size, "n_ctx": self.seq_len, "layout": self.layout}

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
