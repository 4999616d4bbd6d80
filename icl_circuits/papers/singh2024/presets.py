"""The preset of Singh et al. 2024 (induction heads)."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.classbank import ClassBankConfig
from icl_circuits.models.config import ModelConfig


def singh2024_induction() -> RunConfig:
    """Singh et al. 2024 (induction heads): 2 layers x 8 heads, attention only, RoPE.

    Context of 2 pairs, constant burst B = 1 (query class + one distractor), 50 trained
    classes with one exemplar each (10 more held out), relabelled pairs over 5 labels (8 train pairs,
    2 validation pairs); Adam 1e-5, batch 32, 31,250 steps (1e6 sequences).

    Audit against ``aadityasingh/icl-dynamics`` (``models.py``, ``main_utils.py``,
    ``ih_paper_runs.sh``):

    ==================  ==============================  ==================================  ==========================================
    parameter           paper                           reference code                      ours
    ==================  ==============================  ==================================  ==========================================
    layers x heads, d   2 x 8, 64, attention only       depth 2, 8 heads, d 64, no MLP      same
    positions           RoPE                            rope, sin_time 1e4                  rotary (TransformerLens, base 1e4)
    norm                pre-LayerNorm                   eqx LayerNorm (gain 1, bias 0)      LN, same init
    q/k/v/o bias        not stated                      qkv_bias False, proj no bias        ``attn_bias=False`` (zero, frozen)
    weight init         not stated                      lecun_normal (truncated, 1/fan_in)  ``init_mode=lecun_normal``, gain 1
    exemplar embed      linear                          Linear + bias, lecun_normal / 0     linear encoder, lecun_normal / 0
    label embed         one-hot -> linear               Linear, no bias, trunc-normal 0.02  normal, std 0.0176 (= that trunc-normal's)
    output              5 labels                        model_output_classes = 5, + bias    ``data.n_labels=5``, head without bias
    exemplars           Omniglot, 1 per class           ResNet-18 features (512-d)          Gaussian bank, d 64 (|x| ~ 1)
    classes             50 trained                      class_split 50 1473 100             50 trained + 10 held out (``fewshot``)
    labels              5, pairs 8 train / 2 val        fs_relabel 5, split 8 2 0           n_relabel_labels 5, n_val_pairs 2
    optimiser           Adam 1e-5, batch 32             adam, lr 1e-5, train_bs 32          same
    length              1e6 sequences                   train_iters 1e6 (sequences)         31,250 steps x 32
    ==================  ==============================  ==================================  ==========================================

    The label embedding is trunc-normal(0.02) in the reference ("to match Chan et al.'s
    code"), not Equinox's uniform fan-in default: ours was never too small here (the
    ~16x label-scale gap of the Chan 2024 audit is ``chanb/simple_icl``'s lecun-normal
    Dense). From TransformerLens's std-0.02 weights the loss sat on its ln 2 plateau for all
    31,250 steps at lr 1e-5; from the reference's fan-in scale it leaves it.

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
            init_mode="lecun_normal",
            init_range=1.0,
            attn_bias=False,
            label_scale=0.0176,
        ),
        train=TrainConfig(steps=31_250, batch_size=32, optimizer="adam", lr=1e-5, n_checkpoints=100),
    )


def _singh_data() -> dict:
    return {
        "bank": "gaussian",
        "n_classes": 60,
        "n_exemplars": 1,
        "n_labels": 5,
        "n_pairs": 2,
        "sampler": "constant",
        "burst": 1,
        "p_bursty": 1.0,
        "relabel": True,
    }
