"""The analysis summary never misleads: no circuit for a behaviour not learned, faithfulness
over 1 explained, informative controls, edge timings tied to emergence, every line documented.

The same checks run on the demo's own summary in ``tests/test_demo_slow.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from probes.circuit_report import circuit_lines, learned
from probes.circuits_over_training import CircuitParams
from probes.competition import Transition

DOCS = Path(__file__).parents[1] / "docs"


def documented_line_patterns() -> list[re.Pattern]:
    """The line patterns of docs/metrics.md's summary table (``…`` stands for anything)."""
    text = (DOCS / "metrics.md").read_text()
    section = text[text.index("## The summary") :]
    patterns = []
    for row in section.splitlines():
        if not row.startswith("| `"):
            continue
        cell = row.split(" | ")[0]
        for pattern in re.findall(r"`([^`]+)`", cell):
            patterns.append(re.compile(".*?".join(re.escape(part) for part in pattern.split("…"))))
    return patterns


def undocumented_lines(summary: str) -> list[str]:
    """The lines of ``summary`` that no pattern of docs/metrics.md's summary table opens."""
    patterns = documented_line_patterns()
    return [line for line in summary.splitlines() if line.strip() and not any(p.match(line.strip()) for p in patterns)]


def check_summary(text: str) -> None:
    """The checks of the module docstring on any summary (the demo's included)."""
    emerged = dict(re.findall(r"^(ICL|IWL|CIWL): emerges at step (\d+)", text, re.M))
    for role in ("ICL", "IWL"):
        if re.search(rf"^{role}: no emergence", text, re.M):
            assert not re.search(rf"{role} circuit \(\w+\) at step", text), f"a circuit for {role}, never learned"
            assert re.search(rf"{role} circuit \(\w+\): none reported, the behaviour is not learned", text)
    for value in re.findall(r"faithfulness (\d+\.\d+)(?! target)", text):
        if float(value) > 1:
            assert f"faithfulness {value} (above 1: the edges left out lower the logit difference on net" in text
    assert "present since" not in text and "(enters" not in text
    for role, step in re.findall(r"since (ICL|IWL) emerged at step (\d+)", text):
        assert emerged.get(role) == step, "edge timings count from the emergence step the summary states"
    circuit = re.search(r"ICL circuit, (\d+) of (\d+) heads", text)
    if circuit:
        k, n = map(int, circuit.groups())
        if n - k > k:
            assert f"{k} random heads outside the circuit (control" in text
        else:
            assert "random heads" not in text
            assert f"control: no random draw of {k} heads avoids the circuit" in text
            assert sum(" alone (" in line for line in text.splitlines()) == n
    assert not undocumented_lines(text), undocumented_lines(text)


def _tr(name: str, initial: float, peak: float, final: float, emerged: bool, step: int | None = None) -> Transition:
    return Transition(name, initial, peak, 400, final, emerged, step, step, step, None, False, peak - final)


def _tables():
    """A synthetic run: ICL learned at step 400 with a faithfulness-1.41 circuit; IWL at chance."""
    rows, edges = [], []
    for step in (0, 100, 400, 1000, 3000):
        for split, role, names in (
            ("IC", "ICL", ["emb.y->L1H0.v", "L1H0->readout"]),
            ("IW", "IWL", ["emb.x->readout"]),
        ):
            rows.append(
                {
                    "step": step,
                    "split": split,
                    "role": role,
                    "n_edges": len(names),
                    "n_total": 42,
                    "faithfulness": 1.41,
                    "completeness": 0.8,
                    "effect": 5.0,
                    "acc_clean": 0.9,
                    "acc_circuit": 0.9,
                    "present": True,
                    "edges": " ".join(names),
                    "jaccard_icl_iwl": 0.0,
                }
            )
            for edge in ["emb.y->L1H0.v", "L1H0->readout", "emb.x->readout"]:
                inside = edge in names and (edge != "L1H0->readout" or step >= 1000)
                edges.append({"step": step, "split": split, "edge": edge, "in_circuit": inside})
    return pd.DataFrame(rows), pd.DataFrame(edges)


def test_no_circuit_for_a_behaviour_not_learned():
    circuits, edges = _tables()
    behaviour = {"ICL": _tr("ICL", 0.5, 1.0, 1.0, True, 400), "IWL": _tr("IWL", 0.06, 0.09, 0.06, False)}
    text = "\n".join(circuit_lines(circuits, edges, CircuitParams(), behaviour))
    assert "IWL circuit (IW) at step" not in text and "Jaccard" not in text
    assert "IWL circuit (IW): none reported, the behaviour is not learned: its accuracy never rose 0.2" in text
    assert "0.06 -> peak 0.09" in text
    assert "ICL circuit (IC) at step 3000: 2 of 42 edges" in text
    check_summary("ICL: emerges at step 400\nIWL: no emergence (0.06 -> peak 0.09 at step 400)\n" + text)


def test_faded_behaviour_is_not_learned():
    ok, why = learned(_tr("ICL", 0.5, 1.0, 0.6, True, 400))
    assert not ok and why.startswith("it faded: accuracy 0.60")
    assert learned(_tr("ICL", 0.5, 1.0, 0.9, True, 400)) == (True, "")
    assert learned(None) == (True, "")


def test_faithfulness_over_one_is_explained_and_edges_count_from_emergence():
    circuits, edges = _tables()
    behaviour = {"ICL": _tr("ICL", 0.5, 1.0, 1.0, True, 400)}
    text = "\n".join(circuit_lines(circuits[circuits.split == "IC"], edges, CircuitParams(), behaviour))
    assert "faithfulness 1.41 (above 1: the edges left out lower the logit difference on net" in text
    # checkpoints 400, 1000, 3000: emb.y->L1H0.v in all three, L1H0->readout from 1000 on
    assert "edges (in the circuit at how many of the 3 checkpoints since ICL emerged at step 400): " in text
    assert "emb.y->L1H0.v 3/3, L1H0->readout 2/3" in text
    below = circuits.assign(faithfulness=0.93)
    text = "\n".join(circuit_lines(below[below.split == "IC"], edges, CircuitParams(), behaviour))
    assert "faithfulness 0.93, completeness" in text and "above 1" not in text


def test_check_summary_catches_each_problem():
    good = "ICL: emerges at step 434\nIWL: no emergence (0.06 -> peak 0.08 at step 31)\n"
    with pytest.raises(AssertionError, match="never learned"):
        check_summary(good + "  IWL circuit (IW) at step 3000: 1 of 42 edges, faithfulness 0.95, completeness 1.00\n")
    with pytest.raises(AssertionError):
        check_summary(good + "  ICL circuit (IC) at step 3000: 8 of 42 edges, faithfulness 1.41, completeness 1.00\n")
    with pytest.raises(AssertionError):
        check_summary(good + "ablated at step 3000 (mean ablation), accuracy clean -> ablated:\n"
                      "  ICL circuit, 3 of 4 heads (L0H1, L1H0, L1H1): IC 1.00 -> 0.07\n"
                      "  3 random heads (control, mean of 3 draws): IC 1.00 -> 0.07\n")  # fmt: skip
    with pytest.raises(AssertionError):
        check_summary(good + "    edges: emb.y->L1H0.v (enters 36)\n")
    with pytest.raises(AssertionError):
        check_summary(good + "a line nobody documented\n")


def test_tiny_run_summary(tiny_run, tmp_path):
    """A whole report on the tiny run (40 steps: neither behaviour emerges) passes every check."""
    from probes.circuits import FoundCircuit
    from probes.report import SUMMARY, write_report

    three = FoundCircuit(((0, 1),), ((1, 0), (1, 1)))
    text = (
        write_report(tiny_run, progress=False, out=tmp_path / "ana", circuit=three, eval_size=32) / SUMMARY
    ).read_text()
    check_summary(text)
    assert "control: no random draw of 3 heads avoids the circuit (1 head(s) outside it)" in text
    assert "complement, every head outside the circuit (L0H0): IC " in text
    for role in ("ICL", "IWL"):
        if re.search(rf"^{role}: no emergence", text, re.M):
            assert f"{role} circuit" in text and "none reported, the behaviour is not learned" in text
