"""The presets of Nguyen & Reddy 2024: their one-layer model on packed tokens, and our earlier variant."""

from __future__ import annotations

from icl_circuits.config import RunConfig, TrainConfig
from icl_circuits.data.gaussian import GaussianConfig
from icl_circuits.models.config import ModelConfig


def nguyen_reddy2024() -> RunConfig:
    """Nguyen & Reddy 2024: their 1-layer model on tokens x ⊕ onehot(label), binary labels, N = 100.

    Reference code ``anhhuyalex/icl-kinetics`` (``main_icl.py``, the last ``CausalTransformer``
    of ``attention.py``, ``main.sh``); the model is a TransformerLens native model behind the
    bridge (``hook_embed`` is the normalised token, ``blocks.0.attn.hook_pattern`` the head).

    | parameter | paper | reference code | ours |
    |---|---|---|---|
    | items, labels | K Gaussian items, D = 63, labels ±1 | ``mu_K ~ N(0, I/D)``, balanced shuffled ±1 table, ``--epsilon 0.0`` | ``data.n_classes``, ``d=63``, ``label_mode=binary`` (ids 0/1 = -1/+1), ``noise=0`` |
    | token | x ⊕ onehot(label), query label zeroed | ``cat([x, one_hot(y, 2)])``, last row's label zeroed | ``layout=packed``, ``encoder=identity``, ``label_init=onehot`` (frozen): the same 65-d token |
    | N | 100 (counting the query) | ``len_context=100``: 99 context items + query | ``n_pairs=99`` (context items) |
    | context | query's item in the context ("bursty") | 100 i.i.d. items; if the query's item is absent it is redrawn from the context | 99 i.i.d. items (``burst=1``), the query one of them (uniformly) |
    | input norm | LayerNorm on tokens | ``nn.LayerNorm(65)`` (gain, bias) | ``input_norm`` (in the embedding stage) |
    | attention | 1 layer, 1 head, causal | ``Linear(65, 195, bias=False)``; ``sdpa(is_causal=True, scale=1.0)``; no output projection, no residual into it | 1 head of width 65, ``attn_bias=False``, ``attn_scale=1``, ``attn_out_proj=False`` (W_O = I, frozen) |
    | positions | none | none | ``positional=none`` (frozen zero table; ``hook_pos_embed`` fires) |
    | readout | MLP on x_q + attention output | ``mlp(x[:, -1] + sa[:, -1])``, ReLU 512-512 → 1 | attention-only block (resid = LN(x) + attn), ``readout=mlp`` (512, 512), ``binary_logit`` |
    | loss | logistic on ±1 | ``-logsigmoid(out * (2y - 1))`` | cross-entropy on logits ``[0, z]``, equal to it (tested) |
    | init | - | PyTorch defaults | ``init_mode=torch`` (uniform ±1/sqrt(fan_in)); LN gain 1, bias 0 |
    | optimiser | SGD lr 0.01, batch 128 | ``SGD(lr=0.01)``, no momentum; batch 128 | ``sgd``, ``momentum=0``, ``lr=0.01``, ``batch_size=128`` |
    | weight decay | 1e-10 | 1e-10 on LayerNorm + QKV, 1e-10 on the MLP | 1e-10 on LayerNorm + QKV (``decay_on=attention+embed``); MLP 0 (lr x wd = 1e-12 a step: below float32 resolution) |
    | length | up to 1000 epochs of 60k sequences, early stop at ICL acc > 0.99 | ``epochs=1000`` (fig 2b-d), 2000 (fig 6); after each epoch's evaluation (~469 steps), stop once ``icl_val_top1 > 0.99`` (every experiment, fig 2e included) | 50k steps (~107 epochs); ``stop_above=0.99`` on ``stop_metric=ICL``, checked at every checkpoint (100 here, ~500 steps apart) |
    | K | 500-100k (fig 2b,c), 20,000 (fig 2d) | ``K=20000`` (fig2d) | ``n_classes=20000`` |
    | evaluation | ICL: novel items; IWL: query absent | ICL: new means (seed 100), bursty; IWL: items without replacement | ``IC`` (novel classes, bursty), ``IW`` (query's class absent from the context) |

    For the transience run (fig 2e): ``data.n_classes=10000 train.weight_decay=3e-3``
    (the decayed groups are the reference's: LayerNorm and QKV). The reference keeps its early
    stop there too (its transient ICL peaks below 0.99); add ``train.stop_above=0`` to follow
    a run past a peak above 0.99, as ``reproduce nguyen-reddy2024`` does.

    Letters: K is ``data.n_classes``, N ``data.n_pairs + 1`` (the paper's N counts the
    query), D ``data.d``, eps ``data.noise``; labels ±1 are ids 0 and 1.
    """
    return RunConfig(
        name="nguyen-reddy2024",
        data=GaussianConfig(
            n_classes=20_000,
            n_labels=2,
            d=63,
            n_pairs=99,
            burst=1,
            p_bursty=1.0,
            zipf_alpha=0.0,
            noise=0.0,
            label_mode="binary",
            layout="packed",
        ),
        model=ModelConfig(
            n_layers=1,
            n_heads=1,
            d_model=65,
            attn_only=True,
            positional="none",
            normalization="none",
            encoder="identity",
            label_init="onehot",
            input_norm=True,
            attn_bias=False,
            attn_out_proj=False,
            attn_scale=1.0,
            readout="mlp",
            readout_hidden=(512, 512),
            binary_logit=True,
            init_mode="torch",
        ),
        train=TrainConfig(
            steps=50_000,
            batch_size=128,
            optimizer="sgd",
            lr=0.01,
            momentum=0.0,
            weight_decay=1e-10,
            decay_on="attention+embed",
            n_checkpoints=100,
            stop_above=0.99,
        ),
    )


def nguyen_reddy2024_interleaved() -> RunConfig:
    """Our earlier stand-in for Nguyen & Reddy 2024: interleaved tokens, 2 attention layers.

    Kept so the reproduction can show what the layout changes. Exemplars and labels are
    separate tokens (``x_1 y_1 ... x_N y_N x_q``), so binding a label to its exemplar takes a
    second attention layer (previous-token head, then induction head); with a single layer
    this layout cannot learn ICL. Otherwise as before: d_model 64, learned label embedding
    (std 0.02) and linear exemplar encoder, TransformerLens init (std 0.02), LayerNorm in
    the blocks, MLP readout 512-512 over 2 logits; SGD lr 0.01, batch 128, weight decay
    1e-10 on every parameter; 50k steps.

    Letters: K is ``data.n_classes``, N ``data.n_pairs`` (context items; the paper's N also
    counts the query), D ``data.d``, eps ``data.noise``; labels ±1 are ids 0 and 1.
    """
    return RunConfig(
        name="nguyen-reddy2024-interleaved",
        data=nguyen_reddy2024().data.replace(n_classes=4096, n_pairs=100, layout="interleaved"),
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
