"""Bursty sequence data: one module per family, one shared batch format.

Families (``data.family`` in a config), each registering itself (:mod:`.family`):
    ``gaussian``: Gaussian-mixture classes (Reddy 2023; Nguyen & Reddy 2024).
    ``stylized``: high/low-frequency classes (Chan, Chen, György & Schuurmans 2024).
    ``classbank``: bursty sequences over an exemplar bank, Omniglot or Gaussian prototypes
        (Chan et al. 2022; Singh et al. 2023, 2024, 2025).
"""

from __future__ import annotations

from typing import Any

import torch

from icl_circuits.data import classbank, gaussian, stylized  # noqa: F401 (each registers its family)
from icl_circuits.data.batch import Batch
from icl_circuits.data.classbank import ClassBankConfig
from icl_circuits.data.family import FAMILIES, DataConfigBase, MemoryTerms
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.data.source import DataSource
from icl_circuits.data.stylized import StylizedConfig
from icl_circuits.errors import ConfigError

DataConfig = GaussianConfig | StylizedConfig | ClassBankConfig


def data_config_from_dict(data: dict[str, Any], prefix: str = "data.") -> DataConfig:
    """Parse a data config, dispatching on its ``family`` key (old field names migrated)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a table, got {data!r}")
    family = data.get("family", "gaussian")
    if family not in FAMILIES:
        raise ConfigError(f"{prefix}family: expected one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family][0].from_dict(data, prefix=prefix)


def build_source(cfg: DataConfigBase, seed: int, device: torch.device | str = "cpu") -> DataSource:
    """The seeded sampler of ``cfg``."""
    return cfg.build_source(seed, device)


def family_config(family: str) -> type[DataConfigBase]:
    """The config class of ``family`` (its defaults: ``family_config(name)()``)."""
    if family not in FAMILIES:
        raise ConfigError(f"data.family: expected one of {sorted(FAMILIES)}, got {family!r}")
    return FAMILIES[family][0]


__all__ = [
    "FAMILIES",
    "Batch",
    "ClassBankConfig",
    "DataConfig",
    "DataConfigBase",
    "DataSource",
    "GaussianConfig",
    "MemoryTerms",
    "StylizedConfig",
    "build_source",
    "data_config_from_dict",
    "family_config",
]
