"""Figures as a reader sees them: axes, legends, colour bars, nothing clipped."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from icl_circuits.data import build_source
from icl_circuits.runs.read import load_config
from icl_circuits.runs.store import list_checkpoints
from probes import figures, viz
from probes.circuits import FoundCircuit
from probes.competition import Transition
from probes.over_training import analyze_run


@pytest.fixture(scope="module")
def table(tiny_run):
    return analyze_run(tiny_run, circuit=FoundCircuit(((0, 0),), ((1, 0),)), eval_size=32, progress=False)


def test_ablation_figure_axes_and_legend(table):
    fig = figures.ablation_figure(table, ["IC", "IC2", "IW"])
    last = table.step.max()
    for ax in fig.axes:
        assert ax.get_xlim() == (0.0, last), "the step axis starts at 0, no empty negative range"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == "clean (nothing ablated)"
    assert all("ablated" in label for label in labels)
    assert "ICL circuit ablated (L0H0, L1H0)" in labels
    # 2 of 4 heads: no random draw of 2 avoids the circuit, so the complement and each head stand in
    assert "every head outside the circuit ablated" in labels and "head L0H1 ablated" in labels


def test_head_heatmaps_real_steps_shared_range(table):
    steps = list(np.unique(table.step))
    for metric in ("task_induction", "prev_token"):
        fig = figures.head_heatmap(table, metric)
        ax, cbar = fig.axes
        assert ax.get_xscale() == "symlog" and ax.get_xlim() == (steps[0], steps[-1]), "x is the training step"
        mesh = ax.collections[0]
        assert mesh.get_clim() == (0.0, 1.0), "every attention-score heatmap shares 0..1"
        assert cbar.get_ylabel() == f"{metric} score"


def _transition(name, emerged):
    return Transition(name, 0.02, 0.09, 5, 0.05, emerged, 5 if emerged else None, None, None, None, False, 0.04)


def test_competition_marks_only_emergences():
    table = pd.DataFrame(
        {"ICL": [0.0, 0.5, 0.9], "IWL": [0.02, 0.09, 0.05], "train_loss": [3.0, 1.0, 0.5]}, index=[0, 5, 40]
    )
    fig = figures.competition_figure(table, {"ICL": _transition("ICL", True), "IWL": _transition("IWL", False)})
    ax = fig.axes[0]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert [s.get_label() for s in stars] == ["ICL peak"], "no star for a curve that never emerged"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "train loss (right axis)" in labels


def _border_is_white(path) -> bool:
    img = matplotlib.image.imread(path)[..., :3]
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3)])
    border = np.concatenate([border, img[:, -2:].reshape(-1, 3)])
    return bool((border > 0.99).all())


def test_attention_figures_titled_and_unclipped(tiny_run, tmp_path):
    cfg = load_config(tiny_run)
    batch = build_source(cfg.data, cfg.seed).eval_batch("IC", 8)
    steps = list_checkpoints(tiny_run)
    made = {
        "one": viz.attention_figure(tiny_run, batch, 0, 1, 0, step=steps[-1]),
        "grid": viz.heads_grid_figure(tiny_run, batch, 0, step=steps[-1]),
        "over": viz.head_over_checkpoints_figure(tiny_run, steps[:2], 1, 0, batch),
    }
    for name, fig in made.items():
        texts = [ax.get_xlabel() for ax in fig.axes] + [fig.get_supxlabel() if fig._supxlabel else ""]
        assert any("key position" in t for t in texts), name
        assert any("attention weight" == ax.get_ylabel() for ax in fig.axes), f"{name}: colour bar label"
        path = tmp_path / f"{name}.png"
        figures.save(fig, path)
        assert _border_is_white(path), f"{name}: something touches the edge of the image (clipped)"
