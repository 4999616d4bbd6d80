"""The Omniglot preset of Chan et al. 2022 and Singh et al. 2023."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.classbank import ClassBankConfig
from icl_circuits.models.config import ModelConfig


def omniglot_bursty() -> RunConfig:
    """Chan et al. 2022 / Singh et al. 2023 on Omniglot: bursty 3-shot 2-way, p_bursty 0.9.

    All 1623 classes at 28x28 (10 common, 10 holdout, the rest rare; Zipf exponent 0),
    8 context pairs. Model: 12 layers x 8 heads, d = 64, a small CNN encoder (the reference
    uses a ResNet), sinusoidal positions; Adam with 4,000 warm-up steps to 3e-4 then
    inverse-square-root decay, batch 32, 500k steps (GPU scale).

    Label-embedding and init audit (``google-deepmind/emergent_in_context_learning``,
    ``modules/embedding.py`` and ``modules/transformer_core.py``): labels truncated-normal
    std 0.02 there, normal std 0.02 here (the same scale); every Linear there is Haiku's
    ``VarianceScaling(1.0)`` (lecun-normal), here TransformerLens's std 0.02 (not changed:
    ``model.init_mode=lecun_normal model.init_range=1`` matches it).

    Letters: the context length is ``data.n_pairs``, p(bursty) ``data.p_bursty``, the Zipf
    exponent ``data.zipf_alpha``; shots and ways keep their names.
    """
    return RunConfig(
        name="omniglot-bursty",
        data=ClassBankConfig(**_omniglot_data()),
        model=ModelConfig(n_layers=12, n_heads=8, d_model=64, attn_only=False, positional="sinusoidal", encoder="cnn"),
        train=TrainConfig(
            steps=500_000,
            batch_size=32,
            optimizer="adam",
            lr=3e-4,
            warmup_steps=4000,
            schedule="inverse_sqrt",
            n_checkpoints=200,
        ),
    )


def _omniglot_data() -> dict:
    return {"bank": "omniglot", "n_pairs": 8, "p_bursty": 0.9, "sampler": "chan", "shots": 3, "ways": 2}
