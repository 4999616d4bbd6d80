"""Presets of Reddy 2023 (ICLR 2024), and ``demo``: the same setting, small enough for a laptop."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.models.config import ModelConfig


def demo() -> RunConfig:
    """ICL emerging and an induction head forming in a few minutes on 2 CPU cores.

    Reddy-style Gaussian data with K = 1024 classes, B = 4, eps = 0.1, N = 8; a 2-layer,
    2-head attention-only model with an MLP readout; Adam 1e-3, batch 128. With K = 32
    (``data.n_classes=32``) the same model memorises instead (in-weight learning).

    Letters: K is ``data.n_classes``, L ``data.n_labels``, D ``data.d``, N ``data.n_pairs``,
    B ``data.burst``, p_B ``data.p_bursty``, alpha ``data.zipf_alpha``, eps ``data.noise``.
    """
    return RunConfig(
        name="demo",
        seed=0,
        data=GaussianConfig(
            n_classes=1024, n_labels=32, d=63, n_pairs=8, burst=4, p_bursty=1.0, zipf_alpha=0.0, noise=0.1
        ),
        model=ModelConfig(n_layers=2, n_heads=2, d_model=64, attn_only=True, readout="mlp", readout_hidden=(128, 128)),
        train=TrainConfig(steps=3000, batch_size=128, optimizer="adam", lr=1e-3, n_checkpoints=60, eval_size=1024),
    )


def reddy2023() -> RunConfig:
    """Reddy 2023 (ICLR 2024): Gaussian mixture, K = 2^10, L = 32, D = 63, N = 8, B = 4.

    Model: 2 causal attention layers of 1 head with residuals, no LayerNorm, then a 3-layer
    ReLU readout of width 128. SGD lr 0.01, batch 128, weight decay 1e-6, 150k steps;
    eps = 0.75 as in the published replication. Differs: positions are a learned embedding
    rather than a one-hot code at a random offset; labels are learned embeddings rather
    than fixed random vectors.

    Label-embedding and init audit (against the paper's code as summarised in
    ``shared/references.md``; not changed here, the reproduction's numbers stand on these):

    ================  ===========================  ==============================
    parameter         reference                    ours
    ================  ===========================  ==============================
    label vectors     fixed N(0, I/D), norm ~1     learned, std 0.02 (norm ~0.16)
    attention init    scale 1/sqrt(D)              TransformerLens gpt2, std 0.02
    ================  ===========================  ==============================

    ``model.label_init=lecun_normal model.label_scale=...`` and ``model.init_mode=lecun_normal``
    reach the reference's scales.

    Letters: K is ``data.n_classes``, L ``data.n_labels``, D ``data.d``, N ``data.n_pairs``,
    B ``data.burst``, p_B ``data.p_bursty``, alpha ``data.zipf_alpha``, eps ``data.noise``.
    """
    return RunConfig(
        name="reddy2023",
        data=GaussianConfig(
            n_classes=1024, n_labels=32, d=63, n_pairs=8, burst=4, p_bursty=1.0, zipf_alpha=0.0, noise=0.75
        ),
        model=ModelConfig(
            n_layers=2,
            n_heads=1,
            d_model=64,
            attn_only=True,
            normalization="none",
            readout="mlp",
            readout_hidden=(128, 128, 128),
        ),
        train=TrainConfig(
            steps=150_000, batch_size=128, optimizer="sgd", lr=0.01, weight_decay=1e-6, n_checkpoints=100
        ),
    )
