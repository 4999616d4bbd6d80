"""Build TransformerLens-native models for bursty sequences, plain or behind the bridge.

TransformerLens 4 builds from-scratch models with ``TransformerBridge.boot_native``, which is
``NativeModel(cfg)`` + ``initialize_native_model`` + ``build_bridge_from_module``. We run the
same three steps, with one change between the first two: our :class:`ExemplarEmbed` replaces
the token embedding (and :class:`MLPReadout` the unembedding when asked), so continuous
exemplars enter through the embedding stage and ``hook_embed`` fires.

Training uses the plain :class:`NativeModel` (faster, ``torch.compile``-clean); analysis wraps
the very same module in a bridge with :func:`to_bridge`. Parameter names are the native
module's, so a checkpoint's ``state_dict`` loads into either.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources import build_bridge_from_module
from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model
from transformer_lens.utilities.activation_functions import apply_softcap

from icl_circuits.errors import LayoutError
from icl_circuits.models.config import ModelConfig
from icl_circuits.models.embed import ExemplarEmbed, MLPReadout, lecun_normal_, sinusoidal_table
from icl_circuits.models.fast import query_forward, supports_fast_path

ARCHITECTURE = "TransformerLensNative"


class ICLNativeModel(NativeModel):
    """TransformerLens's native model with a query-only fast path for training.

    ``forward(..., query_only=True)`` returns ``[batch, d_vocab_out]`` logits of the last
    position only, through :mod:`.fast` (fused QKV, ``scaled_dot_product_attention``, the last
    block, final norm and readout at the query only); ``reference=True`` as well runs the
    native blocks instead (kept for the equivalence tests). Without ``query_only`` the forward
    is the native one, which is what the bridge runs for analysis. ``attention_kernel``: the
    fast path's attention (:data:`.fast.KERNELS`; the vectorised seeds set ``math``).
    """

    attention_kernel = "sdpa"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        if not kwargs.pop("query_only", False):
            return super().forward(input_ids, attention_mask, position_ids, inputs_embeds, **kwargs)
        hidden = self.tok_embed(input_ids)
        batch, seq = input_ids.shape[:2]
        if seq > self.cfg.n_ctx:
            raise ValueError(f"input length {seq} exceeds n_ctx={self.cfg.n_ctx}")
        position_ids = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, -1)
        if self.pos is not None:
            hidden = hidden + self.pos(position_ids)
        if supports_fast_path(self) and not kwargs.pop("reference", False):
            return query_forward(self, hidden, position_ids, self.attention_kernel)
        for block in self.layers:
            (hidden,) = block(hidden, position_ids=position_ids)
        return self.head(self.ln_out(hidden[:, -1]))

    def forward_from(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab_out]`` from the residual stream ``hidden`` entering block ``layer``.

        Blocks ``layer`` onwards, the final norm and the readout, called as the native
        forward calls them (behind a bridge, the same hooked modules fire their hooks), so
        with ``hidden`` the forward's own residual stream at that block the logits are the
        forward's. The embedding stage and the blocks below ``layer`` do not run.
        """
        batch, seq = hidden.shape[:2]
        position_ids = torch.arange(seq, device=hidden.device).unsqueeze(0).expand(batch, -1)
        for block in self.layers[layer:]:
            (hidden,) = block(hidden, attention_mask=None, position_ids=position_ids)
        return apply_softcap(self.head(self.ln_out(hidden)), self.output_logits_soft_cap)


def tl_config(cfg: ModelConfig, d_in: int, n_labels: int, n_ctx: int, seed: int) -> TransformerBridgeConfig:
    """The TransformerLens config of ``cfg`` for sequences of ``n_ctx`` tokens."""
    norm = None if cfg.normalization == "none" else cfg.normalization
    return TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.head_dim,
        n_heads=cfg.n_heads,
        n_layers=cfg.n_layers,
        n_ctx=n_ctx,
        d_vocab=n_labels,
        d_vocab_out=n_labels,
        d_mlp=cfg.d_mlp or 4 * cfg.d_model,
        attn_only=cfg.attn_only,
        act_fn=cfg.act_fn,
        normalization_type=norm,
        positional_embedding_type="rotary" if cfg.positional == "rotary" else "standard",
        # lecun_normal and torch are ours (applied after TransformerLens's init, see build_native).
        init_mode="gpt2" if cfg.init_mode in ("lecun_normal", "torch") else cfg.init_mode,
        initializer_range=cfg.init_range,
        seed=seed,
        architecture=ARCHITECTURE,
    )


def build_native(
    cfg: ModelConfig, d_in: int, n_labels: int, n_ctx: int, seed: int, layout: str = "interleaved"
) -> NativeModel:
    """A freshly initialised plain native model; the same ``seed`` gives the same weights.

    Args:
        cfg: model config.
        d_in: exemplar dimension.
        n_labels: label vocabulary (output size).
        n_ctx: sequence length (``2 * n_pairs + 1`` interleaved, ``n_pairs + 1`` packed).
        seed: initialisation seed (the global RNG is left untouched).
        layout: the data's token layout (``data.layout``), which the embedding stage reads.
    """
    if layout not in ("interleaved", "packed"):
        raise ValueError(f"layout: expected interleaved or packed, got {layout!r}")
    tcfg = tl_config(cfg, d_in, n_labels, n_ctx, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ICLNativeModel(tcfg)
        initialize_native_model(model, tcfg, seed=seed)
        model.tok_embed = ExemplarEmbed(
            d_in,
            n_labels,
            cfg.d_model,
            cfg.encoder,
            cfg.label_init,
            cfg.label_scale,
            cfg.label_bias,
            packed=layout == "packed",
            input_norm=cfg.input_norm,
        )
        if cfg.readout == "mlp":
            model.head = MLPReadout(cfg.d_model, cfg.readout_hidden, n_labels, cfg.binary_logit)
        if cfg.init_mode == "lecun_normal":
            _lecun_init(model, cfg.init_range)
        if cfg.init_mode == "torch":
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
                    module.reset_parameters()
        _fix_attention(model, cfg)
        if cfg.positional in ("sinusoidal", "none"):
            assert model.pos is not None
            with torch.no_grad():
                if cfg.positional == "sinusoidal":
                    shared = cfg.positions == "shared"
                    model.pos.weight.copy_(sinusoidal_table(n_ctx, cfg.d_model, shared=shared))
                else:
                    model.pos.weight.zero_()
            model.pos.weight.requires_grad_(False)
    return model


def _fix_attention(model: NativeModel, cfg: ModelConfig) -> None:
    """Apply the attention options that TransformerLens's config cannot express.

    ``attn_bias=False`` zeroes and freezes the Q/K/V/O biases; ``attn_out_proj=False`` sets
    ``W_O`` to the identity and freezes it; ``attn_scale`` replaces the score divisor
    (TransformerLens refuses 1 for ``d_head > 1``, which Nguyen & Reddy use). Frozen
    parameters stay in the state dict, so checkpoints load into the same model.
    """
    for block in model.layers:
        attn = block.attn
        if cfg.attn_scale > 0:
            attn.scale = cfg.attn_scale
        with torch.no_grad():
            if not cfg.attn_bias:
                for lin in (attn.q, attn.k, attn.v, attn.o):
                    lin.bias.zero_()
                    lin.bias.requires_grad_(False)
            if not cfg.attn_out_proj:
                attn.o.weight.copy_(torch.eye(cfg.d_model))
                attn.o.weight.requires_grad_(False)


def _lecun_init(model: torch.nn.Module, gain: float) -> None:
    """Every trainable linear and conv weight to ``lecun_normal`` (gain ``gain``), their biases to zero.

    The label embedding and frozen modules (the identity encoder, fixed position tables) keep
    their own init.
    """
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.weight.requires_grad:
            lecun_normal_(module.weight, gain=gain)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def to_bridge(native: NativeModel, copy_module: bool = True) -> TransformerBridge:
    """Wrap ``native`` in a :class:`TransformerBridge` (in eval mode) for analysis.

    The bridge replaces the module's submodules with hooked components in place, so by
    default a deep copy is wrapped and ``native`` stays a plain, trainable module.
    """
    module = copy.deepcopy(native) if copy_module else native
    bridge = build_bridge_from_module(
        module, ARCHITECTURE, tl_config=copy.deepcopy(native.cfg), model_name="icl-circuits"
    )
    bridge.eval()
    return bridge


def _keep_query(x: torch.Tensor, hook) -> torch.Tensor:
    # x: [batch, pos, d_model] -> [batch, 1, d_model], the query position only
    return x[:, -1:]


@contextlib.contextmanager
def query_readout(bridge: TransformerBridge) -> Iterator[TransformerBridge]:
    """Inside, ``bridge`` runs its final norm and readout at the query (last) position only.

    A hook on ``ln_final.hook_in`` (``unembed.hook_in`` without one), added after every hook
    already active there, keeps the last position: the final norm's and the readout's hooks,
    a cache of them and the logits hold ``pos`` 1. Each position's norm and readout is its
    own, so the query's values are those of the full forward; every other hook is untouched.
    """
    point = "ln_final.hook_in" if "ln_final.hook_in" in bridge.hook_dict else "unembed.hook_in"
    with bridge.hooks(fwd_hooks=[(point, _keep_query)]):
        yield bridge


def query_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, n_labels]`` logits at the query (last) position, native or bridge.

    A bridge runs its final norm and readout at the query only (:func:`query_readout`): the
    other positions' logits are never read.
    """
    if isinstance(model, TransformerBridge):
        with query_readout(model):
            return model(tokens)[:, -1]
    if isinstance(getattr(model, "_orig_mod", model), ICLNativeModel):
        return model(input_ids=tokens, query_only=True)
    return model(input_ids=tokens)[:, -1]


#: Bytes of one residual-stream activation ``[batch, pos, d_model]`` per forward over
#: :func:`chunks` of sequences (the analysis' ablations): a core's L2 cache (1 MiB here), the
#: rule of the stacked forward's chunks of seeds (:data:`icl_circuits.models.stacked.CHUNK_BYTES`);
#: far past it every elementwise op of the bridge's forward streams its activations from memory.
#: Measured: the demo bridge's query logits over 3 x 512 sequences of 17 tokens (d_model 64), one
#: thread, chunk sizes interleaved, 2 cores shared at load 10-14, CPU time against all 1536 at
#: once in two runs of 4 and 6 rounds: 220 per forward (this rule) 0.70x and 0.55x, 384 0.68x
#: and 0.50x, 128 0.79x and 0.62x, 768 0.88x and 0.72x; logits bitwise equal.
ANALYSIS_CHUNK_BYTES = 2**20


def sequences_per_chunk(n: int, seq: int, d_model: int, budget: int | None = None) -> int:
    """Sequences per forward: as few equal chunks of ``n`` as keep ``[chunk, seq, d_model]`` float32
    within ``budget`` bytes (default :data:`ANALYSIS_CHUNK_BYTES`)."""
    budget = ANALYSIS_CHUNK_BYTES if budget is None else budget
    n_chunks = max(1, -(-n * seq * d_model * 4 // budget))
    return -(-n // n_chunks)


def chunks(n: int, seq: int, d_model: int) -> list[slice]:
    """The rows of ``n`` sequences of ``seq`` tokens in chunks of :func:`sequences_per_chunk`.

    A forward per chunk gives each sequence the logits of one forward over all of them (no
    op mixes sequences), but hooks fire once per chunk: one whose edit depends on a row's
    index in the batch or on the batch's size (resample donors,
    :func:`probes.ablation.resample_index`) needs the whole batch in one forward.
    """
    step = sequences_per_chunk(n, seq, d_model)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def model_layout(model: torch.nn.Module) -> str:
    """``interleaved`` or ``packed``: the token layout ``model`` (native or bridge) was built for."""
    native = getattr(model, "_orig_mod", model)
    embed = getattr(native, "tok_embed", None)
    if embed is None:  # a bridge: the embedding module is wrapped
        embed = getattr(getattr(native, "embed", None), "original_component", None)
    return "packed" if getattr(embed, "packed", False) else "interleaved"


def require_interleaved(model: torch.nn.Module, what: str, why: str) -> None:
    """Refuse, in one line, an analysis ``what`` that the packed layout cannot support (``why``)."""
    if model_layout(model) == "packed":
        raise LayoutError(f"{what}: needs the interleaved layout (data.layout); {why}")
