"""One name per concept across data families, and run folders written before the rename.

Format 1 run folders stored the papers' letters (``K``, ``L``, ``N``, ``sigma`` ...); they
must still load, resume and analyse; unknown formats are refused with one line.
"""

from __future__ import annotations

import json

import pytest

from icl_circuits.config import RunConfig, apply_overrides
from icl_circuits.data import FAMILIES, data_config_from_dict
from icl_circuits.errors import ConfigError, RunFolderError
from icl_circuits.presets import get_preset
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, load_model
from icl_circuits.training import train
from tests.conftest import TINY_OVERRIDES


def _as_format_1(cfg: RunConfig) -> dict:
    raw = cfg.to_dict()
    back = {new: old for old, new in type(cfg.data).RENAMED.items()}
    raw["data"] = {back.get(k, k): v for k, v in raw["data"].items()}
    return {"format_version": 1, **raw}


@pytest.mark.parametrize("preset", ["demo", "chan2024-stylized", "singh2024-induction", "omniglot-bursty"])
def test_format_1_config_migrates(tmp_path, preset):
    cfg = get_preset(preset)
    old = _as_format_1(cfg)
    assert set(type(cfg.data).RENAMED) & set(old["data"])  # the fixture really uses old names
    (tmp_path / layout.CONFIG).write_text(json.dumps(old))
    assert load_config(tmp_path) == cfg


def test_format_1_run_folder_loads_and_resumes(tmp_path):
    cfg = apply_overrides(get_preset("demo"), list(TINY_OVERRIDES))
    run = train(cfg, tmp_path / "run", progress=False)
    (run / layout.CONFIG).unlink()
    (run / layout.CONFIG).write_text(json.dumps(_as_format_1(cfg)))
    assert load_config(run) == cfg
    load_model(run)  # the shape comes from the migrated config
    assert train(cfg, run, progress=False) == run  # complete: resuming is a no-op, not a refusal


def test_unknown_format_refused_in_one_line(tmp_path):
    raw = {"format_version": 99, **get_preset("demo").to_dict()}
    (tmp_path / layout.CONFIG).write_text(json.dumps(raw))
    with pytest.raises(RunFolderError, match=r"run-folder format 99, this icl-circuits reads formats 1, 2") as err:
        load_config(tmp_path)
    assert "\n" not in str(err.value)


def test_old_override_names_set_the_new_fields():
    demo = get_preset("demo")
    assert apply_overrides(demo, ["data.K=32", "data.B=2"]) == apply_overrides(
        demo, ["data.n_classes=32", "data.burst=2"]
    )
    stylized = get_preset("chan2024-stylized")
    # data.L is the label count of the Gaussian family and the context length of the stylized one.
    assert apply_overrides(stylized, ["data.L=2", "data.sigma=0.4"]).data.n_pairs == 2
    assert apply_overrides(demo, ["data.L=8"]).data.n_labels == 8


def test_old_and_new_name_together_refused():
    with pytest.raises(ConfigError, match=r"^data\.K: the old name of data\.n_classes"):
        data_config_from_dict({"family": "gaussian", "K": 4, "n_classes": 8})


def test_one_name_per_concept_across_families():
    """A field name shared by two families means the same thing; the old letters are gone."""
    letters = {"K", "L", "N", "D", "B", "p_B", "alpha", "eps", "sigma", "exemplar_noise"}
    for name, (config_cls, _) in FAMILIES.items():
        fields = set(config_cls.__dataclass_fields__)
        assert not fields & letters, name
        assert "n_pairs" in fields, name
        assert set(config_cls.RENAMED.values()) <= fields, name


def test_format_1_run_with_l2_is_not_resumed(tmp_path):
    """train.l2 changed meaning in format 2 (sum of norms, icl-dynamics): an old L2 run is not continued."""
    cfg = apply_overrides(get_preset("demo"), [*TINY_OVERRIDES, "train.l2=1e-4"])
    run = train(cfg, tmp_path / "run", progress=False, stop_after=4)
    (run / layout.CONFIG).unlink()
    (run / layout.CONFIG).write_text(json.dumps(_as_format_1(cfg)))
    with pytest.raises(RunFolderError, match=r"format 1 trained train\.l2 as l2 \* sum \|\|p\|\|\^2") as err:
        train(cfg, run, progress=False)
    assert "\n" not in str(err.value)
    load_model(run)  # still analysable
