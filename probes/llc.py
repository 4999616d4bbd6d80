"""The local learning coefficient (LLC) of a model, whole or refined, through devinterp 1.x.

The LLC (Lau et al. 2023) is estimated from samples of a tempered, localised posterior
around the trained weights ``w*``: ``llc = nbeta * (E[L(w)] - L(w*))``, the samples drawn by
SGLD (``devinterp.optim.sgmcmc.SGMCMC.sgld``; nothing here re-implements the sampler).

* :func:`estimate_llc`: the estimate for any ``torch.nn.Module`` and a loss
  ``loss_fn(model, batch_tuple)``; ``mask`` restricts sampling to some weights (the
  weight-refined LLC of Wang et al. 2024), the data are what the loss is measured on (the
  data-refined LLC: e.g. the ICL split's sequences against the IWL split's).
* :func:`query_loss`: this toolkit's loss, cross-entropy of the query's label.
* :func:`component_masks`: a mask per attention head (its rows of ``W_Q, W_K, W_V`` and
  their biases, its columns of ``W_O``), per MLP and for the readout of a native model.
* :func:`diagnose` (chain health), :func:`trace_figure` (the chains' loss traces) and
  :func:`calibrate` (a grid of step sizes and inverse temperatures, with the largest healthy
  step recommended).

Why devinterp 1.x (1.3.2) and not 2.x: 1.x takes any ``evaluate(model, batch) -> loss`` and a
plain ``DataLoader``, so the query-position loss and the bit-cast token tensors go in as
they are; 2.x samples language models from a HuggingFace ``datasets.Dataset`` of
``input_ids`` with a per-token next-token loss, and brings ``transformers``, ``datasets``,
``xarray``, ``zarr`` and ``pydantic``, where 1.x needs only ``cloudpickle`` beyond what this
toolkit already installs. 1.x runs chains one after another (or in processes); it has no
vectorised chains.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from icl_circuits.errors import ICLError
from icl_circuits.models.build import query_logits

INSTALL = "pip install 'icl-circuits[devinterp]'"
#: ``loss_fn(model, batch)``: the mean loss of a batch (a tuple of tensors, as the DataLoader gives).
LossFn = Callable[[torch.nn.Module, Sequence[Tensor]], Tensor]


def require_devinterp():
    """The devinterp package, or one line saying how to install it."""
    try:
        return importlib.import_module("devinterp")
    except ImportError:
        raise ICLError(f"llc: needs the devinterp package ({INSTALL})") from None


@dataclasses.dataclass(frozen=True)
class LLCConfig:
    """SGLD settings of one LLC estimate.

    The defaults are those :func:`calibrate` recommends on the demo run's checkpoints
    (steps 434 and 2069: a step of 1e-3 keeps the traces' drift within 0.5 of an LLC of
    about 60 at the default nbeta of a batch of 64; docs/development.md).

    Attributes:
        lr: SGLD step size epsilon.
        nbeta: inverse temperature n*beta; None: devinterp's default ``m / log m`` for the
            batch size ``m``.
        localization: strength gamma of the pull back to the trained weights.
        chains: independent chains (their spread is ``llc_std``).
        draws: draws per chain (one SGLD step each), after ``burnin`` steps.
        burnin: SGLD steps before the first draw.
        batch_size: sequences per SGLD step.
        n_data: sequences the loss is measured on (a fixed set).
        seed: seeds the chains and the order of the batches.
    """

    lr: float = 1e-3
    nbeta: float | None = None
    localization: float = 100.0
    chains: int = 2
    draws: int = 100
    burnin: int = 0
    batch_size: int = 64
    n_data: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("lr", self.lr > 0, "a positive step size"),
            ("nbeta", self.nbeta is None or self.nbeta > 0, "a positive inverse temperature or None"),
            ("localization", self.localization >= 0, "a non-negative strength"),
            ("chains", self.chains >= 1, "at least 1 chain"),
            ("draws", self.draws >= 4, "at least 4 draws"),
            ("burnin", self.burnin >= 0, "a non-negative number of steps"),
            ("batch_size", self.batch_size >= 2, "at least 2 sequences"),
            ("n_data", self.n_data >= self.batch_size, "at least batch_size sequences"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ICLError(f"llc.{name}: expected {what}, got {getattr(self, name)!r}")

    @property
    def effective_nbeta(self) -> float:
        """``nbeta``, or devinterp's default for the batch size."""
        return self.nbeta if self.nbeta is not None else self.batch_size / math.log(self.batch_size)


@dataclasses.dataclass(frozen=True)
class LLCEstimate:
    """One LLC estimate and its chains.

    Attributes:
        llc: mean over chains.
        std: standard deviation over chains.
        chains: each chain's estimate.
        loss_trace: ``[chains, draws]`` minibatch loss at each draw.
        init_loss: the loss at the trained weights (mean over the whole data set).
        nbeta: the inverse temperature used.
    """

    llc: float
    std: float
    chains: np.ndarray
    loss_trace: np.ndarray
    init_loss: float
    nbeta: float


def query_loss(model: torch.nn.Module, batch: Sequence[Tensor]) -> Tensor:
    """Cross-entropy of the query's label: ``batch = (tokens, target)`` from :meth:`Batch.tokens`."""
    tokens, target = batch
    return F.cross_entropy(query_logits(model, tokens), target)


class _Rows(torch.utils.data.TensorDataset):
    """A TensorDataset that hands the DataLoader a whole batch by one indexing (``__getitems__``)."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(indices)
        return tuple(t[idx] for t in self.tensors)


def _whole(batch):
    return batch


def _loader(data: Sequence[Tensor], batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _Rows(*data), batch_size=batch_size, shuffle=True, generator=gen, drop_last=True, collate_fn=_whole
    )


@torch.no_grad()
def full_loss(model: torch.nn.Module, data: Sequence[Tensor], loss_fn: LossFn, chunk: int = 1024) -> float:
    """The mean of ``loss_fn`` over all of ``data`` (in chunks)."""
    n = len(data[0])
    total = 0.0
    for i in range(0, n, chunk):
        part = [t[i : i + chunk] for t in data]
        total += float(loss_fn(model, part)) * len(part[0])
    return total / n


def estimate_llc(
    model: torch.nn.Module,
    data: Sequence[Tensor],
    config: LLCConfig = LLCConfig(),
    loss_fn: LossFn = query_loss,
    mask: dict[str, Tensor] | None = None,
) -> LLCEstimate:
    """The LLC of ``model`` (left unchanged) at its weights, on ``data``, by devinterp's SGLD.

    Args:
        model: any module; each chain samples a deep copy.
        data: tensors of equal length (e.g. ``(tokens, target)``); the first ``config.n_data``
            rows are used.
        config: the sampler settings.
        loss_fn: the mean loss of a batch.
        mask: ``{parameter name: bool tensor of its shape}``, True where the weight is
            sampled (the rest stay at their trained values): the weight-refined LLC. None:
            every weight. Parameters not named are held fixed.

    Returns:
        The estimate, its chains and loss traces.
    """
    require_devinterp()
    data = [t[: config.n_data] for t in data]
    if len(data[0]) < config.batch_size:
        raise ICLError(f"llc: {len(data[0])} sequences, fewer than batch_size {config.batch_size}")
    was_training = model.training
    model.eval()
    init_loss = full_loss(model, data, loss_fn)
    per_param = None
    if mask is not None:
        per_param = {}
        for name, p in model.named_parameters():
            m = mask.get(name)
            per_param[name] = torch.zeros_like(p, dtype=torch.bool) if m is None else m.to(torch.bool)
    nbeta = config.effective_nbeta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = _sample(model, data, config, loss_fn, per_param, init_loss, nbeta)
        except RuntimeError as err:
            if "NaN" not in str(err):
                raise
            out = None  # a chain diverged: devinterp stops at the first NaN loss
    model.train(was_training)
    if out is None:
        nan = np.full(config.chains, np.nan)
        return LLCEstimate(math.nan, math.nan, nan, np.full((config.chains, config.draws), np.nan), init_loss, nbeta)
    chains = np.array([out[f"llc-chain/{i}"] for i in range(config.chains)], dtype=float)
    return LLCEstimate(
        llc=float(out["llc/mean"]),
        std=float(out["llc/std"]),
        chains=chains,
        loss_trace=np.asarray(out["loss/trace"], dtype=float),
        init_loss=init_loss,
        nbeta=nbeta,
    )


def _sample(model, data, config: LLCConfig, loss_fn: LossFn, per_param, init_loss: float, nbeta: float) -> dict:
    from devinterp.optim.sgmcmc import SGMCMC
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    return estimate_learning_coeff_with_summary(
        model,
        loader=_loader(data, config.batch_size, config.seed),
        evaluate=loss_fn,
        sampling_method=SGMCMC.sgld,
        optimizer_kwargs={"lr": config.lr, "localization": config.localization, "nbeta": nbeta},
        num_draws=config.draws,
        num_chains=config.chains,
        num_burnin_steps=config.burnin,
        init_loss=init_loss,
        seed=config.seed,
        verbose=False,
        optimize_over_per_model_param=per_param,
    )


def diagnose(est: LLCEstimate, max_drift: float = 0.2) -> dict[str, float | bool]:
    """Chain health of an estimate.

    Returns:
        ``finite`` (no NaN or inf in the traces); ``drift``: the LLC the last quarter of the
        draws gives minus the second quarter's (a trace still climbing has not
        equilibrated: the step is too small or the run too short; one that runs away
        diverges); ``spread``: ``std / max(|llc|, 1)`` across chains; ``healthy``: finite,
        a positive LLC (a negative one means the sampler found lower loss nearby: the
        weights are not at a local minimum, or the step is too large) and
        ``|drift| <= max_drift * max(|llc|, 1)``.
    """
    trace = est.loss_trace
    finite = bool(np.isfinite(trace).all()) and math.isfinite(est.llc)
    q = max(1, trace.shape[1] // 4)
    mid = trace[:, q : 2 * q].mean()
    late = trace[:, -q:].mean()
    scale = max(abs(est.llc), 1.0)
    drift = float(est.nbeta * (late - mid)) if finite else math.inf
    spread = float(est.std / scale) if finite else math.inf
    healthy = finite and est.llc > 0 and abs(drift) <= max_drift * scale
    return {"finite": finite, "drift": drift, "spread": spread, "healthy": bool(healthy)}


def trace_figure(est: LLCEstimate, title: str = "SGLD loss traces"):
    """Each chain's loss at every draw, the mean dashed, the loss at the trained weights dotted.

    A healthy trace rises from the trained loss and levels off; one still rising needs more
    draws or a larger step, one that runs away a smaller step.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, chain in enumerate(est.loss_trace):
        ax.plot(chain, lw=0.8, label=f"chain {i}")
    ax.plot(est.loss_trace.mean(0), "k--", lw=1.5, label="mean")
    ax.axhline(est.init_loss, color="0.4", ls=":", label="trained weights")
    ax.set_xlabel("draw")
    ax.set_ylabel("loss")
    ax.set_title(f"{title} (LLC {est.llc:.2f} +- {est.std:.2f})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def calibrate(
    model: torch.nn.Module,
    data: Sequence[Tensor],
    config: LLCConfig = LLCConfig(),
    lrs: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3),
    nbetas: Sequence[float | None] | None = None,
    loss_fn: LossFn = query_loss,
    mask: dict[str, Tensor] | None = None,
) -> pd.DataFrame:
    """A grid of step sizes and inverse temperatures, each with its estimate and health.

    ``nbetas`` None: the config's own; a None in it: devinterp's default for the batch size.

    Returns:
        One row per ``(lr, nbeta)``: ``lr, nbeta, llc, std`` and the :func:`diagnose`
        columns; ``attrs["recommended"]`` is the healthy row of the largest step (fastest
        mixing; ties: the first nbeta), as a ``{"lr", "nbeta"}`` dict, or None if no row is
        healthy (then lower the step or raise the draws).
    """
    rows = []
    for nbeta in (config.nbeta,) if nbetas is None else nbetas:
        for lr in lrs:
            cfg = dataclasses.replace(config, lr=lr, nbeta=nbeta)
            est = estimate_llc(model, data, cfg, loss_fn, mask)
            rows.append({"lr": lr, "nbeta": est.nbeta, "llc": est.llc, "std": est.std, **diagnose(est)})
    table = pd.DataFrame(rows)
    healthy = table[table.healthy]
    if healthy.empty:
        table.attrs["recommended"] = None
    else:
        best = healthy.sort_values("lr", ascending=False, kind="stable").iloc[0]
        table.attrs["recommended"] = {"lr": float(best.lr), "nbeta": float(best.nbeta)}
    return table


def component_masks(model: torch.nn.Module) -> dict[str, dict[str, Tensor]]:
    """Masks of every attention head, MLP and the readout of a native model.

    Keys: ``L{layer}H{head}`` (the head's rows of the query, key and value weights and biases,
    its columns of the output weight; the output bias is shared by the heads and belongs to
    none), ``L{layer}.mlp`` (every weight of that layer's MLP) and ``readout`` (the
    unembedding or readout MLP, ``head.*``), each present only if the model has it.
    """
    cfg = model.cfg
    params = dict(model.named_parameters())
    masks: dict[str, dict[str, Tensor]] = {}
    for layer in range(cfg.n_layers):
        pre = f"layers.{layer}.attn."
        if f"{pre}q.weight" not in params or f"{pre}o.weight" not in params:
            raise ICLError(f"llc: layer {layer} has no q/k/v/o attention weights to refine per head")
        for h in range(cfg.n_heads):
            rows = slice(h * cfg.d_head, (h + 1) * cfg.d_head)
            mask = {}
            for part in ("q", "k", "v"):
                for kind in ("weight", "bias"):
                    name = f"{pre}{part}.{kind}"
                    if name in params:
                        m = torch.zeros_like(params[name], dtype=torch.bool)
                        m[rows] = True
                        mask[name] = m
            m = torch.zeros_like(params[f"{pre}o.weight"], dtype=torch.bool)
            m[:, rows] = True
            mask[f"{pre}o.weight"] = m
            masks[f"L{layer}H{h}"] = mask
        mlp = {
            n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items() if n.startswith(f"layers.{layer}.mlp.")
        }
        if mlp:
            masks[f"L{layer}.mlp"] = mlp
    readout = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items() if n.startswith("head.")}
    if readout:
        masks["readout"] = readout
    return masks


def union(masks: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The union of masks (a weight is sampled if any mask samples it)."""
    out: dict[str, Tensor] = {}
    for mask in masks:
        for name, m in mask.items():
            out[name] = out[name] | m if name in out else m.clone()
    return out
