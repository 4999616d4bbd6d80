"""Chan et al. 2024 reproduction: smoke plumbing, claim logic on known curves, full-scale configs, cpu claims."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from icl_circuits.data.stylized import StylizedSource
from icl_circuits.reproduce import chan2024, reproduce
from icl_circuits.sweeps.spec import SweepSpec, build_points

torch.set_num_threads(1)


def test_smoke_writes_everything(tmp_path):
    rep = reproduce("chan2024", tmp_path, scale="smoke", workers=1, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["name"] == "chan2024" and summary["scale"] == "smoke"
    assert (tmp_path / "claims.md").read_text().startswith("| claim |")
    for name in ("transformer", "transformer_curves", "gating", "gating_curves"):
        table = pd.read_csv(tmp_path / f"{name}.csv")
        assert len(table) > 0
        assert {"N", "p_relevant", "seed", "split", "metric", "value"} <= set(table.columns)
    for fig in ("transformer_accuracy.png", "gating_accuracy.png", "side_by_side.png"):
        assert (tmp_path / fig).stat().st_size > 0
    assert len(rep.claims) >= 5
    assert all(c.holds in (True, False) for c in rep.claims)
    gating = rep.tables["gating"]
    assert set(gating["metric"]) == {"acc_f", "acc_g", "acc_h", "alpha"}
    assert set(gating["split"]) == set(StylizedSource.splits)
    assert set(rep.tables["transformer"]["split"]) == set(StylizedSource.splits) | {"train"}


def _table(curves: dict[tuple[str, str, float], list[float]], ns: list[int]) -> pd.DataFrame:
    rows = []
    for (split, metric, p), values in curves.items():
        rows += [
            {"N": n, "p_relevant": p, "seed": 0, "split": split, "metric": metric, "value": v}
            for n, v in zip(ns, values, strict=True)
        ]
    return pd.DataFrame(rows)


def test_claims_on_known_curves():
    ns = [2**6, 2**8, 2**10, 2**12]
    t = _table(
        {
            ("OOBD-low", "acc", 0.9): [0.9, 0.8, 0.3, 0.05],
            ("IBD", "acc", 0.9): [0.96, 0.97, 0.99, 0.99],
            ("IBD-irr-low", "acc", 0.9): [0.1, 0.3, 0.8, 0.9],
            ("OOBD-high", "acc", 0.9): [0.0, 0.0, 0.01, 0.0],
            ("OOBD-rel-low", "acc", 0.0): [0.0, 0.0, 0.0, 0.0],
            ("OOBD-low", "acc", 1.0): [0.2, 0.9, 1.0, 1.0],
        },
        ns,
    )
    claims = chan2024.transformer_claims(t)
    assert [c.holds for c in claims] == [True] * 7
    t.loc[(t["split"] == "IBD") & (t["N"] == 2**8), "value"] = 0.9  # one N below 0.95
    assert [c.holds for c in chan2024.transformer_claims(t)][2] is False

    g = _table(
        {
            ("IBD-low", "alpha", 0.9): [0.4, 0.2, 0.5, 0.99],
            ("IBD-high", "alpha", 0.9): [0.38, 0.6, 0.9, 1.0],
            ("OOBD-low", "acc_f", 0.9): [0.9, 0.9, 0.5, 0.0],
            ("IBD", "alpha", 0.0): [0.7, 0.9, 1.0, 1.0],
        },
        ns,
    )
    assert [c.holds for c in chan2024.gating_claims(g)] == [True] * 4
    g.loc[(g["split"] == "IBD-high") & (g["N"] == 2**6), "value"] = 0.2  # high below low by 0.2
    assert [c.holds for c in chan2024.gating_claims(g)][1] is False


def test_spearman():
    assert chan2024.spearman(pd.Series([3.0, 2.0, 1.0], index=[1, 2, 4])) == pytest.approx(-1.0)
    assert chan2024.spearman(pd.Series([1.0, 1.0], index=[1, 2])) == 0.0


def test_full_scale_configs():
    s = chan2024.settings("full")
    points = build_points(SweepSpec(base=chan2024.PRESET, overrides=tuple(s["overrides"]), grid=chan2024.grid(s)))
    assert len(points) == 15 * 3 * 5
    assert max(p.config.data.n_train for p in points) == 2**20
    assert {p.config.train.steps for p in points} == {50_000}
    assert {p.config.train.lr for p in points} == {3e-4}
    cfg = chan2024.GatingConfig.from_dict(s["gating"])
    assert cfg.batch_size == 32 and s["gating_passes"] == 1


#: Claims (by their opening words) that hold at the cpu scale, as reported in docs/reproductions.md.
CPU_HOLDING = (
    "Transformer, p_rel 0.9: in-weight accuracy on low-frequency classes",
    "Transformer, p_rel 0.9: high-frequency classes are learned in weight",
    "Transformer, p_rel 0 (context never relevant)",
    "Transformer, p_rel 1 (context always relevant)",
    "Gating model, p_rel 0.9: the gate's IWL share",
    "Gating model, p_rel 0.9: alpha on high-frequency",
    "Gating model, p_rel 0.9: its OOBD-low",
    "Gating model, p_rel 0 (context never relevant)",
)


@pytest.mark.slow
def test_cpu_scale_claims(tmp_path):
    rep = reproduce("chan2024", tmp_path, scale="cpu", workers=2, progress=False)
    checked = [c for c in rep.claims if c.claim.startswith(CPU_HOLDING)]
    assert len(checked) == len(CPU_HOLDING)
    for claim in checked:
        assert claim.holds, claim
