"""Training: optimisers, schedules, evaluation and the resumable training loop."""

from icl_circuits.training.entry import train

__all__ = ["train"]
