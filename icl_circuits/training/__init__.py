"""Training: optimisers, schedules, evaluation and the resumable training loop."""

from icl_circuits.training.trainer import train

__all__ = ["train"]
