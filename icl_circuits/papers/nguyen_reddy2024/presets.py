"""The preset of Nguyen & Reddy 2024."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.models.config import ModelConfig


def nguyen_reddy2024() -> RunConfig:
    """Nguyen & Reddy 2024: binary labels, N = 100 context items, K = 2^12.

    Causal attention with a single head per layer, LayerNorm'd inputs, no positional
    encoding, then a ReLU MLP 512-512 on the last token; SGD lr 0.01, batch 128, weight
    decay 1e-10; 50k steps (about 107 "epochs" of 60k sequences). Differs: exemplars and
    labels are interleaved tokens rather than one token ``x ⊕ onehot(label)`` per item, so
    binding a label to its exemplar takes a second attention layer (previous-token head,
    then induction head): with the paper's single layer this layout cannot learn ICL.
    For the transience run use ``train.weight_decay=3e-3 train.decay_on=attention+embed
    data.n_classes=10000``.

    Label-embedding and init audit (``anhhuyalex/icl-kinetics``; not changed here, the packed
    layout of the one-token-per-item issue replaces this model): the reference's label is a
    one-hot entry of the LayerNorm'd input token, so after the norm it is as large as the
    exemplar; ours is a learned embedding of std 0.02 (norm ~0.16 at d = 64) next to a linear
    encoding of the exemplar. Weights: PyTorch's Linear default (uniform, std
    1/sqrt(3 fan_in)) there, TransformerLens's std 0.02 here.

    Letters: K is ``data.n_classes``, N ``data.n_pairs`` (context items; the paper's N also
    counts the query), D ``data.d``, eps ``data.noise``; labels ±1 are ids 0 and 1.
    """
    return RunConfig(
        name="nguyen-reddy2024",
        data=GaussianConfig(
            n_classes=4096,
            n_labels=2,
            d=63,
            n_pairs=100,
            burst=1,
            p_bursty=1.0,
            zipf_alpha=0.0,
            noise=0.0,
            label_mode="binary",
        ),
        model=ModelConfig(
            n_layers=2,
            n_heads=1,
            d_model=64,
            attn_only=True,
            positional="none",
            readout="mlp",
            readout_hidden=(512, 512),
        ),
        train=TrainConfig(
            steps=50_000, batch_size=128, optimizer="sgd", lr=0.01, weight_decay=1e-10, n_checkpoints=100
        ),
    )
