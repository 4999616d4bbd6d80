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


@pytest.mark.skipif(BROWSER is None, reason="no chromium binary (apt-get install chromium)")
def test_scrubbable_attention_changes_with_the_slider(tiny_run, tmp_path):
    """The saved scrubber keeps its slider offline: moving it to another checkpoint redraws the view.

    The page moves its slider to frame K when its address ends in ``#frame=K``, through the same
    ``input`` event a drag sends; frame 0 and the last frame are screenshotted and compared.
    """
    from icl_circuits.runs.store import list_checkpoints

    steps = list_checkpoints(tiny_run)
    batch = load_source(tiny_run).eval_batch("IC", 4)
    page = viz.save_html(viz.scrub_html(tiny_run, steps, batch, layer=1, head=0), tmp_path / "scrub.html")
    text = page.read_text()
    assert text.count("var CircuitsVis=") == 1 and text.count('class="icl-scrub-frame"') == len(steps)
    assert 'type="range"' in text and "unpkg" not in text
    first = screenshot(page.resolve(), tmp_path / "first.png", tmp_path / "profile")
    moved = page.resolve().as_uri() + f"#frame={len(steps) - 1}"
    last = screenshot(_Uri(moved), tmp_path / "last.png", tmp_path / "profile")
    assert coloured_share(first) > 0.02 and coloured_share(last) > 0.02, "each frame draws its pattern"
    changed = float((np.abs(first - last).max(-1) > 0.1).mean())
    assert changed > 0.005, f"moving the slider did not change the picture ({changed:.4f} of pixels)"

    # control: the same position twice gives the same picture (the change is the slider's)
    again = screenshot(_Uri(moved), tmp_path / "again.png", tmp_path / "profile")
    assert float((np.abs(again - last).max(-1) > 0.1).mean()) < changed / 10


class _Uri:
    """A page address with a fragment, passed where :func:`screenshot` takes a path."""

    def __init__(self, uri: str):
        self.uri = uri

    def as_uri(self) -> str:
        return self.uri
