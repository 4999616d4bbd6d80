"""Nguyen & Reddy 2024 reproduction: smoke plumbing, the measurement helpers, the full-scale configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from icl_circuits.papers.nguyen_reddy2024 import reproduce as nr
from icl_circuits.reproduce import reproduce
from icl_circuits.sweeps import SweepSpec, build_points


def test_smoke_writes_tables_figures_and_claims(tmp_path):
    rep = reproduce("nguyen-reddy2024", tmp_path, scale="smoke", workers=1, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["name"] == "nguyen-reddy2024" and summary["scale"] == "smoke"
    for name in ("runs", "kstar", "exponent", "t_icl", "memorisation", "model_runs", "curves"):
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
    assert len(rep.claims) == 8
    assert all(c.ours and isinstance(c.holds, bool | type(None)) for c in rep.claims)
    runs = rep.tables["runs"]
    assert set(runs["N"]) == {2, 4}
    assert set(runs.columns) >= {"N", "K", "seed", "icl_acc", "iw_acc", "t_icl"}
    assert "| claim | paper | ours | holds |" in (tmp_path / "claims.md").read_text()


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
        grid = {"data.n_classes": nr.k_values(s, N, s["coarse"]), "seed": s["refine_seeds"]}
        overrides = (*s["common"], f"train.steps={s['steps']}", f"data.n_pairs={N}")
        cfg = build_points(SweepSpec(base=s["preset"], overrides=overrides, grid=grid))[0].config
        assert cfg.data.n_pairs == N and cfg.data.burst == 1 and cfg.train.steps == s["steps"]
        assert cfg.model.n_layers == 2 and cfg.model.n_heads == 2
    assert len(s["refine_seeds"]) >= 5 and len(s["coarse_seeds"]) + len(s["top_seeds"]) >= 5
    if scale == "full":
        assert len(s["refine_seeds"]) >= 10 and max(s["Ns"]) >= 32


def test_refinement_lands_inside_the_bracket():
    coarse = pd.DataFrame({"K": [32, 64, 128, 256, 512], "icl_acc": [0.03, 0.05, 0.3, 0.97, 0.99]})
    assert nr.refine_ks(coarse, 0.5, 2) == [161, 203]  # 128 * 2^(1/3), 128 * 2^(2/3)
    never = coarse.assign(icl_acc=0.04)
    assert nr.refine_ks(never, 0.5, 1) == [724]  # beyond the grid: between 512 and 1024


@pytest.mark.slow
def test_cpu_scale_reproduces_the_claims_that_hold(tmp_path):
    rep = reproduce("nguyen-reddy2024", tmp_path, scale="cpu", workers=2, progress=False)
    holds = [c.holds for c in rep.claims]
    # As reported in docs/reproductions.md: the sigmoid at every N, K* growing with N, the
    # K* exponent matching 1/nu of the measured memorisation law, t_ICL growing with N and
    # the minimal model's K* within x1.5. Not reproduced at this scale: b = 1.43, nu = 0.7,
    # clean bimodality (near K* at N = 2, 4 runs settle at partial ICL accuracy).
    assert holds[0] and holds[1] and holds[4] and holds[5] and holds[7]
    runs = rep.tables["runs"]
    assert runs.groupby("N")["K"].nunique().min() >= 7  # coarse grid + refined points
