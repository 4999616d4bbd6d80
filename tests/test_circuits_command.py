"""``icl-circuits circuits RUN`` and ``probes.circuit_study.find_circuits``."""

from __future__ import annotations

import pandas as pd
import pytest

from icl_circuits.cli import main
from icl_circuits.data import build_source
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, load_model
from icl_circuits.runs.store import list_checkpoints
from probes.circuit_study import find_circuits, folder_name
from probes.discovery import discover
from probes.graph import build_graph


@pytest.fixture(scope="module")
def study(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    steps = list_checkpoints(tiny_run)[-2:]
    return find_circuits(tiny_run, "IC", "exact", steps, target=0.8, n=16, out=out, min_effect=0.0)


def test_tables_and_figures(study, tiny_run):
    steps = list_checkpoints(tiny_run)[-2:]
    assert list(study.circuits.step) == steps
    assert {f.name for f in study.files} == {
        layout.STUDY_CIRCUITS,
        layout.STUDY_EDGES,
        layout.STUDY_FIG_CIRCUIT,
        layout.STUDY_FIG_EDGES,
    }
    assert all(f.stat().st_size > 0 for f in study.files)
    back = pd.read_csv(study.out / layout.STUDY_CIRCUITS)
    assert list(back.step) == steps and set(back.method) == {"exact"} and set(back.counterfactual) == {"mean"}
    for row in study.circuits.itertuples():
        assert row.faithfulness >= 0.8, "the circuit reaches the target it was asked for"
        inside = study.edges[(study.edges.step == row.step) & study.edges.in_circuit]
        assert set(inside.edge) == set(row.edges.split())


def test_same_circuit_as_discover(study, tiny_run):
    """Ground truth: the command's circuit is discover()'s on the same model and sequences."""
    cfg = load_config(tiny_run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    step = list_checkpoints(tiny_run)[-1]
    model = load_model(tiny_run, step)
    want = discover(model, source.eval_batch("IC", 16), "exact", 0.8, graph=build_graph(model), min_effect=0.0)
    got = study.circuits[study.circuits.step == step].iloc[0]
    assert got.edges.split() == list(want.edges)
    assert got.faithfulness == pytest.approx(want.faithfulness)


def test_counterfactual_split(tiny_run, tmp_path):
    one = list_checkpoints(tiny_run)[-1:]
    study = find_circuits(tiny_run, "IC", "eap", one, counterfactual="IC2", n=16, write=False, min_effect=0.0)
    assert study.out is None and study.circuits.counterfactual.item() == "IC2"
    mean = find_circuits(tiny_run, "IC", "eap", one, n=16, write=False, min_effect=0.0)
    assert not study.edges.score.equals(mean.edges.score), "patching with another split's outputs changes the scores"


def test_cli_prints_edges_and_writes_the_folder(tiny_run, tmp_path, capsys):
    step = list_checkpoints(tiny_run)[-1]
    args = ["circuits", str(tiny_run), "--method", "atp*", "--steps", str(step), "--n", "16", "--min-effect", "0"]
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"step {step}: IC circuit (atp*, target 0.9, counterfactual mean, 16 sequences):" in out
    table = pd.read_csv(tmp_path / "c" / layout.STUDY_CIRCUITS)
    for edge in table.edges.item().split():
        assert f"  {edge}  " in out
    assert folder_name("IC", "atp*", 0.9, "mean", 16) == "circuits-IC-atpstar-t0.9-mean-n16"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "nope"], "--split: 'nope' is not a split of this run"),
        (["--method", "acdc"], "--method: expected one of exact, eap, eap-ig, atp*"),
        (["--target", "0"], "--target: expected a faithfulness in (0, 1]"),
        (["--target", "nan"], "--target"),
        (["--target", "1.5"], "--target"),
        (["--counterfactual", "noise"], "--counterfactual: expected mean, zero or a split"),
        (["--counterfactual", "IC"], "--counterfactual: IC is the split itself"),
        (["--steps", "7"], "--steps: no checkpoint at step 7"),
        (["--steps", "1,x"], "--steps: expected last, all or step numbers"),
        (["--steps", "9" * 40], "--steps"),
        (["--n", "0"], "--n: expected 1..4096"),
        (["--n", str(2**40)], "--n: expected 1..4096"),
        (["--ig-steps", "100000"], "--ig-steps: expected 1..256"),
        (["--min-effect", "-1"], "--min-effect"),
        (["--n", "many"], "argument --n: invalid int value"),
    ],
)
def test_bad_choices_one_line(tiny_run, capsys, extra, message):
    assert main(["circuits", str(tiny_run), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["circuits", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
