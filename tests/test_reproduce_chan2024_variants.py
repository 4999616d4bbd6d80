"""Chan et al. 2024 variants: the settings ablation and the Omniglot sweep (smoke plumbing, claim logic, cpu claims)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from icl_circuits.papers.chan2024 import ablation as chan2024_ablation
from icl_circuits.presets import get_preset
from icl_circuits.reproduce import reproduce
from tests.conftest import assert_claims_hold

torch.set_num_threads(1)


def test_ablation_smoke_covers_the_eight_combinations(tmp_path):
    rep = reproduce("chan2024-ablation", tmp_path, scale="smoke", workers=1, progress=False)
    runs = rep.tables["runs"]
    combos = runs[["label", "init", "positions"]].drop_duplicates()
    assert len(combos) == 8
    # Each combination's config is what its labels say.
    for run in (tmp_path / "sweeps").glob("*/runs/*/config.json"):
        cfg = pd.read_json(run, typ="series")
        model = cfg["model"]
        sweep = run.parts[-4]
        assert (model["label_init"] == "lecun_normal") == ("label-reference" in sweep)
        assert (model["init_mode"] == "lecun_normal") == ("init-reference" in sweep)
    effects = rep.tables["main_effects"]
    assert set(effects["factor"]) == {"label", "init", "positions"}
    assert (tmp_path / "ablation.png").stat().st_size > 0
    assert len(rep.claims) == 3


def test_main_effects_on_a_known_table():
    rows = []
    for label in ("tl", "reference"):
        for init in ("tl", "reference"):
            for positions in ("consecutive", "shared"):
                value = 0.1 + 0.6 * (label == "reference") + 0.1 * (positions == "shared")
                rows.append(
                    {
                        "label": label,
                        "init": init,
                        "positions": positions,
                        "split": "OOBD-low",
                        "metric": "acc",
                        "value": value,
                    }
                )
    table = pd.DataFrame(rows)
    effects = chan2024_ablation.main_effects(table).set_index("factor")["effect"]
    assert effects["label"] == pytest.approx(0.6) and effects["positions"] == pytest.approx(0.1)
    assert effects["init"] == pytest.approx(0.0)
    holds = [c.holds for c in chan2024_ablation.claims(table, chan2024_ablation.main_effects(table), "last")]
    assert holds == [True, True, True]


def test_omniglot_preset_and_smoke(tmp_path):
    cfg = get_preset("chan2024-omniglot")
    assert (cfg.data.bank, cfg.data.noise, cfg.model.encoder) == ("omniglot", 0.0, "linear")
    assert cfg.model.label_init == get_preset("chan2024-stylized").model.label_init
    rep = reproduce("chan2024-omniglot", tmp_path, scale="smoke", workers=1, progress=False)
    assert set(rep.tables["transformer"]["N"]) == {2**6, 2**8}
    assert (tmp_path / "omniglot_accuracy.png").stat().st_size > 0
    assert len(rep.claims) == 2 and all(c.holds in (True, False) for c in rep.claims)


#: Ablation claims (by their opening words) that hold at the cpu scale, as docs/reproductions/chan2024.md reports.
ABLATION_HOLDING = (
    "Ablation at N = 2^10, p_rel 0.9: the label-embedding scale carries",
    "Ablation: with TransformerLens's label embedding",
)


@pytest.mark.slow
def test_ablation_cpu_scale_claims(tmp_path):
    rep = reproduce("chan2024-ablation", tmp_path, scale="cpu", workers=2, progress=False)
    assert_claims_hold(rep, ABLATION_HOLDING)


@pytest.mark.slow
def test_omniglot_cpu_scale_claims(tmp_path):
    rep = reproduce("chan2024-omniglot", tmp_path, scale="cpu", workers=2, progress=False)
    for claim in rep.claims:
        assert claim.holds, claim
