"""The singh2023-competition reproduction: circuits and interventions during training on the transient runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from icl_circuits.intervention_config import parse_rows
from icl_circuits.papers.singh2023 import competition as comp
from icl_circuits.papers.singh2023 import competition_claims as cc
from icl_circuits.papers.singh2023 import competition_nguyen_reddy as nr
from icl_circuits.papers.singh2023.reproduce_competition import circuit_steps
from icl_circuits.reproduce import reproduce
from icl_circuits.reproduce.common import CLAIMS, SUMMARY
from tests.conftest import tiny_config


def test_heads_of_an_edge_list():
    assert comp.heads_of("embed->L0H1.k L0H1->L1H0.v L1H0->readout") == {"L0H1", "L1H0"}
    assert comp.heads_of("") == frozenset()


def test_shared_components_follow_the_heads_icl_loses():
    heads = pd.DataFrame(
        [
            {"step": 10, "role": "ICL", "present": True, "heads": "L0H0 L1H0"},
            {"step": 10, "role": "IWL", "present": True, "heads": "L1H1"},
            {"step": 20, "role": "ICL", "present": True, "heads": "L0H0"},
            {"step": 20, "role": "IWL", "present": True, "heads": "L1H0 L1H1"},
            {"step": 30, "role": "ICL", "present": False, "heads": "L0H0"},
            {"step": 30, "role": "IWL", "present": True, "heads": "L0H1"},
        ]
    )
    s = comp.shared_components(heads, peak=10).set_index("step")
    assert s.loc[10, "n_shared"] == 0 and s.loc[10, "icl_lost_since_peak"] == ""
    assert s.loc[20, "shared"] == "" and s.loc[20, "icl_lost_since_peak"] == "L1H0"
    assert s.loc[20, "lost_taken_by_iwl"] == 1
    assert s.loc[30, "icl_heads"] == "" and s.loc[30, "icl_lost_since_peak"] == "L0H0 L1H0"
    assert s.loc[30, "lost_taken_by_iwl"] == 0 and s.loc[30, "iwl_outside_peak_icl"] == 1


def test_causal_controls_are_of_equal_size_and_outside_the_icl_circuit():
    cfg = tiny_config().replace(seed=4)
    forks = comp.causal_configs(cfg, 100, {"L0H1", "L1H0"}, seed=4)
    assert sorted(forks) == ["block", "block-control", "freeze", "freeze-control"]
    (frz,) = forks["freeze"].train.interventions
    (ctl,) = forks["freeze-control"].train.interventions
    assert frz.targets == ("L0H1", "L1H0") and len(ctl.targets) == 2
    assert not set(ctl.targets) & set(frz.targets)
    (blk,) = forks["block-control"].train.interventions
    assert blk.kind == "path" and len(blk.targets) == 1 and blk.targets[0] in {"L0H0", "L1H1"}
    assert all(iv.start == 100 for f in forks.values() for iv in f.train.interventions)
    # Every head in the ICL circuit: nothing to draw a control from.
    every = {"L0H0", "L0H1", "L1H0", "L1H1"}
    assert sorted(comp.causal_configs(cfg, 100, every)) == ["block", "freeze"]


def test_verdict_is_the_difference_from_the_control():
    rows = [
        {"condition": "c", "seed": 0, "test": t, "ICL_end": v, "ICL_end_cut": 0.8}
        for t, v in [("plain", 0.3), ("block", 0.9), ("block-control", 0.35), ("freeze", 0.4), ("freeze-control", 0.32)]
    ]
    v = comp.verdict(pd.DataFrame(rows)).iloc[0]
    assert v["block_effect"] == pytest.approx(0.55) and v["freeze_effect"] == pytest.approx(0.08)
    assert v["cut_gain"] == pytest.approx(0.5) and v["freeze_cut"] == 0.8
    assert v["plain"] == 0.3 and v["verdict"] == comp.INDEPENDENT


@pytest.mark.parametrize(
    ("block", "freeze", "cut", "expected"),
    [
        (0.3, 0.05, 0.4, comp.INDEPENDENT),
        (0.3, -0.1, 0.4, comp.INDEPENDENT),
        (0.3, 0.05, 0.02, comp.READOUT),
        (0.3, 0.2, 0.4, comp.SHARED),
        (0.0, 0.2, 0.0, comp.SHARED),
        (0.05, 0.0, 0.4, comp.UNDECIDED),
        (0.3, -0.2, 0.4, comp.UNDECIDED),
        (0.3, float("nan"), 0.4, comp.UNDECIDED),
    ],
)
def test_the_verdict_follows_from_the_effects(block, freeze, cut, expected):
    assert comp.verdict_of(block, freeze, cut, effect=0.1) == expected


def test_the_claims_hold_only_where_every_seed_passes():
    def table(block_effects, freeze_effects):
        rows = []
        for seed, (b, f) in enumerate(zip(block_effects, freeze_effects, strict=True)):
            for test, v in [("plain", 0.3), ("block", 0.3 + b), ("block-control", 0.3), ("freeze", 0.3 + f)]:
                rows.append({"condition": "c", "seed": seed, "test": test, "ICL_end": v, "ICL_end_cut": 0.9})
            rows.append({"condition": "c", "seed": seed, "test": "freeze-control", "ICL_end": 0.3, "ICL_end_cut": 0.9})
        return comp.verdict(pd.DataFrame(rows))

    shared = pd.DataFrame(columns=["condition", "seed", "step"])
    ok = {c.claim.split(":")[1][:12]: c.holds for c in cc.claims(table([0.5, 0.4], [0.02, -0.05]), shared)}
    assert list(ok.values()) == [True, True, True]
    one_seed_fails = cc.claims(table([0.5, 0.05], [0.02, 0.15]), shared)
    assert [c.holds for c in one_seed_fails] == [False, False, False]
    assert "competition in the ICL circuit" in one_seed_fails[2].ours


def test_nguyen_reddy_control_freezes_as_many_readout_weights_as_the_head_has():
    base = nr.sweep_spec("cpu")
    from icl_circuits.sweeps import build_points

    cfg = build_points(base)[0].config
    forks = nr.fork_configs(cfg, 400, seed=1)
    assert sorted(forks) == ["block", "control", "freeze"]
    (ctl,) = forks["control"].train.interventions
    name, a, b = parse_rows(ctl.targets[0])
    assert name == nr.CONTROL_PARAM and (b - a) * cfg.model.d_model == nr.head_weights(cfg) == 3 * 65 * 65
    assert 0 <= a and b <= cfg.model.readout_hidden[0]
    assert forks["freeze"].train.interventions[0].targets == ("L0H0",)
    assert forks["block"].train.interventions[0].targets == ("embed",)
    assert all(f.train.interventions[0].start == 400 for f in forks.values())
    assert cfg.train.weight_decay == 3e-2 and cfg.data.n_classes == 1024 and cfg.train.steps == 6000


def test_nguyen_reddy_transience_is_a_peak_then_a_drop():
    curves = pd.DataFrame(
        {
            "seed": [0] * 4 + [1] * 4,
            "step": [0, 100, 200, 300] * 2,
            "ICL": [0.5, 0.95, 0.9, 0.6, 0.5, 0.95, 0.93, 0.9],
            "IWL": [0.5, 0.6, 0.8, 0.99, 0.5, 0.6, 0.7, 0.8],
        }
    )
    t = nr.transient(curves, level=0.9, drop=0.1).set_index("seed")
    assert t.loc[0, "transient"] and t.loc[0, "peak_step"] == 100 and t.loc[0, "ICL_end"] == 0.6
    assert not t.loc[1, "transient"]


def test_circuit_steps_spread_and_keep_peak_and_last():
    steps = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    got = circuit_steps(steps, peak=20, n=4)
    assert got[-1] == 1000 and 20 in got and 0 not in got and len(got) <= 5


def test_smoke_scale_writes_everything(tmp_path):
    out = tmp_path / "comp"
    rep = reproduce("singh2023-competition", out, scale="smoke", workers=1, progress=False)
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["name"] == "singh2023-competition" and len(summary["claims"]) == len(rep.claims) == 10
    causal = pd.read_csv(out / "causal.csv")
    assert {"plain", "block"} <= set(causal["test"])
    assert {"plain", "block", "freeze"} <= set(pd.read_csv(out / "nr_causal.csv")["test"])
    assert (out / CLAIMS).exists() and all(f.exists() for f in rep.figures)


def test_a_fork_trained_in_the_pool_resumes_and_is_not_trained_twice(tmp_path):
    from icl_circuits.papers.singh2023.forks import Fork, train_forks
    from icl_circuits.runs.store import list_checkpoints
    from icl_circuits.training import train

    cfg = tiny_config(steps=12, n_checkpoints=4)
    base = train(cfg, tmp_path / "base", progress=False)
    step = [s for s in list_checkpoints(base) if 0 < s < 12][0]
    forks = [
        Fork(name, base, step, f, tmp_path / name)
        for name, f in comp.causal_configs(cfg, step, {"L1H0"}).items()
        if name in ("block", "freeze")
    ]
    train_forks(forks, workers=2)
    assert all(f.done() and list_checkpoints(f.folder)[-1] == 12 for f in forks)
    stamp = {f.name: (f.folder / "metrics.jsonl").stat().st_mtime_ns for f in forks}
    train_forks(forks, workers=2)
    assert stamp == {f.name: (f.folder / "metrics.jsonl").stat().st_mtime_ns for f in forks}


def test_main_heads_carry_the_asked_share_of_the_edge_weight():
    edges = pd.DataFrame(
        {
            "step": 5,
            "split": "IC",
            "in_circuit": [True, True, True, True, False],
            "edge": ["emb.x->L0H0.q", "L0H0->L1H1.k", "L1H1->readout", "emb.x->readout", "L0H1->readout"],
            "score": [1.0, -2.0, 4.0, -3.0, 9.0],
        }
    )
    # weights: L0H0 3, L1H1 6 (L0H1's edge is outside the circuit)
    assert comp.main_heads(edges, "IC", share=0.5) == {"L1H1"}
    assert comp.main_heads(edges, "IC", share=0.9) == {"L1H1", "L0H0"}
    r = comp.readout_scores(edges).iloc[0]
    assert r["direct_path"] == -3.0 and r["heads_to_readout"] == 13.0


#: The claims that hold at cpu scale (docs/reproductions/singh2023_competition.md), by their start.
HOLDING = {
    "singh2023-competition": (
        "mixed-none: cutting the query's direct path into the readout from the ICL peak keeps more ICL",
        "mixed-none: freezing the ICL circuit's main heads at the ICL peak leaves ICL within 0.1",
        "mixed-none: the verdict in every seed is 'independent paths",
        "mixed-none: cutting the query's direct path at evaluation only brings ICL back",
        "Nguyen & Reddy's model (N 8, K 1,024, decay 0.03 on the attention): ICL peaks at >= 0.9",
        "Nguyen & Reddy's model (N 8, K 1,024, decay 0.03 on the attention): cutting the query's direct path into",
    ),
    "singh2023-competition-threshold": (
        "threshold: freezing the ICL circuit's main heads at the ICL peak leaves ICL within 0.1",
        "threshold: cutting the query's direct path at evaluation only brings ICL back",
    ),
}
#: Measured, and not holding: Nguyen & Reddy's model does not read its ICL head by the end (the
#: readout stops reading it, frozen or not), and freezing its head does not keep ICL.
MISSING = {
    "singh2023-competition": (
        "Nguyen & Reddy's model (N 8, K 1,024, decay 0.03 on the attention): freezing the attention head",
        "Nguyen & Reddy's model (N 8, K 1,024, decay 0.03 on the attention): the verdict in every seed",
        "Nguyen & Reddy's model (N 8, K 1,024, decay 0.03 on the attention): cutting the query's direct path at",
    ),
    "singh2023-competition-threshold": (),
}


def _claim(rep, start: str):
    (claim,) = [c for c in rep.claims if c.claim.startswith(start)]
    return claim


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HOLDING))
def test_cpu_scale_claims_that_hold(tmp_path, name):
    """Every claim docs/reproductions/singh2023_competition.md reports as holding holds; the
    ones it reports as not holding on Nguyen & Reddy's model do not. (threshold's block test
    sits at its margin, +0.10 / +0.09 against 0.1, so neither way is asserted.)"""
    rep = reproduce(name, tmp_path, scale="cpu", workers=2, progress=False)
    for start in HOLDING[name]:
        claim = _claim(rep, start)
        assert claim.holds, claim
    for start in MISSING[name]:
        claim = _claim(rep, start)
        assert claim.holds is False, claim
