"""Attention visualisations: token labels, offline circuitsvis HTML, matplotlib figures, the figures script."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import circuitsvis as cv
import pytest
import torch

from icl_circuits.data import build_source
from icl_circuits.data.batch import Batch
from icl_circuits.data.gaussian import GaussianConfig, GaussianSource
from icl_circuits.models import to_bridge
from icl_circuits.runs.read import load_config, load_model
from icl_circuits.runs.store import list_checkpoints
from probes import figures, viz
from probes.handwired import INDUCTION_HEAD, induction_circuit_model

SRC = GaussianSource(GaussianConfig(n_classes=256, n_labels=8, d=32, n_pairs=4, burst=2, noise=0.1), seed=0)
ROOT = Path(__file__).resolve().parents[1]
#: Anything that would make a browser fetch a script from the network.
EXTERNAL = re.compile(r"<script[^>]*\bsrc=|unpkg|jsdelivr|cdn|import\s[^;]*from\s*['\"]https?:", re.IGNORECASE)


def hand_batch() -> Batch:
    """Two sequences of 2 pairs + query, classes and labels chosen by hand."""
    return Batch(
        exemplars=torch.randn(2, 3, 4),
        context_labels=torch.tensor([[5, 7], [2, 2]]),
        classes=torch.tensor([[17, 3, 17], [1000, 1000, 1001]]),
        target=torch.tensor([5, 0]),
    )


@pytest.fixture(scope="module")
def wired():
    return to_bridge(induction_circuit_model(d_in=32, n_labels=8, n_pairs=4))


@pytest.fixture(scope="module")
def batch() -> Batch:
    return SRC.eval_batch("IC", 64)


def render_props(html: str) -> list[dict]:
    """The props of every ``CircuitsVis.render`` call after the bundle, in order."""
    calls = html.split("CircuitsVis.render(")[1:]
    return [json.loads(re.search(r"(\{.*\})\s*\)\s*;", call, re.DOTALL).group(1)) for call in calls]


def test_token_labels_on_a_hand_made_batch():
    b = hand_batch()
    assert viz.token_labels(b) == ["x (class 17)", "label 5", "x (class 3)", "label 7", "query (class 17)"]
    assert viz.token_labels(b, 1) == ["x (class 1000)", "label 2", "x (class 1000)", "label 2", "query (class 1001)"]
    assert len(viz.token_labels(SRC.eval_batch("IC", 2))) == 2 * 4 + 1


def test_top_induction_head_of_the_handwired_circuit(wired, batch):
    assert viz.top_induction_head(wired, batch) == INDUCTION_HEAD


def test_saved_html_holds_the_pattern_and_no_external_script(wired, batch, tmp_path):
    layer, head = INDUCTION_HEAD
    rendered = viz.attention_html(wired, batch, index=3, layer=layer, head=head, step=7)
    path = viz.save_html(rendered, tmp_path / "attention.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "step 7: L1H0" in text
    assert not EXTERNAL.search(text)
    assert text.count("var CircuitsVis=") == 1  # the inlined bundle, once
    (props,) = render_props(text)
    expected = viz.attention_patterns(wired, batch[3:4])[layer, 0, head]  # [query_pos, key_pos]
    assert torch.allclose(torch.tensor(props["attention"]), expected, atol=1e-6)
    assert props["tokens"] == [t.replace(" ", "_") for t in viz.token_labels(batch, 3)]
    # However Jupyter or str() shows it, only the inlined source exists.
    assert rendered.cdn_src == rendered.local_src and not EXTERNAL.search(str(rendered))


def test_show_displays_the_inlined_source(wired, batch):
    pytest.importorskip("IPython")  # the notebooks extra
    rendered = viz.attention_html(wired, batch, layer=1)
    assert viz.show(rendered).data == rendered.local_src


def test_all_heads_and_one_layer(wired, batch):
    every = render_props(viz.attention_html(wired, batch).local_src)[0]
    assert every["attentionHeadNames"] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    assert torch.tensor(every["attention"]).shape == (4, batch.seq_len, batch.seq_len)
    one_layer = render_props(viz.attention_html(wired, batch, layer=1).local_src)[0]
    assert one_layer["attentionHeadNames"] == ["L1H0", "L1H1"]
    with pytest.raises(ValueError, match="layer"):
        viz.attention_html(wired, batch, head=0)
    with pytest.raises(ValueError, match="out of range"):
        viz.attention_html(wired, batch, layer=2, head=0)


def test_combined_renders_load_the_bundle_once_with_fresh_ids(wired, batch, tmp_path):
    one = viz.attention_html(wired, batch, layer=1, head=0)
    raw = cv.attention.attention_pattern(tokens=["a", "b"], attention=torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    both = viz.combine([one, ("raw", raw), one])
    text = viz.save_html([both, viz.attention_html(wired, batch)], tmp_path / "a.html").read_text()
    assert text.count("var CircuitsVis=") == 1 and len(render_props(text)) == 4
    ids = re.findall(r'<div id="([^"]+)"></div>', text)
    assert len(ids) == 4 and len(set(ids)) == 4
    assert all(f'"{i}"' in text.split("var CircuitsVis=")[1] for i in ids)  # each div has its render call
    with pytest.raises(ValueError, match="external"):
        viz.save_html(raw.cdn_src, tmp_path / "cdn.html")


@pytest.fixture
def run_batch(tiny_run) -> Batch:
    """Evaluation sequences of the tiny run's own data."""
    cfg = load_config(tiny_run)
    return build_source(cfg.data, cfg.seed).eval_batch("IC", 8)


def test_heads_across_checkpoints(tiny_run, run_batch, tmp_path):
    steps = list_checkpoints(tiny_run)[::2]
    batch = run_batch
    rendered = viz.heads_across_checkpoints_html(tiny_run, steps, 1, 0, batch, index=2)
    text = viz.save_html(rendered, tmp_path / "over.html").read_text()
    assert not EXTERNAL.search(text) and text.count("var CircuitsVis=") == 1
    assert [f"L1H0 at step {s}" in text for s in steps] == [True] * len(steps)
    props = render_props(text)
    for step, p in zip(steps, props, strict=True):
        expected = viz.attention_patterns(load_model(tiny_run, step), batch[2:3])[1, 0, 0]
        assert torch.allclose(torch.tensor(p["attention"]), expected, atol=1e-6)


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_matplotlib_figures_build_and_save(tiny_run, run_batch, wired, batch, tmp_path, ext):
    steps = list_checkpoints(tiny_run)
    figs = {
        "one": viz.attention_figure(wired, batch, 0, *INDUCTION_HEAD, step=5),
        "grid": viz.heads_grid_figure(wired, batch, 1),
        "from_run": viz.attention_figure(tiny_run, run_batch, 0, 1, 1, step=steps[-1]),
        "over": viz.head_over_checkpoints_figure(tiny_run, steps[:3], 1, 0, run_batch),
    }
    assert len(figs["grid"].axes) == 4 + 1  # 2 x 2 heads and a colorbar
    assert figs["one"].axes[0].get_xticklabels()[-1].get_text() == viz.token_labels(batch, 0)[-1]
    for name, fig in figs.items():
        figures.save(fig, tmp_path / f"{name}.{ext}")
        data = (tmp_path / f"{name}.{ext}").read_bytes()
        assert data.startswith(b"\x89PNG") if ext == "png" else b"<svg" in data[:2000]


def test_figures_script(tiny_run, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("figures_script", ROOT / "scripts" / "figures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "figs"
    assert script.main([str(tiny_run), "--out", str(out), "--format", "svg", "--eval-size", "32"]) == 0
    names = sorted(p.name for p in out.iterdir())
    for expected in ("competition.svg", "ablations.svg", "heads_task_induction.svg", "heads_prev_token.svg"):
        assert expected in names
    assert any(n.startswith("heads_grid_step") for n in names)
    assert sum(n.startswith("attention_L") for n in names) == len(script.spread(list_checkpoints(tiny_run), 4)) + 1
    assert script.main([str(tiny_run), "--out", str(out), "--steps", "999999"]) == 2
    assert "no checkpoint at step 999999" in capsys.readouterr().err
