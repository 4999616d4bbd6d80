"""Shared fixtures: tiny configs and a tiny trained run (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.models.config import ModelConfig

torch.set_num_threads(1)


#: CLI overrides that shrink the demo preset to a run of about a second (no burstiness axis).
TINY_OVERRIDES = (
    "data.n_classes=64",
    "data.n_labels=8",
    "data.d=8",
    "data.n_pairs=4",
    "model.d_model=16",
    "train.steps=12",
    "train.batch_size=8",
    "train.n_checkpoints=4",
    "train.eval_size=32",
    "train.device=cpu",
)


def tiny_config(**train_overrides) -> RunConfig:
    """A Gaussian-mixture run small enough to train in about a second."""
    train = TrainConfig(steps=40, batch_size=16, lr=3e-3, n_checkpoints=6, eval_size=64, device="cpu")
    return RunConfig(
        name="tiny",
        seed=3,
        data=GaussianConfig(n_classes=64, n_labels=8, d=8, n_pairs=4, burst=2, noise=0.1),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=16, attn_only=True),
        train=train.replace(**train_overrides),
    )


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny run folder shared by read-only tests."""
    from icl_circuits.training import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(), run, progress=False)
    return run


def assert_claims_hold(rep, prefixes: tuple[str, ...]) -> None:
    """Every claim of ``rep`` opening with one of ``prefixes`` exists once and holds."""
    checked = [c for c in rep.claims if c.claim.startswith(prefixes)]
    assert len(checked) == len(prefixes), [c.claim for c in rep.claims]
    for claim in checked:
        assert claim.holds, claim
