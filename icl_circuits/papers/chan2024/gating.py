"""The gated in-weight / in-context predictor of Chan, Chen, György & Schuurmans 2024.

The paper's stylized model predicts with a gate between two predictors::

    f(x) = alpha(x) * g(x; w) + (1 - alpha(x)) * h(x; u)

* ``g`` (in-weight): an MLP on the query exemplar, softmax over the labels.
* ``h`` (in-context): a similarity kernel over the context, as in the reference code:
  ``softmax_i(-||x_i - x_q||^2 / T)`` weights the context labels' one-hots; ``u = log T``.
  Its distribution is smoothed, ``(1 - eps) * kernel + eps / K``, so that ``l(h)`` is finite
  (and bounded by ``log(K / eps)``) when the context lacks the query's label; the paper's
  regret analysis assumes bounded losses. With one context pair (L = 1) the kernel weight
  is 1 whatever T, so ``u`` then receives a zero gradient.
* ``alpha`` (the gate): ``sigmoid(MLP)``. Its input is the query (default) or the flattened
  sequence (``alpha_input="sequence"``, the reference's default). We default to the query:
  the paper's results are statements about which predictor the gate picks for high- vs
  low-frequency *queries*, and a query-only gate (also a reference template,
  ``simple_icl-fixed_g-query_only_alpha``) measures exactly that; a sequence gate can also
  read whether the context is relevant, which mixes that second signal into alpha.

Training follows the paper's **Algorithm 1** (bi-level update) literally, one batch per
step instead of one example (losses are batch means):

1. predict with ``f`` (probability mixture);
2. observe ``l(f)``, ``l(g)``, ``l(h)`` (cross-entropy of each distribution);
3. update ``w`` by its own online gradient descent step on ``l(g)`` only, ``u`` by its own
   step on ``l(h)`` only;
4. update alpha's parameters by a gradient step on ``m_t(alpha) = mean_b alpha(x_b) *
   (l_g,b - l_h,b)`` with the losses held fixed (detached), so the gate moves toward
   whichever predictor had the lower loss.

The reference code instead trains all three by one joint cross-entropy of ``f``; this
module implements the algorithm as the paper states it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from icl_circuits.configbase import FrozenConfig, require
from icl_circuits.data.batch import Batch
from icl_circuits.data.source import DataSource


@dataclasses.dataclass(frozen=True)
class GatingConfig(FrozenConfig):
    """The gating model and its Algorithm-1 learners.

    Attributes:
        hidden_g: hidden widths of the in-weight MLP ``g`` (reference: 64, 64).
        hidden_alpha: hidden widths of the gate MLP (reference: 64, 64).
        alpha_input: ``query`` or ``sequence`` (flattened context + query), see the module docstring.
        lr_w: online-gradient-descent step of ``g``'s parameters ``w``.
        lr_u: step of ``h``'s log-temperature ``u``.
        lr_alpha: step of the gate's parameters.
        temperature_init: initial kernel temperature ``T`` of ``h``.
        h_smoothing: ``eps`` of ``h``'s uniform smoothing (keeps ``l(h)`` finite).
        steps: Algorithm-1 rounds (one batch each).
        batch_size: sequences per round.
        n_records: log-spaced rounds at which the training curves are recorded.
        eval_size: sequences per evaluation split.
        device: torch device.
    """

    hidden_g: tuple[int, ...] = (64, 64)
    hidden_alpha: tuple[int, ...] = (64, 64)
    alpha_input: Literal["query", "sequence"] = "query"
    lr_w: float = 0.1
    lr_u: float = 0.1
    lr_alpha: float = 0.1
    temperature_init: float = 1.0
    h_smoothing: float = 0.01
    steps: int = 5000
    batch_size: int = 32
    n_records: int = 20
    eval_size: int = 1024
    device: str = "cpu"

    def validate(self) -> None:
        for name in ("hidden_g", "hidden_alpha"):
            widths = getattr(self, name)
            require(all(w >= 1 for w in widths), name, "positive widths", widths)
        for name in ("lr_w", "lr_u", "lr_alpha", "temperature_init"):
            require(getattr(self, name) > 0, name, "a positive number", getattr(self, name))
        require(0 < self.h_smoothing < 1, "h_smoothing", "a number in (0, 1)", self.h_smoothing)
        require(self.steps >= 1, "steps", "at least 1", self.steps)
        require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        require(self.n_records >= 1, "n_records", "at least 1", self.n_records)
        require(self.eval_size >= 1, "eval_size", "at least 1", self.eval_size)


def _mlp(d_in: int, hidden: tuple[int, ...], d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(d_in, width), nn.ReLU()]
        d_in = width
    layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


class InContextPredictor(nn.Module):
    """``h(x; u)``: kernel-weighted context labels, ``u = log T``."""

    def __init__(self, n_labels: int, temperature_init: float = 1.0, smoothing: float = 0.01) -> None:
        super().__init__()
        self.n_labels = n_labels
        self.smoothing = smoothing
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature_init)))

    def forward(self, batch: Batch) -> Tensor:
        """Label distribution ``[batch, n_labels]``."""
        ctx, query = batch.exemplars[:, :-1], batch.exemplars[:, -1:]  # [batch, L, d], [batch, 1, d]
        sq_dist = (ctx - query).pow(2).sum(-1)  # [batch, L]
        weights = torch.softmax(-sq_dist / self.log_temperature.exp(), dim=-1)
        onehot = nn.functional.one_hot(batch.context_labels, self.n_labels).to(weights.dtype)  # [batch, L, K]
        kernel = torch.einsum("bl,blk->bk", weights, onehot)
        return (1 - self.smoothing) * kernel + self.smoothing / self.n_labels


class GatingModel(nn.Module):
    """``f = alpha * g + (1 - alpha) * h`` over label distributions."""

    def __init__(self, d_in: int, n_pairs: int, n_labels: int, cfg: GatingConfig) -> None:
        super().__init__()
        self.alpha_input = cfg.alpha_input
        self.g = _mlp(d_in, cfg.hidden_g, n_labels)
        self.h = InContextPredictor(n_labels, cfg.temperature_init, cfg.h_smoothing)
        # The sequence gate sees every exemplar and the context labels' one-hots.
        d_gate = d_in if cfg.alpha_input == "query" else (n_pairs + 1) * d_in + n_pairs * n_labels
        self.gate = _mlp(d_gate, cfg.hidden_alpha, 1)
        self.n_labels = n_labels

    def gate_features(self, batch: Batch) -> Tensor:
        if self.alpha_input == "query":
            return batch.exemplars[:, -1]
        onehot = nn.functional.one_hot(batch.context_labels, self.n_labels).float()
        return torch.cat([batch.exemplars.flatten(1), onehot.flatten(1)], dim=1)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """``{"g", "h", "f"}`` label distributions ``[batch, n_labels]`` and ``"alpha"`` ``[batch]``."""
        p_g = torch.softmax(self.g(batch.exemplars[:, -1]), dim=-1)
        p_h = self.h(batch)
        alpha = torch.sigmoid(self.gate(self.gate_features(batch))).squeeze(-1)
        p_f = alpha[:, None] * p_g + (1 - alpha[:, None]) * p_h
        return {"f": p_f, "g": p_g, "h": p_h, "alpha": alpha}


def losses(out: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
    """Per-sequence cross-entropy ``[batch]`` of ``f``, ``g`` and ``h``."""
    return {k: -out[k].gather(1, target[:, None]).squeeze(1).clamp_min(1e-30).log() for k in ("f", "g", "h")}


def algorithm1_step(model: GatingModel, batch: Batch, cfg: GatingConfig) -> dict[str, float]:
    """One round of Algorithm 1 on ``batch``; updates ``model`` in place, returns the observed losses.

    Each learner is plain online gradient descent on its own loss: ``w`` on ``l(g)``, ``u``
    on ``l(h)`` and the gate on ``m_t``; no gradient of ``l(f)`` reaches any parameter.
    """
    out = model(batch)
    loss = losses(out, batch.target)
    l_g, l_h = loss["g"].mean(), loss["h"].mean()
    # m_t(alpha) = alpha(x_t) (l_g - l_h): the losses are data for the gate's learner.
    m_t = (out["alpha"] * (loss["g"] - loss["h"]).detach()).mean()
    groups = [(list(model.g.parameters()), l_g, cfg.lr_w), (list(model.h.parameters()), l_h, cfg.lr_u)]
    groups.append((list(model.gate.parameters()), m_t, cfg.lr_alpha))
    grads = [torch.autograd.grad(obj, params, allow_unused=True) for params, obj, _ in groups]
    with torch.no_grad():
        for (params, _, lr), gs in zip(groups, grads, strict=True):
            for p, grad in zip(params, gs, strict=True):
                if grad is not None:
                    p.sub_(lr * grad)
    return {
        "loss_f": loss["f"].mean().item(),
        "loss_g": l_g.item(),
        "loss_h": l_h.item(),
        "m_t": m_t.item(),
        "alpha": out["alpha"].mean().item(),
    }


def record_steps(steps: int, n: int) -> list[int]:
    """``n`` roughly log-spaced rounds in ``[1, steps]``, always including the last."""
    grid = np.unique(np.round(np.geomspace(1, steps, n)).astype(int))
    return sorted(set(grid.tolist()) | {steps})


@torch.no_grad()
def evaluate(model: GatingModel, source: DataSource, n: int, splits: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Accuracy of ``f``, ``g``, ``h`` and the mean gate on each split: tidy ``split, metric, value``."""
    rows = []
    for split in splits or source.splits:
        batch = source.eval_batch(split, n)
        out = model(batch)
        for k in ("f", "g", "h"):
            acc = (out[k].argmax(-1) == batch.target).float().mean().item()
            rows.append({"split": split, "metric": f"acc_{k}", "value": acc})
        rows.append({"split": split, "metric": "alpha", "value": out["alpha"].mean().item()})
    return pd.DataFrame(rows)


def train_gating(
    source: DataSource, cfg: GatingConfig, seed: int = 0, progress: bool = False
) -> tuple[GatingModel, pd.DataFrame, pd.DataFrame]:
    """Train the gating model on ``source``'s training batches with Algorithm 1.

    Args:
        source: a data source (for the stylized family, the same finite set of ``n_train``
            sequences the transformer sees, through ``train_batch``).
        cfg: the model and learners.
        seed: initialisation seed.
        progress: show a tqdm bar.

    Returns:
        The trained model, the training curves (tidy ``step, split, metric, value``: the
        batch losses under split ``train`` and the mean gate on the ``IBD-high`` /
        ``IBD-low`` splits where the source has them) and the final evaluation (tidy
        ``split, metric, value`` with ``acc_f``, ``acc_g``, ``acc_h``, ``alpha``).
    """
    torch.manual_seed(seed)
    model = GatingModel(source.d_in, source.n_pairs, source.n_labels, cfg).to(cfg.device)
    records = set(record_steps(cfg.steps, cfg.n_records))
    curve_splits = tuple(s for s in ("IBD-high", "IBD-low") if s in source.splits)
    curve_batches = {s: source.eval_batch(s, min(cfg.eval_size, 512)) for s in curve_splits}
    rows = []
    for step in tqdm(range(1, cfg.steps + 1), disable=not progress, desc="gating", leave=False):
        observed = algorithm1_step(model, source.train_batch(step - 1, cfg.batch_size), cfg)
        if step in records:
            rows += [{"step": step, "split": "train", "metric": k, "value": v} for k, v in observed.items()]
            rows.append(
                {"step": step, "split": "train", "metric": "temperature", "value": model.h.log_temperature.exp().item()}
            )
            with torch.no_grad():
                for split, batch in curve_batches.items():
                    alpha = model(batch)["alpha"].mean().item()
                    rows.append({"step": step, "split": split, "metric": "alpha", "value": alpha})
    return model, pd.DataFrame(rows), evaluate(model, source, cfg.eval_size)
