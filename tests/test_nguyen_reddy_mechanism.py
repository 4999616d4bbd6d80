"""Nguyen & Reddy 2024's mechanism: path ablations, rates vs capacity, the statistics, the reference rows."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icl_circuits.config import apply_overrides
from icl_circuits.data import build_source
from icl_circuits.models.build import build_native, query_logits, to_bridge
from icl_circuits.papers.nguyen_reddy2024 import kinetics as kin
from icl_circuits.papers.nguyen_reddy2024 import rates
from icl_circuits.papers.nguyen_reddy2024 import reproduce as nr
from icl_circuits.papers.nguyen_reddy2024 import stats as st
from icl_circuits.papers.nguyen_reddy2024.claims_mechanism import independence_claims, rate_claims
from icl_circuits.papers.nguyen_reddy2024.mechanism import CONDITIONS, ablate_paths, margins, path_rows
from icl_circuits.papers.nguyen_reddy2024.reference import REFERENCE_CSV, reference_claims, reference_runs
from icl_circuits.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_and_batch():
    cfg = apply_overrides(
        get_preset("nguyen-reddy2024"),
        ["data.n_pairs=5", "data.n_classes=40", "data.d=15", "model.d_model=17", "model.readout_hidden=[16,16]"],
    )
    model = to_bridge(build_native(cfg.model, seed=1, **cfg.data.model_shape()))
    model.eval()
    batch = build_source(cfg.data, 0, "cpu").eval_batch("IC", 32)
    return model, batch


def _readout_input(model, tokens, condition):
    seen = {}

    def grab(x, hook):
        seen["x"] = x[:, -1].detach().clone()
        return x

    with ablate_paths(model, condition, tokens), model.hooks(fwd_hooks=[("unembed.hook_in", grab)]):
        query_logits(model, tokens)
    return seen["x"]


@torch.no_grad()
def test_each_ablation_replaces_exactly_its_own_path_at_the_query(model_and_batch):
    model, batch = model_and_batch
    tokens = batch.tokens()
    clean = query_logits(model, tokens)
    _, cache = model.run_with_cache(tokens)
    x_q, sa_q = cache["blocks.0.hook_resid_pre"][:, -1], cache["blocks.0.hook_attn_out"][:, -1]
    x_m, sa_m = x_q.mean(0).expand_as(x_q), sa_q.mean(0).expand_as(sa_q)
    v_q = cache["blocks.0.attn.hook_v"][:, -1, 0]
    a_qq = cache["blocks.0.attn.hook_pattern"][:, 0, -1, -1][:, None]
    sa_self = sa_q - a_qq * (v_q - v_q.mean(0))
    expect = {
        "clean": x_q + sa_q,
        "no_memory": x_m + sa_q,
        "no_attention": x_q + sa_m,
        "neither": x_m + sa_m,
        "no_memory_self": x_m + sa_self,
    }
    assert (x_q - x_m).abs().max() > 0.1 and (sa_q - sa_m).abs().max() > 1e-3  # the ablations change something
    for condition in CONDITIONS:
        torch.testing.assert_close(_readout_input(model, tokens, condition), expect[condition], atol=1e-5, rtol=0)
    # The hooks are gone afterwards.
    torch.testing.assert_close(query_logits(model, tokens), clean, atol=0, rtol=0)


@torch.no_grad()
def test_margins_and_interaction_add_up(model_and_batch):
    model, batch = model_and_batch
    m = margins(model, batch)
    logits = query_logits(model, batch.tokens())
    right = logits.gather(1, batch.target[:, None])[:, 0]
    np.testing.assert_allclose(m["clean"], (right - logits.sum(1) + right).numpy(), atol=1e-5)
    rows = {r["condition"]: r for r in path_rows(model, {"IC": batch})}
    inter = rows["interaction"]
    total = rows["clean"]["margin"] - rows["neither"]["margin"]
    assert inter["c_attn"] + inter["c_mem"] + inter["interaction"] == pytest.approx(total, abs=1e-5)
    assert rows["clean"]["acc"] == pytest.approx(float((m["clean"] > 0).mean()))
    with pytest.raises(ValueError, match="condition"):
        with ablate_paths(model, "both", batch.tokens()):
            pass


def _paths(ic: dict, iw: dict, inter=0.05) -> pd.DataFrame:
    rows = []
    for step in (0, 100):
        for cond in CONDITIONS:
            rows += [
                {
                    "regime": "near",
                    "K": 500,
                    "seed": 0,
                    "step": step,
                    "split": "IC",
                    "condition": cond,
                    "acc": ic[cond],
                },
                {
                    "regime": "near",
                    "K": 500,
                    "seed": 0,
                    "step": step,
                    "split": "IW",
                    "condition": cond,
                    "acc": iw[cond],
                },
            ]
        for split in ("IC", "IW"):
            rows.append(
                {"regime": "near", "K": 500, "seed": 0, "step": step, "split": split, "condition": "interaction",
                 "abs_interaction": inter, "abs_c_attn": 1.0, "abs_c_mem": 1.0}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_independence_claims_follow_the_accuracies():
    ic = {"clean": 0.95, "no_attention": 0.51, "no_memory": 0.93, "neither": 0.5, "no_memory_self": 0.94}
    iw = {"clean": 0.9, "no_attention": 0.88, "no_memory": 0.52, "neither": 0.5, "no_memory_self": 0.5}
    assert [c.holds for c in independence_claims(_paths(ic, iw), 0.5)] == [True] * 7
    # Attention ablation also destroys IWL: "leaves IWL" fails; a large interaction fails.
    bad = independence_claims(_paths(ic, iw | {"no_attention": 0.6, "no_memory": 0.9}, inter=0.5), 0.5)
    assert [c.holds for c in bad] == [True, False, False, True, True, True, False]
    # IWL not learned: its claims are not judged.
    none = independence_claims(_paths(ic, dict.fromkeys(CONDITIONS, 0.5)), 0.5)
    assert [c.holds for c in none] == [True, None, None, True, None, True, True]


def _sigmoid_runs(kstar: dict, by: str, spread=0.15) -> pd.DataFrame:
    ks = np.geomspace(16, 16384, 11)
    return pd.DataFrame(
        [
            {by: v, "K": k, "seed": 0, "icl_acc": 0.5 + 0.5 / (1 + np.exp(-(np.log10(k) - np.log10(ks_)) / spread))}
            for v, ks_ in kstar.items()
            for k in ks
        ]
    )


def test_rates_recover_kstar_and_judge_both_accounts():
    assert rates.lr_scale_override(4.0) == "train.lr_scale=[0.5,2,1.0,2]"
    assert rates.mlp_params(512) == 65 * 512 + 512 + 512 * 512 + 512 + 512 + 1
    widths = {w: 300.0 for w in (32, 64, 128, 256, 512)}
    kw = rates.kstar_table(_sigmoid_runs(widths, "mlp_width"), "mlp_width", 0.5, n_boot=50)
    kw = kw.assign(params=rates.mlp_params(kw["mlp_width"]))
    np.testing.assert_allclose(kw["kstar"], 300, rtol=0.02)
    ratios = {r: 300.0 * r**1.25 for r in (0.25, 0.5, 1.0, 2.0, 4.0)}
    kr = rates.kstar_table(_sigmoid_runs(ratios, "ratio"), "ratio", 0.5, n_boot=50)
    f = rates.fits(kw, kr)
    assert f["slope_ratio"] == pytest.approx(1.25, abs=0.03) and abs(f["slope_params"]) < 0.02
    assert [c.holds for c in rate_claims(kw, kr, f)] == [True, True]
    # Capacity-like data: K* proportional to the parameter count, flat in the ratio.
    cap = {w: 300.0 * rates.mlp_params(w) / rates.mlp_params(512) for w in widths}
    kw2 = rates.kstar_table(_sigmoid_runs(cap, "mlp_width"), "mlp_width", 0.5, n_boot=50)
    kw2 = kw2.assign(params=rates.mlp_params(kw2["mlp_width"]))
    kr2 = rates.kstar_table(_sigmoid_runs(dict.fromkeys(ratios, 300.0), "ratio"), "ratio", 0.5, n_boot=50)
    assert [c.holds for c in rate_claims(kw2, kr2, rates.fits(kw2, kr2))] == [False, False]


def test_the_minimal_model_predicts_kstar_as_the_rate_ratio_to_the_1_over_nu():
    """The kinetic prediction stated in rates.py: K* ~ (eta_mem / eta_icl)^(1/nu) in the minimal model."""
    ks = list(np.geomspace(2, 200_000, 41))
    ratios = (0.5, 1.0, 2.0)
    for nu in (1.0, 0.8):
        base = kin.KineticsConfig(eta_icl=0.02, nu=nu, mem_depth=3, beta_std=0.0, steps=3000)
        kstar = []
        for r in ratios:
            cfg = base.replace(eta_icl=base.eta_icl / math.sqrt(r), eta_mem=base.eta_mem * math.sqrt(r))
            kstar.append(float(kin.model_thresholds(cfg, [8], ks, n_seeds=1)["kstar"].iloc[0]))
        slope = np.polyfit(np.log10(ratios), np.log10(kstar), 1)[0]
        assert slope == pytest.approx(1 / nu, abs=0.15), (nu, kstar)


def test_statistics_on_known_samples():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0, 0.05, 8), rng.normal(1, 0.05, 8)])
    assert st.bimodality_coefficient(two) > st.BIMODAL_BC > st.bimodality_coefficient(rng.normal(0, 1, 400))
    assert st.tail_test(rng.lognormal(6, 0.8, 16))["p"] < 0.05
    assert st.tail_test(rng.normal(500, 10, 400))["p"] > 0.05
    assert math.isnan(st.tail_test([1.0, 2.0, 3.0])["p"])
    x = np.repeat([4, 8, 16, 32], 5)
    fit = st.loglog_slope(x, 30 * x**0.8 * rng.lognormal(0, 0.05, x.size))
    assert 0.7 < fit["lo"] < fit["slope"] < fit["hi"] < 0.9 and fit["n"] == 20
    q = st.sigmoid_quality(_sigmoid_runs({8: 500.0}, "N", spread=0.2), 0.5).iloc[0]
    assert q["r2"] > 0.999 and q["width"] == pytest.approx(0.2, rel=0.05)
    assert q["span_10_90"] == pytest.approx(2 * math.log(9) * q["width"])


def _thr(kstar: dict, n_boot=100) -> pd.DataFrame:
    runs = pd.concat([_sigmoid_runs({n: k}, "N").assign(seed=s) for n, k in kstar.items() for s in (0, 1)])
    return kin.threshold_table(runs, lo=0.5, n_boot=n_boot), runs


def test_reference_claims_compare_kstar_and_exponents():
    thr, runs = _thr({4: 250.0, 8: 520.0, 16: 1100.0})
    claims, table = reference_claims(thr, 0.5, runs)
    assert [c.holds for c in claims][:2] == [True, True] and set(table["source"]) == {"ours", "authors' code"}
    far, far_runs = _thr({4: 250.0, 8: 2000.0, 16: 12000.0})
    assert [c.holds for c in reference_claims(thr, 0.5, far_runs)[0]][:2] == [False, False]
    assert reference_claims(thr, 0.5, far_runs[far_runs["N"] == 4])[0] == []  # too few common N


def test_committed_reference_rows_are_our_cpu_grid():
    ref = reference_runs()
    assert REFERENCE_CSV.exists() and len(ref)
    assert list(ref.columns) == ["N", "K", "seed", "steps", "end_step", "stopped", "icl_acc", "iw_acc"]
    s = nr.settings("cpu")
    for N, part in ref.groupby("N"):
        assert set(part["K"]) <= set(nr.k_values(s, N, s["factors"])), N
        assert (part["steps"] == nr.steps_for(s, N)).all() and set(part["seed"]) <= set(s["seeds"])
        assert ((part["stopped"] == 1) == (part["icl_acc"] > 0.99)).all()


def test_reference_script_grid_is_ours():
    spec = importlib.util.spec_from_file_location("ref_nr", ROOT / "scripts" / "reference_nguyen_reddy2024.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    s = nr.settings("cpu")
    assert mod.grid(s["Ns"], s["k_center"], s["factors"]) == [
        (N, k) for N in s["Ns"] for k in nr.k_values(s, N, s["factors"])
    ]
