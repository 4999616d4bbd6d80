"""The offline attention HTML renders in a real headless Chromium with no network (not blank)."""

from __future__ import annotations

import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from icl_circuits.runs.read import load_model, load_source
from probes import viz

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def screenshot(html, png, profile) -> np.ndarray:
    """A headless screenshot of ``html`` with every host unresolvable and a dead proxy (no network)."""
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--window-size=1000,800",
        "--virtual-time-budget=10000",
        f"--screenshot={png}",
        html.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return matplotlib.image.imread(png)[..., :3]


def coloured_share(img: np.ndarray) -> float:
    """Share of pixels with colour (attention cells), not white, grey or black text."""
    return float(((img.max(-1) - img.min(-1)) > 0.15).mean())


@pytest.mark.skipif(BROWSER is None, reason="no chromium binary (apt-get install chromium)")
def test_attention_html_renders_offline_in_chromium(tiny_run, tmp_path):
    batch = load_source(tiny_run).eval_batch("IC", 4)
    page = viz.save_html(viz.attention_html(load_model(tiny_run), batch, layer=1), tmp_path / "attn.html")
    img = screenshot(page.resolve(), tmp_path / "attn.png", tmp_path / "profile")
    assert coloured_share(img) > 0.05, "the attention pattern was not drawn"

    # control: the same page without its inlined bundle draws only the titles
    blank = tmp_path / "blank.html"
    blank.write_text(page.read_text().split('<script crossorigin type="module">')[0] + "</body></html>")
    assert coloured_share(screenshot(blank.resolve(), tmp_path / "blank.png", tmp_path / "profile")) < 0.01
