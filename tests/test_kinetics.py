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


def _grid_fit(x, y, lo, hi):
    """The reference fit: a 121 x 121 grid over the bounds of ``fit_sigmoid``, then two finer
    grids (41 x 41, each spanning +-2 spacings of the previous), the minimum squared error."""
    span = float(np.ptp(x))
    x0_lo, x0_hi, lw_lo, lw_hi = x.min() - 1.0, x.max() + 1.0, math.log(span / 200), math.log(span * 2)
    best = (0.5 * (x0_lo + x0_hi), 0.5 * (lw_lo + lw_hi))
    for n_grid, shrink in ((121, None), (41, 1 / 60), (41, 1 / 1200)):
        if shrink is None:
            x0s, lws = np.linspace(x0_lo, x0_hi, n_grid), np.linspace(lw_lo, lw_hi, n_grid)
        else:
            x0s = np.clip(best[0] + np.linspace(-1, 1, n_grid) * shrink * (x0_hi - x0_lo), x0_lo, x0_hi)
            lws = np.clip(best[1] + np.linspace(-1, 1, n_grid) * shrink * (lw_hi - lw_lo), lw_lo, lw_hi)
        pred = lo + (hi - lo) * kin._sigmoid((x[None, None, :] - x0s[:, None, None]) / np.exp(lws)[None, :, None])
        i, j = np.unravel_index(int(np.argmin(((pred - y) ** 2).sum(-1))), (n_grid, n_grid))
        best = (float(x0s[i]), float(lws[j]))
    return best[0], math.exp(best[1])


def _sse(x, y, lo, hi, x0, width):
    return float(((lo + (hi - lo) * kin._sigmoid((x - x0) / width) - y) ** 2).sum())


def test_fit_sigmoid_matches_a_fine_grid_search():
    """curve_fit reaches the grid's least squares or lower: its midpoint on noisy sigmoids, the truth on exact ones."""
    rng = np.random.default_rng(0)
    for case in range(40):
        x = np.repeat(np.linspace(1.0, 3.5, int(rng.integers(4, 9))), int(rng.integers(1, 4)))
        lo = (0.5, 1 / 32)[case % 2]
        x0, width = rng.uniform(1.3, 3.2), rng.uniform(0.05, 0.6)
        noise = (0.0, 0.03)[case % 2]
        y = np.clip(lo + (1 - lo) * kin._sigmoid((x - x0) / width) + rng.normal(0, noise, x.size), 0, 1)
        fit, ref = kin.fit_sigmoid(x, y, lo, 1.0), _grid_fit(x, y, lo, 1.0)
        assert _sse(x, y, lo, 1.0, *fit) <= _sse(x, y, lo, 1.0, *ref) + 1e-9
        if noise:
            assert fit[0] == pytest.approx(ref[0], abs=0.02)
        else:  # the truth, which the grid finds only to within its spacing
            assert fit[0] == pytest.approx(x0, abs=1e-4) and fit[1] == pytest.approx(width, rel=1e-3)


def test_bootstrap_interval_matches_a_resampling_loop():
    """scipy's bootstrap gives the interval of resampling seeds within each K by hand (500 draws)."""
    rng = np.random.default_rng(1)
    rows = [
        {"N": 8, "K": k, "seed": seed, "icl_acc": 0.5 + 0.5 * kin._sigmoid((math.log10(k) - 1.9) / 0.15 + rng.normal())}
        for k in (20, 40, 80, 160, 320)
        for seed in range(3)
    ]
    df = pd.DataFrame(rows)
    th = kin.threshold_table(df, lo=0.5, n_boot=500, seed=0).iloc[0]
    groups = [g["icl_acc"].to_numpy() for _, g in df.groupby("K")]
    logk = np.concatenate([np.full(len(g), math.log10(k)) for k, g in df.groupby("K")])
    draw = np.random.default_rng(7)
    boot = [
        kin.fit_sigmoid(logk, np.concatenate([g[draw.integers(0, len(g), len(g))] for g in groups]), 0.5, 1.0)[0]
        for _ in range(500)
    ]
    assert len(th["boot"]) == 500
    assert th["log10_kstar_lo"] == pytest.approx(np.percentile(boot, 2.5), abs=0.03)
    assert th["log10_kstar_hi"] == pytest.approx(np.percentile(boot, 97.5), abs=0.03)
    assert th["log10_kstar_lo"] < th["log10_kstar"] < th["log10_kstar_hi"]


def test_bootstrap_keeps_a_single_seed_K_fixed():
    df = pd.DataFrame({"N": 4, "K": [10, 100, 100, 1000], "seed": [0, 0, 1, 0], "icl_acc": [0.5, 0.6, 0.9, 1.0]})
    th = kin.threshold_table(df, lo=0.5, n_boot=50).iloc[0]
    assert th["log10_kstar_lo"] < th["log10_kstar_hi"]  # the K = 100 seeds vary
    one_seed = df.drop(index=2)
    th = kin.threshold_table(one_seed, lo=0.5, n_boot=20).iloc[0]
    assert np.all(th["boot"] == th["log10_kstar"])  # nothing to resample


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
