"""The LLC estimator (probes.llc, through devinterp) against known learning coefficients.

* A regular model (linear regression, d = 4 weights, Gaussian noise): lambda = d / 2 = 2.
* A singular model with a redundant weight (``y = (a + b) x_0 + c . x_{1:4}``, 5 weights of
  which 4 are identifiable): lambda = 4 / 2 = 2, not d / 2 = 2.5.
* A product reparametrisation (``y = a b x_3 + c . x_{0:3}`` at ``ab != 0``): lambda = 2 of 5 weights.

Tolerance: 15 % of the true lambda (it separates 2 from the regular 2.5 of 5 weights), with
8 chains of 300 draws after 100 burn-in steps, step 3e-3, nbeta = 30, localization 1; the
seeded estimates are 2.10, 2.12 and 2.19 (chain std 0.54, 0.37, 0.33), and 1.58 for the
3 weights of the masked test (lambda 1.5): SGLD's finite step biases them up by 5-10 %.
Per head, on the hand-wired induction model (1 chain of 60 draws at step 3e-4): the two
working heads have LLC > 0.3 and the two inert heads (they write nothing) |LLC| < 0.1
(measured 3.9 and 0.56 against 0.03 and 0.004).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("devinterp")

from icl_circuits.data.gaussian import GaussianConfig, GaussianSource  # noqa: E402
from icl_circuits.errors import ICLError  # noqa: E402
from probes.handwired import INDUCTION_HEAD, PREV_TOKEN_HEAD, induction_circuit_model  # noqa: E402
from probes.llc import (  # noqa: E402
    LLCConfig,
    calibrate,
    component_masks,
    diagnose,
    estimate_llc,
    trace_figure,
    union,
)

N, D = 1000, 4
GEN = torch.Generator().manual_seed(0)
X = torch.randn(N, D, generator=GEN)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + torch.randn(N, generator=GEN)
W_HAT = torch.linalg.lstsq(X, Y[:, None]).solution[:, 0]
CFG = LLCConfig(lr=3e-3, nbeta=30.0, localization=1.0, chains=8, draws=300, burnin=100, batch_size=N, n_data=N)


def nll(model, batch):
    """Gaussian negative log-likelihood per sample (unit noise), up to a constant."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).mean()


class Regular(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(W_HAT.clone())

    def forward(self, x):
        return x @ self.w


class Redundant(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(W_HAT[:1] / 2)
        self.b = nn.Parameter(W_HAT[:1] / 2)
        self.c = nn.Parameter(W_HAT[1:].clone())

    def forward(self, x):
        return x[:, :1] @ (self.a + self.b) + x[:, 1:] @ self.c


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(W_HAT[3:].sqrt())
        self.b = nn.Parameter(W_HAT[3:].sqrt())
        self.c = nn.Parameter(W_HAT[:3].clone())

    def forward(self, x):
        return x[:, 3] * (self.a * self.b) + x[:, :3] @ self.c


@pytest.mark.parametrize(("model", "lam"), [(Regular, 2.0), (Redundant, 2.0), (Product, 2.0)])
def test_llc_of_known_models(model, lam):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    est = estimate_llc(m, (X, Y), CFG, nll)
    assert abs(est.llc - lam) <= 0.15 * lam, f"{model.__name__}: {est.llc:.3f} vs lambda {lam}"
    assert diagnose(est)["healthy"]
    assert est.loss_trace.shape == (CFG.chains, CFG.draws)
    assert (est.loss_trace.mean(1) > est.init_loss).all(), "every chain samples above the minimum"
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "the model is left unchanged"


def test_mask_freezes_the_rest(tmp_path):
    """Sampling only ``c`` of the redundant model: lambda of 3 regular weights = 1.5."""
    m = Redundant()
    mask = {"c": torch.ones(3, dtype=torch.bool)}
    est = estimate_llc(m, (X, Y), CFG, nll, mask=mask)
    assert abs(est.llc - 1.5) <= 0.15 * 1.5, est.llc
    fig = trace_figure(est)
    assert len(fig.axes[0].lines) == CFG.chains + 2
    fig.savefig(tmp_path / "trace.png")


def test_calibrate_flags_a_diverging_step():
    cfg = LLCConfig(nbeta=30.0, localization=1.0, chains=4, draws=200, burnin=100, batch_size=N, n_data=N)
    table = calibrate(Regular(), (X, Y), cfg, lrs=(3e-3, 1.0), loss_fn=nll)
    assert list(table.lr) == [3e-3, 1.0]
    assert table.healthy.iloc[0], table
    assert not table.healthy.iloc[1] and not table.finite.iloc[1], "a step of 1 at nbeta 30 diverges"
    assert table.attrs["recommended"] == {"lr": 3e-3, "nbeta": 30.0}


def test_bad_config_is_one_line():
    with pytest.raises(ICLError, match="llc.lr"):
        LLCConfig(lr=0)
    with pytest.raises(ICLError, match="llc.n_data"):
        LLCConfig(batch_size=64, n_data=10)


def test_per_head_llc_of_handwired_model():
    src = GaussianSource(GaussianConfig(n_classes=256, n_labels=8, d=16, n_pairs=4, burst=2, noise=0.1), seed=0)
    batch = src.eval_batch("IC", 256)
    model = induction_circuit_model(16, 8, 4, sharpness=10.0)
    masks = component_masks(model)
    assert set(masks) == {"L0H0", "L0H1", "L1H0", "L1H1", "readout"}
    cfg = LLCConfig(lr=3e-4, localization=100.0, chains=1, draws=60, burnin=20, batch_size=64, n_data=256)
    llc = {
        name: estimate_llc(model, (batch.tokens(), batch.target), cfg, mask=masks[name]).llc
        for name in masks
        if name != "readout"
    }
    used = [f"L{layer}H{head}" for layer, head in (PREV_TOKEN_HEAD, INDUCTION_HEAD)]
    for name, value in llc.items():
        if name in used:
            assert value > 0.3, llc
        else:
            assert abs(value) < 0.1, llc
    both = union([masks["L0H0"], masks["L0H1"]])
    assert both["layers.0.attn.q.weight"].all() and "layers.1.attn.q.weight" not in both
