"""Nguyen & Reddy 2024 reproduction: smoke plumbing, the measurement helpers, the full-scale configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from icl_circuits.papers.nguyen_reddy2024 import reproduce as nr
from icl_circuits.reproduce import reproduce
from icl_circuits.runs.read import load_config
from icl_circuits.sweeps import SweepSpec, build_points


def test_smoke_writes_tables_figures_and_claims(tmp_path):
    rep = reproduce("nguyen-reddy2024", tmp_path, scale="smoke", workers=1, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["name"] == "nguyen-reddy2024" and summary["scale"] == "smoke"
    tables = ("runs", "kstar", "exponent", "t_icl", "t_icl_runs", "memorisation", "transience", "model_runs", "curves")
    for name in tables:
        assert (tmp_path / f"{name}.csv").exists()
        assert len(rep.tables[name]) > 0
    assert {f.name for f in rep.figures} == {
        "icl_vs_k.png",
        "kstar_vs_n.png",
        "t_icl.png",
        "bimodality.png",
        "memorisation.png",
    }
    assert all(f.exists() for f in rep.figures)
    assert len(rep.claims) == 13  # two transience conditions; linearity, one tail, one bimodality (N = 4)
    assert all(c.ours and isinstance(c.holds, bool | type(None)) for c in rep.claims)
    runs = rep.tables["runs"]
    assert set(runs["N"]) == {3, 4}
    assert set(runs.columns) >= {"N", "K", "seed", "icl_acc", "iw_acc", "t_icl"}
    assert (rep.tables["t_icl_runs"]["K"] == -1).all()
    assert "| claim | paper | ours | holds |" in (tmp_path / "claims.md").read_text()
    # The runs are the paper's one-layer model on packed tokens, with the early stop.
    cfg = load_config(next((tmp_path / "sweeps" / "N4-grid" / "runs").iterdir()))
    assert cfg.data.layout == "packed" and cfg.model.n_layers == 1 and cfg.model.binary_logit
    assert cfg.data.n_pairs == 3 and cfg.train.stop_above == 0.99
    trans = load_config(next((tmp_path / "sweeps" / "transience" / "runs").iterdir())).train
    assert trans.stop_above == 0 and trans.weight_decay == 3e-3 and trans.decay_on == "attention+embed"
    # A rerun resumes: nothing is trained again and the same claims come out.
    again = reproduce("nguyen-reddy2024", tmp_path, scale="smoke", workers=1, progress=False)
    assert [c.ours for c in again.claims] == [c.ours for c in rep.claims]


def _results(curve_ic, curve_iw, K=64, seed=0):
    rows = []
    for split, curve in (("IC", curve_ic), ("IW", curve_iw)):
        for step, v in curve:
            rows.append(
                {
                    "kind": "metrics",
                    "metric": "acc",
                    "split": split,
                    "step": step,
                    "value": v,
                    "data.n_classes": K,
                    "seed": seed,
                }
            )
    return pd.DataFrame(rows)


def test_per_run_finds_first_crossing_and_censors():
    res = pd.concat(
        [
            _results([(0, 0.03), (100, 0.5), (200, 0.96), (300, 0.99)], [(0, 0.03), (300, 0.05)], seed=0),
            _results([(0, 0.03), (100, 0.04), (300, 0.06)], [(0, 0.03), (100, 0.95), (300, 1.0)], seed=1),
        ]
    )
    runs = nr.per_run(res, N=4).set_index("seed")
    assert runs.loc[0, "t_icl"] == 200 and math.isnan(runs.loc[1, "t_icl"])
    assert runs.loc[1, "t_mem"] == 100 and math.isnan(runs.loc[0, "t_mem"])
    assert runs.loc[0, "icl_acc"] == 0.99 and runs.loc[1, "iw_acc"] == 1.0
    # A never-reached run counts as later than every other one.
    assert nr.censored_median(pd.Series([100.0, np.nan, np.nan])) == math.inf
    assert nr.censored_median(pd.Series([100.0, 300.0, np.nan])) == 300.0


def test_memorisation_exponent_and_log_spread():
    mem = pd.DataFrame({"K": [32, 64, 128, 256], "t_mem": [10 * k**0.7 for k in (32, 64, 128, 256)]})
    assert nr.memorisation_exponent(mem)["nu"] == pytest.approx(0.7)
    assert math.isnan(nr.memorisation_exponent(mem.iloc[:1])["nu"])
    runs = pd.DataFrame({"N": [2, 2, 4, 4], "K": [8, 8, 16, 16], "t_icl": [100, 100 * math.e, 300, 300 * math.e]})
    # Deviations +-0.5 about each N's mean log t: pooled sample std = sqrt(4 * 0.25 / 3).
    assert nr.log_t_spread(runs, {2: [8], 4: [16]}) == pytest.approx(math.sqrt(1 / 3))


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_every_config_of_the_larger_scales_builds(scale):
    s = nr.settings(scale)
    for N in s["Ns"]:
        grid = {"data.n_classes": [*nr.k_values(s, N, s["factors"]), -1], "seed": s["seeds"]}
        overrides = (*s["common"], f"train.steps={nr.steps_for(s, N)}", f"data.n_pairs={N - 1}", s["stop"])
        for point in build_points(SweepSpec(base=s["preset"], overrides=overrides, grid=grid)):
            cfg = point.config
            assert cfg.data.n_pairs == N - 1 and cfg.data.layout == "packed" and cfg.train.stop_above == 0.99
            assert cfg.model.n_layers == 1 and cfg.model.readout_hidden == (512, 512)
    assert len(s["Ns"]) >= 5 and max(s["Ns"]) >= 32
    assert len(s["bimodal_seeds"]) + len(s["seeds"]) >= 5 and len(s["inf_seeds"]) >= 3


def test_refinement_lands_inside_the_bracket():
    coarse = pd.DataFrame({"K": [32, 64, 128, 256, 512], "icl_acc": [0.03, 0.05, 0.3, 0.97, 0.99]})
    assert nr.refine_ks(coarse, 0.5, 2) == [161, 203]  # 128 * 2^(1/3), 128 * 2^(2/3)
    never = coarse.assign(icl_acc=0.04)
    assert nr.refine_ks(never, 0.5, 1) == [724]  # beyond the grid: between 512 and 1024


def test_transience_summary_finds_the_peak_and_the_fade():
    rows = []
    for step, ic, iw in [(0, 0.5, 0.5), (100, 0.97, 0.55), (200, 0.99, 0.7), (300, 0.6, 0.98)]:
        rows += [
            {"N": 8, "K": 64, "seed": 0, "step": step, "split": "IC", "acc": ic},
            {"N": 8, "K": 64, "seed": 0, "step": step, "split": "IW", "acc": iw},
        ]
    t = nr.transience(pd.DataFrame(rows)).iloc[0]
    assert (t["t_icl"], t["peak_icl"], t["peak_step"]) == (100, 0.99, 200)
    assert (t["final_icl"], t["final_iwl"], t["final_step"]) == (0.6, 0.98, 300)


#: The claims docs/reproductions/nguyen_reddy2024.md reports as holding at the cpu scale (the start of
#: the claim's text). Not reproduced there: the sigmoid fit's R^2 >= 0.9 at every N (0.90 at N = 16,
#: just under), b = 1.43 (ours 1.17 [0.94, 1.36]), nu = 0.7 (ours 0.88), t_ICL linear in N (slope
#: 0.84 [0.72, 0.96]), its long tail, bimodality near K*, the K* exponents inside each other's
#: intervals against the authors' code, and transience within 6,000 steps.
HOLD_AT_CPU = (
    "the threshold K*",
    "the K* exponent equals 1/nu of the memorisation law",
    "median t_ICL",
    "the minimal model's K* matches the measured one within x1.5 at the N it was not calibrated on",
    "Transformer vs the authors' code (anhhuyalex/icl-kinetics run at our grid: N = 4, 8, 16): K* within x1.5",
)


@pytest.mark.slow
def test_cpu_scale_reproduces_the_claims_that_hold(tmp_path):
    rep = reproduce("nguyen-reddy2024", tmp_path, scale="cpu", workers=2, progress=False)
    for start in HOLD_AT_CPU:
        (claim,) = [c for c in rep.claims if c.claim.startswith(start)]
        assert claim.holds, claim.claim
    thr = rep.tables["kstar"]
    thr = thr[thr["source"] == "transformer"]
    assert len(thr) >= 5 and thr["N"].max() >= 32
    exponent = rep.tables["exponent"].iloc[0]
    assert math.isfinite(exponent["exponent_lo"]) and math.isfinite(exponent["exponent_hi"])
