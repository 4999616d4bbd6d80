"""The Omniglot preset of Chan et al. 2022 and Singh et al. 2023."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.classbank import ClassBankConfig
from icl_circuits.models.config import ModelConfig


def omniglot_bursty() -> RunConfig:
    """Chan et al. 2022 / Singh et al. 2023 on Omniglot: bursty 3-shot 2-way, p_bursty 0.9.

    All 1623 classes at 28x28 (10 common, 10 holdout, the rest rare; Zipf exponent 0),
    8 context pairs. ``reproduce singh2023 --full`` sets Singh's both-strategies data on top
    (every sequence bursty, the constant sampler with B = 3) and the L2 runs' penalty.

    ===============  ===================================  ==========================================  ===========================================
    parameter        paper                                reference code                              ours
    ===============  ===================================  ==========================================  ===========================================
    model            12 layers x 8 heads, d 64            DM ``transformer_core.py``: same            same, MLPs (x4), causal
    encoder          ResNet                               ResNet blocks (2,2,2,2), ch. (16,32,32,64)  a small CNN (``encoder=cnn``), not a ResNet
    positions        sinusoidal                           sinusoidal, max time 30                     sinusoidal table
    label embed      learned                              trunc-normal, std 0.02                      normal, std 0.02
    linear init      not stated                           Haiku VarianceScaling(1.0) (lecun-normal)   TransformerLens std 0.02 (``model.init_mode=lecun_normal`` matches)
    classes          1623: 1603 rare, 10 common, 10 held  same                                        same (``n_common`` 10, ``n_holdout`` 10)
    sequences        8 pairs + query, 3-shot 2-way        same                                        same (``n_pairs`` 8, ``shots`` 3, ``ways`` 2)
    p_bursty         Chan 0.9; Singh: all bursty          DM configs 0.9; icl-dynamics: B 3 + 3       0.9 (``singh2023 --full``: 1.0, constant, B 3)
    optimiser        Adam, warm-up to 3e-4, 1/sqrt decay  4,000 warm-up steps, batch 32, 5e5 steps    same
    L2 (Singh)       "L2 regularisation"                  icl-dynamics: ``wd * sum_p ||p||_2``        ``train.l2`` (the same formula)
    ===============  ===================================  ==========================================  ===========================================

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
