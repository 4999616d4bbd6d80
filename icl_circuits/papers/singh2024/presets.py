"""The preset of Singh et al. 2024 (induction heads)."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.classbank import ClassBankConfig
from icl_circuits.models.config import ModelConfig


def singh2024_induction() -> RunConfig:
    """Singh et al. 2024 (induction heads): 2 layers x 8 heads, attention only, RoPE.

    Context of 2 pairs, constant burst B = 1 (query class + one distractor), 50 classes
    with one exemplar each, relabelled pairs over 5 labels; Adam 1e-5, batch 32, 31,250
    steps (1e6 sequences). Weights start at a fan-in scale (Xavier normal, gain 1) like
    Equinox's default rather than TransformerLens's std 0.02: from the small init the loss
    sat on its ln 2 plateau for all 31,250 steps at lr 1e-5, and for 12,000 steps at 1e-4.

    Label-embedding audit (``aadityasingh/icl-dynamics``; not changed here): the reference
    embeds the one-hot label with an Equinox Linear without bias (uniform, std
    1/sqrt(3 n_labels)); ours keeps TransformerLens's std 0.02, several times smaller.
    ``model.label_init=lecun_normal`` gives a Dense-on-one-hot scale.

    Letters: the context length is ``data.n_pairs``, the burst B ``data.burst``, the number of
    classes ``data.n_classes``.
    """
    return RunConfig(
        name="singh2024-induction",
        data=ClassBankConfig(**_singh_data()),
        model=ModelConfig(
            n_layers=2,
            n_heads=8,
            d_model=64,
            attn_only=True,
            positional="rotary",
            init_mode="xavier_normal",
            init_range=1.0,
        ),
        train=TrainConfig(steps=31_250, batch_size=32, optimizer="adam", lr=1e-5, n_checkpoints=100),
    )


def _singh_data() -> dict:
    return {
        "bank": "gaussian",
        "n_classes": 50,
        "n_exemplars": 1,
        "n_pairs": 2,
        "sampler": "constant",
        "burst": 1,
        "p_bursty": 1.0,
        "relabel": True,
    }
