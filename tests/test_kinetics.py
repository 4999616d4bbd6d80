"""Ground truth for the Nguyen & Reddy minimal model and the K* fits (icl_circuits.papers.nguyen_reddy2024.kinetics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from icl_circuits.errors import ConfigError
from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin


def test_one_euler_step_matches_hand_computation():
    cfg = kin.KineticsConfig(eta_icl=0.1, eta_mem=2.0, beta_mean=0.3, beta_std=0.0, w0=0.5, steps=1)
    out = kin.simulate(cfg, [4], [8], n_seeds=1).iloc[0]
    beta, w, phi, N, K = 0.3, 0.5, 0.0, 4, 8
    a = math.exp(beta) / (math.exp(beta) + N - 1)
    err = 1 / (1 + math.exp(phi + w * a))
    beta1 = beta + 0.1 * err * w * a * (1 - a)
    w1 = w + 0.1 * err * a
    phi1 = phi + 2.0 / K * err
    a1 = math.exp(beta1) / (math.exp(beta1) + N - 1)
    assert out["icl_acc"] == pytest.approx(1 / (1 + math.exp(-w1 * a1)), rel=1e-12)
    assert out["iw_acc"] == pytest.approx(1 / (1 + math.exp(-phi1)), rel=1e-12)


@pytest.mark.parametrize("depth", [1, 3])
def test_memorisation_time_scales_with_K(depth):
    # ICL switched off: the memoriser alone, its dynamics a function of t / K**nu.
    cfg = kin.KineticsConfig(eta_icl=0.0, eta_mem=4.0, mem_depth=depth, steps=6000)
    t = kin.simulate(cfg, [4], [256, 512, 1024], n_seeds=1).set_index("K")["t_mem"]
    assert t[512] / t[256] == pytest.approx(2.0, rel=0.03)
    assert t[1024] / t[512] == pytest.approx(2.0, rel=0.03)
    sub = kin.simulate(cfg.replace(nu=0.5, eta_mem=0.5), [4], [256, 4096], n_seeds=1).set_index("K")["t_mem"]
    assert sub[4096] / sub[256] == pytest.approx(4.0, rel=0.03)  # (4096 / 256) ** 0.5


def test_without_memoriser_or_with_fresh_items_icl_always_wins():
    cfg = kin.KineticsConfig(eta_icl=0.05, eta_mem=50.0, steps=3000)
    no_mem = kin.simulate(cfg.replace(eta_mem=0.0), [2, 8], [4, 64, 1024], n_seeds=8)
    assert (no_mem["icl_acc"] > 0.95).all()
    fresh = kin.simulate(cfg, [2, 8], [math.inf, -1], n_seeds=8)
    assert (fresh["icl_acc"] > 0.95).all()
    assert np.allclose(fresh["iw_acc"], 0.5)
    # ...while a strong memoriser on few items wins instead.
    few = kin.simulate(cfg, [8], [4], n_seeds=8)
    assert (few["icl_acc"] < 0.75).all() and (few["iw_acc"] > 0.99).all()


def test_time_to_icl_grows_linearly_with_N_and_exponentially_with_beta0():
    cfg = kin.KineticsConfig(eta_icl=0.5, eta_mem=0.0, beta_std=0.0, steps=20_000)
    t = kin.simulate(cfg, [100, 200, 400], [math.inf], n_seeds=1).set_index("N")["t_icl"]
    assert t[400] / t[200] == pytest.approx(2.0, rel=0.1)
    assert t[200] / t[100] == pytest.approx(2.0, rel=0.15)
    # The plateau formula predicts the escape; reaching the 0.95 score takes a little longer.
    assert kin.escape_time(cfg, 400, 0.0) < t[400] < 1.3 * kin.escape_time(cfg, 400, 0.0)
    t1 = kin.simulate(cfg.replace(beta_mean=1.0), [400], [math.inf], n_seeds=1)["t_icl"].iloc[0]
    assert t1 / t[400] == pytest.approx(math.exp(-1.0), rel=0.1)


def test_threshold_grows_with_N_and_outcomes_depend_on_seed():
    cfg = kin.KineticsConfig(eta_icl=0.1, eta_mem=5.0, mem_depth=3, beta_std=0.5, steps=2500)
    Ks = list(np.geomspace(8, 1e5, 40))
    th = kin.model_thresholds(cfg, [2, 4, 8, 16], Ks, n_seeds=16).set_index("N")["kstar"]
    assert np.all(np.diff(th.to_numpy()) > 0)
    # Near K*, the seeds with a larger initial attention logit generalise, the others memorise.
    sim = kin.simulate(cfg, [8], [th[8]], n_seeds=16).sort_values("beta0")
    assert sim["icl_acc"].iloc[-1] > 0.9 and sim["icl_acc"].iloc[0] < 0.75
    assert np.all(np.diff(sim["icl_acc"].to_numpy()) >= -1e-9)


def test_fit_sigmoid_recovers_midpoint_and_width():
    x = np.repeat(np.linspace(1, 4, 7), 5)
    lo, hi = 1 / 32, 1.0
    y = lo + (hi - lo) * kin._sigmoid((x - 2.37) / 0.21)
    x0, width = kin.fit_sigmoid(x, y, lo, hi)
    assert x0 == pytest.approx(2.37, abs=0.01) and width == pytest.approx(0.21, rel=0.05)
    noisy = np.clip(y + np.random.default_rng(0).normal(0, 0.05, y.size), 0, 1)
    assert kin.fit_sigmoid(x, noisy, lo, hi)[0] == pytest.approx(2.37, abs=0.05)
    with pytest.raises(ValueError):
        kin.fit_sigmoid([2, 2], [0.1, 0.9], lo, hi)


def test_threshold_table_and_power_law_recover_a_known_exponent():
    rows = []
    for N in (2, 4, 8):
        kstar = 10 * N**1.5
        for K in np.geomspace(kstar / 8, kstar * 8, 7):
            for seed in range(3):
                acc = 0.5 + 0.5 * kin._sigmoid((math.log10(K) - math.log10(kstar)) / 0.1)
                rows.append({"N": N, "K": K, "seed": seed, "icl_acc": acc})
    th = kin.threshold_table(pd.DataFrame(rows), lo=0.5, n_boot=5)
    assert np.allclose(th["kstar"], 10 * th["N"] ** 1.5, rtol=0.03)
    ex = kin.exponent_with_ci(th)
    assert ex["exponent"] == pytest.approx(1.5, abs=0.02)
    assert ex["exponent_lo"] <= ex["exponent"] <= ex["exponent_hi"]
    slope, intercept = kin.fit_power_law([1, 10, 100], [3, 30, 300])
    assert slope == pytest.approx(1.0) and intercept == pytest.approx(math.log10(3))


def test_calibrate_recovers_the_rates_of_a_known_model():
    truth = kin.KineticsConfig(eta_icl=0.2, eta_mem=6.0, mem_depth=3, beta_std=0.4, steps=800)
    Ks = list(np.geomspace(8, 1e5, 28))
    kstar = kin.model_thresholds(truth, [4], Ks, n_seeds=8)["kstar"].iloc[0]
    t_ref = float(np.median(kin.simulate(truth, [4], [4 * kstar], n_seeds=8)["t_icl"]))
    start = truth.replace(eta_icl=0.01, eta_mem=1.0)
    fit = kin.calibrate(start, 4, kstar, t_ref, 4 * kstar, Ks, n_seeds=8)
    assert fit.eta_icl == pytest.approx(truth.eta_icl, rel=0.1)
    assert fit.eta_mem == pytest.approx(truth.eta_mem, rel=0.2)


def test_config_validation():
    with pytest.raises(ConfigError):
        kin.KineticsConfig(threshold=1.2)
    with pytest.raises(ConfigError):
        kin.KineticsConfig(mem_depth=0)
    with pytest.raises(ValueError):
        kin.simulate(kin.KineticsConfig(), [1], [8])
