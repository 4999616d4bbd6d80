"""TransformerLens-native models for bursty sequences."""

from icl_circuits.models.build import build_native, query_logits, tl_config, to_bridge
from icl_circuits.models.config import ModelConfig

__all__ = ["ModelConfig", "build_native", "query_logits", "tl_config", "to_bridge"]
