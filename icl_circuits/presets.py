"""Named presets: each a function returning the paper's setting as a RunConfig.

Parameters follow the papers and their reference code (see ``docs`` and the docstrings);
where our architecture cannot match a detail exactly, the docstring says what differs.
"""

from __future__ import annotations

from collections.abc import Callable

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.classbank import ClassBankConfig
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.data.stylized import StylizedConfig
from icl_circuits.errors import ConfigError
from icl_circuits.models.config import ModelConfig


def demo() -> RunConfig:
    """ICL emerging and an induction head forming in a few minutes on 2 CPU cores.

    Reddy-style Gaussian data with K = 1024 classes, B = 4, eps = 0.1, N = 8; a 2-layer,
    2-head attention-only model with an MLP readout; Adam 1e-3, batch 128. With K = 32
    (``data.K=32``) the same model memorises instead (in-weight learning).
    """
    return RunConfig(
        name="demo",
        seed=0,
        data=GaussianConfig(K=1024, L=32, D=63, N=8, B=4, p_B=1.0, alpha=0.0, eps=0.1),
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
    """
    return RunConfig(
        name="reddy2023",
        data=GaussianConfig(K=1024, L=32, D=63, N=8, B=4, p_B=1.0, alpha=0.0, eps=0.75),
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


def nguyen_reddy2024() -> RunConfig:
    """Nguyen & Reddy 2024: binary labels, N = 100 context items, K = 2^12.

    Causal attention with a single head per layer, LayerNorm'd inputs, no positional
    encoding, then a ReLU MLP 512-512 on the last token; SGD lr 0.01, batch 128, weight
    decay 1e-10; 50k steps (about 107 "epochs" of 60k sequences). Differs: exemplars and
    labels are interleaved tokens rather than one token ``x ⊕ onehot(label)`` per item, so
    binding a label to its exemplar takes a second attention layer (previous-token head,
    then induction head): with the paper's single layer this layout cannot learn ICL.
    For the transience run use ``train.weight_decay=3e-3 train.decay_on=attention+embed
    data.K=10000``.

    Label-embedding and init audit (``anhhuyalex/icl-kinetics``; not changed here, the packed
    layout of the one-token-per-item issue replaces this model): the reference's label is a
    one-hot entry of the LayerNorm'd input token, so after the norm it is as large as the
    exemplar; ours is a learned embedding of std 0.02 (norm ~0.16 at d = 64) next to a linear
    encoding of the exemplar. Weights: PyTorch's Linear default (uniform, std
    1/sqrt(3 fan_in)) there, TransformerLens's std 0.02 here.
    """
    return RunConfig(
        name="nguyen-reddy2024",
        data=GaussianConfig(K=4096, L=2, D=63, N=100, B=1, p_B=1.0, alpha=0.0, eps=0.0, label_mode="binary"),
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


def chan2024_stylized() -> RunConfig:
    """Chan, Chen, György & Schuurmans 2024: stylized high/low-frequency classes.

    Matches ``chanb/simple_icl`` (branch ``iclr_2025``: ``src/models.py``, ``src/modules.py``,
    ``src/datasets/synthetic.py``, ``cc_utils/templates/synthetic-transformer-noisy_inputs.json``)
    in everything it fixes, except where the table says otherwise:

    ==================  ====================  ===============================  ==========================
    parameter           paper                 reference code                   ours
    ==================  ====================  ===============================  ==========================
    classes             5 high + 5 low        5 + 5, p_high 0.9                same
    exemplars           unit centre + noise   N(0,I) centres normalised,       same
                                              sigma 0.2 (sweep 0, 0.2, 0.4)
    context             L = 1, p_rel 0.9      Binomial(L, p_rel) relevant      same (``data.L``,
                                                                               ``data.p_relevant``)
    irrelevant slot     "another class"       drawn from the class weights,    ``irrelevant=redraw``
                                              one redraw if it hits the target
    training set        N sequences           seq. i seeded by i ~ U[0, N)     same law, counter hash
    layout              x1 y1 x_q             x1 y1 x_q                        same
    positions           sinusoidal            period 30; x_i, y_i share i,     ``positions=shared``; sin
                                              query gets L; [sin | cos]        and cos interleaved (a
                                                                               fixed permutation of the
                                                                               isotropic input's dims)
    exemplar encoder    identity, frozen      Dense = I, bias 0, masked        ``encoder=identity``
    label embedding     one-hot -> Dense      lecun_normal (std 1/sqrt(10)),   ``label_init=lecun_normal``,
                                              bias                             ``label_bias``
    blocks              2, 1 head, d 64       pre-LN, MLP x4, GELU (tanh),     same (``gelu_new``)
                                              LN eps 1e-5, final LN
    weight init         -                     lecun_normal, biases 0           ``init_mode=lecun_normal``
    readout             linear, query only    Dense(10) with bias              linear, no bias (TL's
                                                                               unembedding has none)
    optimiser           Adam 3e-4, batch 32   constant lr, no clipping         same
    steps               100k (Fig. 2)         50k (most configs), 500k         50k
    reported ckpt       -                     lowest training loss             reproduction's
                                                                               ``checkpoint`` rule
    evaluation          3k sequences          seq. i seeded by i: overlaps     fresh (``eval_sets=
                                              training for N >= 15k            reference`` to opt in)
    ==================  ====================  ===============================  ==========================

    Letters: the paper's N is ``data.n_train``, L ``data.L``, sigma ``data.sigma``,
    p_relevant ``data.p_relevant``, |C_H| / |C_L| ``data.n_high`` / ``data.n_low``.
    """
    return RunConfig(
        name="chan2024-stylized",
        data=StylizedConfig(irrelevant="redraw"),
        model=ModelConfig(
            n_layers=2,
            n_heads=1,
            d_model=64,
            attn_only=False,
            act_fn="gelu_new",
            positional="sinusoidal",
            positions="shared",
            encoder="identity",
            init_mode="lecun_normal",
            init_range=1.0,
            label_init="lecun_normal",
            label_scale=1.0,
            label_bias=True,
        ),
        train=TrainConfig(steps=50_000, batch_size=32, optimizer="adam", lr=3e-4, n_checkpoints=100),
    )


def chan2024_omniglot() -> RunConfig:
    """Chan et al. 2024 on Omniglot: the stylized distribution with Omniglot characters as classes.

    The paper's Omniglot variant draws sequences from the stylized distribution (frequent and
    rare classes, one context pair, p_relevant 0.9) with Omniglot images as exemplars. The
    reference (``chanb/simple_icl``, ``omniglot`` branch and the ``omniglot-input_noise``
    plots) uses all 1,623 characters and a ResNet tokenizer at GPU scale. Ours, at CPU scale,
    keeps everything of ``chan2024-stylized`` except:

    =================  =========================  ===========================  =========================
    parameter          paper                      reference code               ours
    =================  =========================  ===========================  =========================
    classes            Omniglot characters        1,623 characters             5 high + 5 low characters
                                                                               (random, per seed)
    exemplar           an image of the class      one of its drawings          one of its 20 drawings,
                                                                               14 x 14, sigma 0
    tokenizer          ResNet                     ResNet, trained              linear 196 -> 64, trained
                                                                               (lecun-normal)
    =================  =========================  ===========================  =========================
    """
    base = chan2024_stylized()
    return base.replace(
        name="chan2024-omniglot",
        data=base.data.replace(bank="omniglot", image_size=14, sigma=0.0),
        model=base.model.replace(encoder="linear"),
    )


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


def _singh_data() -> dict:
    return {
        "bank": "gaussian",
        "n_classes": 50,
        "n_exemplars": 1,
        "N": 2,
        "sampler": "constant",
        "B": 1,
        "p_bursty": 1.0,
        "relabel": True,
    }


def _omniglot_data() -> dict:
    return {"bank": "omniglot", "N": 8, "p_bursty": 0.9, "sampler": "chan", "shots": 3, "ways": 2}


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "demo": demo,
    "reddy2023": reddy2023,
    "nguyen-reddy2024": nguyen_reddy2024,
    "chan2024-stylized": chan2024_stylized,
    "chan2024-omniglot": chan2024_omniglot,
    "singh2024-induction": singh2024_induction,
    "omniglot-bursty": omniglot_bursty,
}


def get_preset(name: str) -> RunConfig:
    """The preset ``name``; a one-line error listing the known names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def describe() -> dict[str, str]:
    """Preset name -> first line of its docstring."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in PRESETS.items()}
