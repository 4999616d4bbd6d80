"""Ground truth for the gating model's Algorithm 1 (Chan et al. 2024)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icl_circuits.configbase import ConfigError
from icl_circuits.data import StylizedConfig, build_source
from icl_circuits.data.batch import Batch
from icl_circuits.papers.chan2024.gating import GatingConfig, GatingModel, algorithm1_step, record_steps, train_gating

torch.set_num_threads(1)

K, D, L = 3, 2, 2
CFG = GatingConfig(hidden_g=(), hidden_alpha=(), lr_w=0.3, lr_u=0.2, lr_alpha=0.7, temperature_init=0.5)


def tiny_model() -> GatingModel:
    """Linear g, linear gate, hand-set parameters (float64)."""
    model = GatingModel(D, L, K, CFG).double()
    with torch.no_grad():
        model.g[0].weight.copy_(torch.tensor([[1.0, -0.5], [0.2, 0.8], [-0.3, 0.1]]))
        model.g[0].bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
        model.gate[0].weight.copy_(torch.tensor([[0.6, -0.4]]))
        model.gate[0].bias.copy_(torch.tensor([0.05]))
    return model


def tiny_batch() -> Batch:
    x = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [0.9, 0.2]],  # query near context item 0 (label 2)
            [[0.5, 0.5], [-1.0, 0.3], [-0.8, 0.1]],  # query near context item 1 (label 0)
        ],
        dtype=torch.float64,
    )
    return Batch(x, torch.tensor([[2, 1], [1, 0]]), torch.tensor([[0, 1, 0], [1, 2, 2]]), torch.tensor([2, 0]))


def np_losses(model: GatingModel, batch: Batch, log_t: float) -> tuple[np.ndarray, np.ndarray]:
    """Hand computation of l(g) and l(h) per sequence."""
    w, b = model.g[0].weight.detach().numpy(), model.g[0].bias.detach().numpy()
    x = batch.exemplars.numpy()
    y = batch.target.numpy()
    logits = x[:, -1] @ w.T + b
    p_g = np.exp(logits - logits.max(1, keepdims=True))
    p_g /= p_g.sum(1, keepdims=True)
    sq = ((x[:, :-1] - x[:, -1:]) ** 2).sum(-1)
    k = np.exp(-sq / math.exp(log_t))
    k /= k.sum(1, keepdims=True)
    p_h = np.full((len(y), K), CFG.h_smoothing / K)
    for i in range(len(y)):
        for j in range(L):
            p_h[i, batch.context_labels[i, j]] += (1 - CFG.h_smoothing) * k[i, j]
    idx = np.arange(len(y))
    return -np.log(p_g[idx, y]), -np.log(p_h[idx, y])


def test_one_step_matches_hand_computation():
    model, batch = tiny_model(), tiny_batch()
    x, y = batch.exemplars.numpy(), batch.target.numpy()
    w0, b0 = model.g[0].weight.detach().numpy().copy(), model.g[0].bias.detach().numpy().copy()
    v0, c0 = model.gate[0].weight.detach().numpy().copy()[0], model.gate[0].bias.item()
    u0 = model.h.log_temperature.item()
    l_g, l_h = np_losses(model, batch, u0)

    # w: softmax cross-entropy gradient of mean l(g) only.
    logits = x[:, -1] @ w0.T + b0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    err = (p - np.eye(K)[y]) / len(y)
    w_expect, b_expect = w0 - CFG.lr_w * err.T @ x[:, -1], b0 - CFG.lr_w * err.sum(0)
    # u: central difference of mean l(h) in log T.
    eps = 1e-6
    du = (np_losses(model, batch, u0 + eps)[1].mean() - np_losses(model, batch, u0 - eps)[1].mean()) / (2 * eps)
    u_expect = u0 - CFG.lr_u * du
    # gate: m_t = mean alpha_b (l_g - l_h) with the losses fixed; d alpha / d logit = alpha (1 - alpha).
    a = 1 / (1 + np.exp(-(x[:, -1] @ v0 + c0)))
    coef = (l_g - l_h) * a * (1 - a) / len(y)
    v_expect, c_expect = v0 - CFG.lr_alpha * coef @ x[:, -1], c0 - CFG.lr_alpha * coef.sum()

    observed = algorithm1_step(model, batch, CFG)
    np.testing.assert_allclose(observed["loss_g"], l_g.mean(), rtol=1e-10)
    np.testing.assert_allclose(observed["loss_h"], l_h.mean(), rtol=1e-10)
    np.testing.assert_allclose(model.g[0].weight.detach().numpy(), w_expect, rtol=1e-10)
    np.testing.assert_allclose(model.g[0].bias.detach().numpy(), b_expect, rtol=1e-10)
    np.testing.assert_allclose(model.h.log_temperature.item(), u_expect, rtol=1e-6)
    np.testing.assert_allclose(model.gate[0].weight.detach().numpy()[0], v_expect, rtol=1e-10)
    np.testing.assert_allclose(model.gate[0].bias.item(), c_expect, rtol=1e-10)
    assert du != 0  # L = 2, so the temperature does matter


def test_learners_see_only_their_own_loss():
    """w's update ignores h and the gate; u's ignores g and the gate; l(f) reaches nobody."""
    batch = tiny_batch()
    ref = tiny_model()
    algorithm1_step(ref, batch, CFG)
    other = tiny_model()
    with torch.no_grad():
        other.h.log_temperature.fill_(2.0)  # changes l(h), l(f) and m_t, not l(g)
        other.gate[0].bias.fill_(-3.0)
    algorithm1_step(other, batch, CFG)
    assert torch.allclose(ref.g[0].weight, other.g[0].weight)
    other = tiny_model()
    with torch.no_grad():
        other.g[0].weight.mul_(-2.0)  # changes l(g), l(f) and m_t, not l(h)
        other.gate[0].weight.fill_(1.0)
    algorithm1_step(other, batch, CFG)
    assert torch.allclose(ref.h.log_temperature, other.h.log_temperature)


def test_gate_moves_toward_the_lower_loss_predictor():
    """On one sequence, alpha (g's share) falls when l(g) > l(h) and rises when l(g) < l(h)."""
    full = tiny_batch()
    signs = []
    for i in range(2):
        batch = Batch(
            full.exemplars[i : i + 1], full.context_labels[i : i + 1], full.classes[i : i + 1], full.target[i : i + 1]
        )
        for flip in (False, True):
            model = tiny_model()
            if flip:  # make g confident in the right answer, so that l(g) < l(h)
                with torch.no_grad():
                    model.g[0].bias.fill_(-5.0)
                    model.g[0].bias[batch.target[0]] = 5.0
            l_g, l_h = np_losses(model, batch, model.h.log_temperature.item())
            before = model(batch)["alpha"].item()
            algorithm1_step(model, batch, CFG)
            after = model(batch)["alpha"].item()
            assert np.sign(after - before) == -np.sign(l_g[0] - l_h[0])
            signs.append(np.sign(l_g[0] - l_h[0]))
    assert set(signs) == {-1.0, 1.0}  # both directions were exercised


class NovelClasses:
    """Fresh class centres in every sequence; one relevant context item: only h can be right."""

    splits = ("IBD-high", "IBD-low")
    n_labels, d_in, n_pairs = 4, 8, 2

    def _batch(self, gen: torch.Generator, n: int) -> Batch:
        centres = torch.randn(n, self.n_pairs, self.d_in, generator=gen)
        labels = torch.stack([torch.randperm(self.n_labels, generator=gen)[: self.n_pairs] for _ in range(n)])
        which = torch.randint(0, self.n_pairs, (n,), generator=gen)
        query = centres[torch.arange(n), which] + 0.1 * torch.randn(n, self.d_in, generator=gen)
        x = torch.cat([centres, query[:, None]], dim=1)
        classes = torch.cat([torch.arange(self.n_pairs).expand(n, -1), which[:, None]], dim=1)
        return Batch(x, labels, classes, labels[torch.arange(n), which])

    def train_batch(self, step: int, n: int) -> Batch:
        return self._batch(torch.Generator().manual_seed(step), n)

    def eval_batch(self, split: str, n: int) -> Batch:
        return self._batch(torch.Generator().manual_seed(10**6 + len(split)), n)


def test_novel_queries_with_relevant_context_gate_to_h():
    _, _, ev = train_gating(NovelClasses(), GatingConfig(steps=300, eval_size=256, n_records=3, lr_alpha=0.5))
    alpha = ev[ev["metric"] == "alpha"]["value"]
    acc_f = ev[ev["metric"] == "acc_f"]["value"]
    assert alpha.max() < 0.2
    assert acc_f.min() > 0.9


def test_irrelevant_context_gates_to_g():
    source = build_source(StylizedConfig(n_train=2**12, p_relevant=0.0), 0)
    _, curve, ev = train_gating(source, GatingConfig(steps=200, eval_size=256, n_records=4, lr_w=0.5, lr_alpha=0.5))
    alpha = ev[(ev["metric"] == "alpha") & ev["split"].isin(["IBD", "IBD-high", "IBD-low"])]["value"]
    assert alpha.min() > 0.8
    assert set(curve["split"]) == {"train", "IBD-high", "IBD-low"}


def test_config_validation_and_records():
    with pytest.raises(ConfigError, match="lr_alpha"):
        GatingConfig(lr_alpha=0.0)
    with pytest.raises(ConfigError, match="alpha_input"):
        GatingConfig.from_dict({"alpha_input": "context"})
    assert GatingConfig.from_dict(GatingConfig().to_dict()) == GatingConfig()
    steps = record_steps(1000, 5)
    assert steps[0] == 1 and steps[-1] == 1000 and steps == sorted(steps)


def test_sequence_gate_runs():
    source = build_source(StylizedConfig(n_train=64, n_pairs=2), 0)
    model, _, ev = train_gating(source, GatingConfig(alpha_input="sequence", steps=3, eval_size=16, n_records=1))
    assert model.gate[0].in_features == 3 * 64 + 2 * 10
    assert ev["value"].between(0, 1).all()
