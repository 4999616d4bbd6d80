"""The notebooks run top to bottom (small mode) in a temporary folder, and are committed clean.

Needs the ``notebooks`` extra (nbclient, nbformat, ipykernel); skipped without it. The kernel
is this interpreter (a kernelspec written into a temporary ``JUPYTER_PATH``), so the
notebooks see exactly the packages the tests see.
"""

from __future__ import annotations

import json
import queue
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [
    "01_quickstart",
    "02_attention",
    "03_ablation_study",
    "04_competition",
    "05_language_model",
    "06_circuit_discovery",
]
SWITCH = 'SMALL = os.environ.get("ICL_NOTEBOOK_SMALL", "0") == "1"'


def _sliced(get_msg, step: float = 1.0):
    """``get_msg`` that waits at most ``step`` seconds per poll, up to the caller's timeout."""

    async def get(timeout: float | None = None):
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = step if end is None else max(0.0, min(step, end - time.monotonic()))
            try:
                return await get_msg(timeout=left)
            except queue.Empty:
                if end is not None and time.monotonic() >= end:
                    raise

    return get


class _Client(nbclient.NotebookClient):
    """nbclient whose waits for kernel messages poll the sockets every second.

    pyzmq's asyncio poll can miss a socket's wake-up (seen in a widget cell after another
    notebook in the same process) and looks at the socket again only when the poll times out,
    so a reply already there waited out the whole 600 s cell timeout.
    """

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = _sliced(channel.get_msg)
        return kc


def read(name: str):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def test_notebooks_are_committed_clean_with_the_small_switch():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == NOTEBOOKS
    for name in NOTEBOOKS:
        nb = read(name)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert SWITCH in code[0].source, f"{name}: the first code cell must read ICL_NOTEBOOK_SMALL"
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder shared by the notebooks (the first trains the small run, the rest reuse it)."""
    work = tmp_path_factory.mktemp("notebooks")
    spec = work / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "test", "language": "python"}))
    return work


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, workdir, monkeypatch):
    monkeypatch.setenv("ICL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("ICL_NOTEBOOK_RUNS", str(workdir / "checkpoints"))
    monkeypatch.setenv("JUPYTER_PATH", str(workdir / "jupyter"))  # searched before any user kernelspec
    monkeypatch.setenv("IPYTHONDIR", str(workdir / "ipython"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the test suite (conftest); far faster on a busy machine
    nb = read(name)
    client = _Client(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError with the cell's traceback on failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert (workdir / "checkpoints" / "demo-small" / "config.json").exists()
    if name == "02_attention":
        html = (workdir / "checkpoints" / "demo-small" / "attention.html").read_text()
        assert html.count("var CircuitsVis=") == 1 and "CircuitsVis.render(" in html
        assert not re.search(r"<script[^>]*\bsrc=|unpkg|jsdelivr|cdn", html, re.IGNORECASE)
        shown = [o for o in outputs if "text/html" in o.get("data", {}) and "CircuitsVis" in o["data"]["text/html"]]
        assert len(shown) == 2 and not any("unpkg" in o["data"]["text/html"] for o in shown)
