"""Nguyen & Reddy 2024: memorising and generalising subcircuits learning at different rates.

The minimal model (our reconstruction from the paper's description and its published
scaling results; the reference code measures the memorising MLP's mean error
``<sigma(-phi)>`` over training but simulates no theory) has binary labels ``y = ±1`` and
a logit ``z = phi + w * a(beta)`` on a training sequence whose query is item ``k``:

* the **generalising (ICL) subcircuit** attends from the query to its one matching context
  item with weight ``a(beta) = e^beta / (e^beta + N - 1)`` (the query overlaps its match by 1
  and the other ``N - 1`` items by 0) and reads out that item's label with gain ``w``;
* the **memorising (IWL) subcircuit** is a lookup table: one logit ``phi_k = theta_k^p`` per
  item (``p = mem_depth``; ``p = 3`` mimics a ReLU MLP with two hidden layers, homogeneous of
  degree 3). An item is the query of a ``1/K`` share of the sequences, so gradient descent on
  the mean loss moves ``theta_k`` at rate ``eta_mem / K``; by symmetry every ``phi_k`` is the
  same ``phi``. ``nu != 1`` replaces ``1/K`` by ``1/K**nu`` (a memoriser sharing features
  across items: the paper measures ``nu ~ 0.7``); this is phenomenological, ``nu = 1`` is GD.

Both descend the shared loss ``softplus(-z)``, i.e. with the shared error ``e = sigma(-z)``::

    d beta / dt  = eta_icl * e * w * a (1 - a)      d w / dt = eta_icl * e * a
    d theta / dt = eta_mem * e * p theta^(p-1) / K**nu

Starting at ``w = 0``, ``a ~ e^beta / N`` makes the ICL subcircuit sit on a plateau that it
leaves after an integrated error ``int e dt = sqrt(pi/2) N e^(-beta_0) / eta_icl``: the
time to ICL grows linearly with ``N`` and exponentially with the initial attention logit
``beta_0`` (random per seed, hence long-tailed). Meanwhile memorisation drives ``e`` down,
and the memoriser alone is a function of ``t / K**nu``. With ``p = 1`` its error decays as
``K / t`` (``phi + e^phi = 1 + eta_mem t / K``), so the integrated error by step ``T`` is
``(K / eta_mem) phi(T)``, growing like ``log T``; with ``p >= 3`` it decays faster than
``1/t`` and the integral converges to ``I_K(inf) ~ K^nu``, the paper's memorisation scaling
law. ICL is acquired when the integrated error covers the plateau: ``K* ~ N^(1/nu)
e^(-beta_0/nu)`` for ``p >= 3`` (for ``p = 1``, ``K* ~ N / log(eta_mem T / K*)``, an effective
exponent above 1 at finite ``T``), and near ``K*`` the seeds with the larger ``beta_0`` win.

Evaluation (novel items for ICL, so ``phi = 0`` there; trained items without their match
in the context for IWL, so the ICL readout averages random labels to 0): the ICL score is
``sigma(w a)`` and the IWL score ``sigma(phi)``, the probability of the right label
(chance 0.5). ``t_ICL`` is the first step at which the ICL score exceeds 0.95.

The module also holds the threshold fit used on both the model and the transformers: a
sigmoid of accuracy against ``log10 K`` whose midpoint is ``K*``, and the power-law fit of
``K*`` against ``N``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pandas as pd
import torch
from scipy.optimize import curve_fit
from scipy.stats import bootstrap

from icl_circuits.configbase import FrozenConfig, require

#: Nguyen & Reddy's theory: K* ~ N^(1/nu) with nu ~ 0.7.
PAPER_EXPONENT = 1 / 0.7


@dataclasses.dataclass(frozen=True)
class KineticsConfig(FrozenConfig):
    """Rates and initial conditions of the minimal model (time is in training steps).

    Attributes:
        eta_icl: learning rate of the ICL subcircuit's ``beta`` and ``w``.
        eta_mem: learning rate of the memoriser, before the ``1 / K**nu`` share of each item.
        nu: memorisation exponent (1: a lookup table trained by gradient descent).
        beta_mean: mean initial attention logit on the matching item.
        beta_std: seed-to-seed spread of the initial attention logit.
        w0: initial ICL readout gain.
        steps: training steps (Euler steps of size 1).
        threshold: ICL score that counts as acquired (``t_ICL``).
    """

    eta_icl: float = 0.005
    eta_mem: float = 5.0
    nu: float = 1.0
    mem_depth: int = 1
    mem_init: float = 0.3
    beta_mean: float = 0.0
    beta_std: float = 0.5
    w0: float = 0.0
    steps: int = 2500
    threshold: float = 0.95

    def validate(self) -> None:
        require(self.eta_icl >= 0, "eta_icl", "a non-negative rate", self.eta_icl)
        require(self.eta_mem >= 0, "eta_mem", "a non-negative rate", self.eta_mem)
        require(self.nu > 0, "nu", "a positive exponent", self.nu)
        require(self.mem_depth >= 1, "mem_depth", "at least 1", self.mem_depth)
        require(self.mem_init >= 0, "mem_init", "a non-negative weight", self.mem_init)
        require(self.beta_std >= 0, "beta_std", "a non-negative spread", self.beta_std)
        require(self.steps >= 1, "steps", "at least 1", self.steps)
        require(0.5 < self.threshold < 1, "threshold", "a score in (0.5, 1)", self.threshold)


def seed_betas(cfg: KineticsConfig, n_seeds: int) -> np.ndarray:
    """``[n_seeds]`` initial attention logits: stratified normal quantiles, so no RNG is needed."""
    q = (torch.arange(n_seeds, dtype=torch.float64) + 0.5) / n_seeds
    return cfg.beta_mean + cfg.beta_std * torch.special.ndtri(q).numpy()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def simulate(cfg: KineticsConfig, Ns, Ks, n_seeds: int = 32) -> pd.DataFrame:
    """Train the minimal model for every ``(N, K, seed)`` at once (Euler, vectorised).

    Args:
        cfg: rates and initial conditions.
        Ns: context lengths (at least 2).
        Ks: task diversities; ``math.inf`` (or -1) for fresh items (nothing to memorise).
        n_seeds: seeds, i.e. initial attention logits from :func:`seed_betas`.

    Returns:
        One row per ``N, K, seed``: ``beta0``, final ``icl_acc`` and ``iw_acc`` (scores, chance
        0.5), ``t_icl`` and ``t_mem`` (first step with the ICL / IWL score above
        ``cfg.threshold``; NaN if never).
    """
    N = np.asarray(Ns, dtype=float)[:, None, None]
    K = np.asarray([math.inf if k == -1 else k for k in Ks], dtype=float)[None, :, None]
    if (N < 2).any() or (K <= 0).any():
        raise ValueError("simulate: every N must be >= 2 and every K positive (or inf / -1)")
    shape = (N.shape[0], K.shape[1], n_seeds)
    beta = np.broadcast_to(seed_betas(cfg, n_seeds)[None, None, :], shape).copy()
    w = np.full(shape, cfg.w0)
    p = cfg.mem_depth
    theta = np.full(shape, cfg.mem_init if p > 1 else 0.0)
    phi = theta**p
    mem_rate = np.broadcast_to(cfg.eta_mem / K**cfg.nu, shape)  # 1 / inf = 0: no memorising
    t_icl = np.full(shape, np.nan)
    t_mem = np.full(shape, np.nan)
    for step in range(1, cfg.steps + 1):
        # The match's attention weight among N - 1 orthogonal distractors.
        a = 1.0 / (1.0 + (N - 1.0) * np.exp(-beta))
        err = _sigmoid(-(phi + w * a))
        d_beta = cfg.eta_icl * err * w * a * (1.0 - a)
        d_w = cfg.eta_icl * err * a
        theta = theta + mem_rate * err * p * theta ** (p - 1)
        phi = theta**p
        beta = beta + d_beta
        w = w + d_w
        a = 1.0 / (1.0 + (N - 1.0) * np.exp(-beta))
        t_icl[np.isnan(t_icl) & (_sigmoid(w * a) > cfg.threshold)] = step
        t_mem[np.isnan(t_mem) & (_sigmoid(phi) > cfg.threshold)] = step
    a = 1.0 / (1.0 + (N - 1.0) * np.exp(-beta))
    grid = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    n_idx, k_idx, s_idx = (g.ravel() for g in grid)
    return pd.DataFrame(
        {
            "N": N[n_idx, 0, 0].astype(int),
            "K": K[0, k_idx, 0],
            "seed": s_idx,
            "beta0": seed_betas(cfg, n_seeds)[s_idx],
            "icl_acc": _sigmoid(w * a).ravel(),
            "iw_acc": _sigmoid(phi).ravel(),
            "t_icl": t_icl.ravel(),
            "t_mem": t_mem.ravel(),
        }
    )


def escape_time(cfg: KineticsConfig, N: float, beta0: float) -> float:
    """Plateau length without memorisation, ``sqrt(pi/2) N e^(-beta0) / eta_icl`` (large ``N``).

    The step at which ``w a`` blows up when ``a = e^beta / N`` and the error stays at 1/2
    (so the integrated error is half the elapsed time).
    """
    return 2.0 * math.sqrt(math.pi / 2.0) * N * math.exp(-beta0) / cfg.eta_icl


# --------------------------------------------------------------------------- fits
#: Evaluations :func:`fit_sigmoid` allows ``curve_fit``.
MAX_NFEV = 2000


def fit_sigmoid(log_k, acc, lo: float, hi: float) -> tuple[float, float]:
    """Least-squares ``acc = lo + (hi - lo) sigma((log_k - x0) / width)``; returns ``(x0, width)``.

    The asymptotes are fixed (chance and perfect accuracy) so that a few K values suffice;
    the midpoint ``x0`` is ``log10 K*`` when ``log_k`` is ``log10 K``. ``x0`` is confined to
    ``[min - 1, max + 1]`` of ``log_k`` (a transition outside the measured range shows up as a
    fit at the edge), the width to ``[span / 200, 2 span]``. The squared error has several
    local minima where the data barely rise, so the best point of a coarse grid over these
    bounds (61 x 31 in ``x0`` and ``log width``) is the start that ``scipy.optimize.curve_fit``
    (trust region reflective, bounded) refines, with up to :data:`MAX_NFEV` evaluations (its
    default, 200, is too few where a width near its lower bound makes the fit a step: a
    bootstrap resample of points at two K only).
    """
    x = np.asarray(log_k, dtype=float)
    y = np.asarray(acc, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fit_sigmoid: needs at least two distinct K values")
    span = float(np.ptp(x))
    lower = (float(x.min()) - 1.0, math.log(span / 200))
    upper = (float(x.max()) + 1.0, math.log(span * 2))

    def curve(x, x0, log_width):
        return lo + (hi - lo) * _sigmoid((x - x0) / np.exp(log_width))

    x0s = np.linspace(lower[0], upper[0], 61)[:, None, None]
    lws = np.linspace(lower[1], upper[1], 31)[None, :, None]
    sse = ((curve(x[None, None, :], x0s, lws) - y) ** 2).sum(-1)  # [x0, log width]
    i, j = np.unravel_index(int(np.argmin(sse)), sse.shape)
    start = (float(x0s[i, 0, 0]), float(lws[0, j, 0]))
    try:
        params, _ = curve_fit(curve, x, y, p0=start, bounds=(lower, upper), method="trf", max_nfev=MAX_NFEV)
    except RuntimeError as err:  # no convergence within curve_fit's evaluation budget
        raise ValueError(f"fit_sigmoid: the least-squares fit did not converge ({err})") from err
    return float(params[0]), math.exp(float(params[1]))


def crossing_bracket(means: pd.Series, level: float) -> tuple[float, float]:
    """``(K_lo, K_hi)``: neighbouring K values (the index of ``means``) between which the mean
    accuracy first rises through ``level``; half-open beyond the grid (``K_max, 2 K_max`` when
    it never does, ``K_min / 2, K_min`` when it always does).

    The sigmoid midpoint is only resolved to within this bracket, however tight the bootstrap.
    """
    means = means.sort_index()
    ks = means.index.to_numpy(float)
    above = means.to_numpy() >= level
    if not above.any():
        return float(ks[-1]), float(2 * ks[-1])
    first = int(np.argmax(above))
    if first == 0:
        return float(ks[0] / 2), float(ks[0])
    return float(ks[first - 1]), float(ks[first])


def threshold_table(
    df: pd.DataFrame, lo: float, hi: float = 1.0, n_boot: int = 0, seed: int = 0, acc: str = "icl_acc"
) -> pd.DataFrame:
    """``K*`` per ``N`` from per-seed accuracies (columns ``N, K, acc``), with a bootstrap.

    The bootstrap (``scipy.stats.bootstrap``, percentile method) resamples seeds within each
    ``(N, K)`` and refits (a K with one seed stays as it is); ``lo`` is the chance accuracy.
    Returns ``N, kstar, log10_kstar, width``, the grid bracket of the midpoint
    (:func:`crossing_bracket`: ``bracket_lo``, ``bracket_hi``) and, with ``n_boot``, the bootstrap
    95% interval ``log10_kstar_lo`` / ``_hi`` and the replicates in ``boot``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n, part in df[np.isfinite(df["K"])].groupby("N"):
        x0, width = fit_sigmoid(np.log10(part["K"]), part[acc], lo, hi)
        k_lo, k_hi = crossing_bracket(part.groupby("K")[acc].mean(), 0.5 * (lo + hi))
        row = {"N": int(n), "kstar": 10**x0, "log10_kstar": x0, "width": width, "bracket_lo": k_lo, "bracket_hi": k_hi}
        if n_boot:
            boot = _bootstrap_midpoint(part, acc, lo, hi, n_boot, rng, x0)
            row |= {
                "log10_kstar_lo": float(np.percentile(boot, 2.5)),
                "log10_kstar_hi": float(np.percentile(boot, 97.5)),
                "boot": boot,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def _bootstrap_midpoint(part: pd.DataFrame, acc: str, lo: float, hi: float, n_boot: int, rng, x0: float) -> np.ndarray:
    """``[n_boot]`` refitted midpoints, the seeds of each K resampled (``scipy.stats.bootstrap``)."""
    groups = {math.log10(k): g[acc].to_numpy(float) for k, g in part.groupby("K")}
    # A K with one seed resamples to itself; scipy resamples the others, each on its own.
    varied = {k: y for k, y in groups.items() if len(y) > 1}
    fixed = {k: y for k, y in groups.items() if len(y) == 1}
    if not varied:
        return np.full(n_boot, x0)
    fixed_x = np.concatenate([np.full(1, k) for k in fixed]) if fixed else np.empty(0)
    fixed_y = np.concatenate(list(fixed.values())) if fixed else np.empty(0)
    varied_x = np.concatenate([np.full(len(y), k) for k, y in varied.items()])

    def midpoint(*ys):
        return fit_sigmoid(np.concatenate([varied_x, fixed_x]), np.concatenate([*ys, fixed_y]), lo, hi)[0]

    res = bootstrap(
        tuple(varied.values()), midpoint, n_resamples=n_boot, vectorized=False, method="percentile", rng=rng
    )
    return np.asarray(res.bootstrap_distribution, dtype=float)


def fit_power_law(N, kstar) -> tuple[float, float]:
    """Least squares ``log10 K* = intercept + slope log10 N``; returns ``(slope, intercept)``."""
    slope, intercept = np.polyfit(np.log10(np.asarray(N, float)), np.log10(np.asarray(kstar, float)), 1)
    return float(slope), float(intercept)


def exponent_with_ci(thresholds: pd.DataFrame) -> dict:
    """The power-law exponent of ``K*(N)``, its bootstrap 95% interval (needs ``boot``) and
    its grid range: the extreme slopes with every ``K*`` anywhere in its bracket."""
    slope, intercept = fit_power_law(thresholds["N"], thresholds["kstar"])
    out = {"exponent": slope, "intercept": intercept, "exponent_lo": math.nan, "exponent_hi": math.nan}
    if {"bracket_lo", "bracket_hi"} <= set(thresholds) and 2 <= len(thresholds) <= 12:
        # The least-squares slope is linear in the log K*, so its extremes are at the corners.
        corners = itertools.product(*zip(thresholds["bracket_lo"], thresholds["bracket_hi"], strict=True))
        slopes = [fit_power_law(thresholds["N"], c)[0] for c in corners]
        out |= {"exponent_grid_lo": float(min(slopes)), "exponent_grid_hi": float(max(slopes))}
    if "boot" in thresholds and len(thresholds) >= 2:
        reps = np.stack(thresholds["boot"].to_list())  # [N, boot]
        logn = np.log10(thresholds["N"].to_numpy(float))
        slopes = [np.polyfit(logn, reps[:, b], 1)[0] for b in range(reps.shape[1])]
        out |= {"exponent_lo": float(np.percentile(slopes, 2.5)), "exponent_hi": float(np.percentile(slopes, 97.5))}
    return out


# --------------------------------------------------------------------------- predictions
def model_thresholds(cfg: KineticsConfig, Ns, Ks, n_seeds: int = 32) -> pd.DataFrame:
    """The model's ``K*`` per ``N``: the same sigmoid fit on its final ICL scores (chance 0.5)."""
    sim = simulate(cfg, Ns, Ks, n_seeds)
    # The model is deterministic per seed: fitting the seed-mean is the same fit, and faster.
    mean = sim.groupby(["N", "K"], as_index=False)["icl_acc"].mean()
    return threshold_table(mean, lo=0.5)


def calibrate(
    base: KineticsConfig,
    n_ref: int,
    kstar_ref: float,
    t_icl_ref: float,
    k_time: float,
    Ks,
    n_seeds: int = 32,
    n_outer: int = 12,
    n_inner: int = 14,
) -> KineticsConfig:
    """Fit the two rates to one measured point: ``K*`` and the median ``t_ICL`` at ``N = n_ref``.

    For a given ``eta_icl``, ``eta_mem`` is found by bisection in ``log eta_mem`` so that the
    model's ``K*`` is ``kstar_ref`` (``K*`` rises monotonically with ``eta_mem``); then
    ``eta_icl`` by bisection so that the median ``t_ICL`` at task diversity ``k_time`` (above
    ``K*``) is ``t_icl_ref`` (faster ICL circuit, earlier ``t_ICL``, even with the stronger
    memoriser that keeps ``K*`` in place). Alternating the two fits instead can oscillate:
    a slower ICL circuit with the old memoriser may never acquire ICL at all.
    """

    def fit_mem(cfg: KineticsConfig) -> KineticsConfig:
        lo, hi = math.log(1e-4), math.log(1e5)
        for _ in range(n_inner):
            mid = 0.5 * (lo + hi)
            ks = model_thresholds(cfg.replace(eta_mem=math.exp(mid)), [n_ref], Ks, n_seeds)["kstar"].iloc[0]
            lo, hi = (mid, hi) if ks < kstar_ref else (lo, mid)
        return cfg.replace(eta_mem=math.exp(0.5 * (lo + hi)))

    # The plateau formula gives the scale of eta_icl; bisect within a factor 30 of it.
    guess = escape_time(base.replace(eta_icl=1.0), n_ref, base.beta_mean) / t_icl_ref
    lo, hi = math.log(guess / 30), math.log(guess * 30)
    for _ in range(n_outer):
        mid = 0.5 * (lo + hi)
        cfg = fit_mem(base.replace(eta_icl=math.exp(mid)))
        t_model = float(np.median(simulate(cfg, [n_ref], [k_time], n_seeds)["t_icl"].fillna(np.inf)))
        lo, hi = (mid, hi) if t_model > t_icl_ref else (lo, mid)
    return fit_mem(base.replace(eta_icl=math.exp(0.5 * (lo + hi))))
