"""``icl-circuits circuits RUN``: the circuit of one split, by a chosen method, at chosen checkpoints.

:func:`find_circuits` discovers the circuit behind a split's logit difference
(:func:`probes.discovery.discover`) at each chosen checkpoint, with a chosen edge-scoring
method (``exact``, ``eap``, ``eap-ig``, ``atp*``), faithfulness target and counterfactual
(what a patched edge carries instead: the split's ``mean``, ``zero``, or another split's
sequences), and writes a table of circuits, a table of edges and a figure into a folder
named by those choices. Every choice is checked before any model is loaded, with a one-line
:class:`~icl_circuits.errors.ICLError` naming the option.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from icl_circuits.data import build_source
from icl_circuits.errors import ICLError
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, load_model
from icl_circuits.runs.store import latest_good_checkpoint, list_checkpoints
from probes import figures
from probes.circuit_figures import circuit_figure, edge_heatmap
from probes.discovery import MIN_EFFECT, TARGET, discover
from probes.eap import METHODS
from probes.graph import build_graph

#: Counterfactuals that are not a split's name.
PATCHES = ("mean", "zero")
#: Most sequences per checkpoint (each method holds a few copies of their activations).
MAX_SEQUENCES = 4096
#: Most EAP-IG integration steps.
MAX_IG_STEPS = 256
#: Most checkpoints in one call.
MAX_STEPS = 10_000


@dataclasses.dataclass(frozen=True)
class CircuitStudy:
    """What :func:`find_circuits` found and wrote.

    Attributes:
        circuits: one row per step: ``step, split, method, target, counterfactual, n,
            min_effect, n_edges, n_total, faithfulness, completeness, effect, metric_*, acc_*, present, edges``.
        edges: one row per step and edge: ``step, edge, sender, receiver, layer, head_index,
            input, score, in_circuit``.
        out: the folder written (None when nothing was written).
        files: the files written into it.
    """

    circuits: pd.DataFrame
    edges: pd.DataFrame
    out: Path | None
    files: tuple[Path, ...]


def folder_name(split: str, method: str, target: float, counterfactual: str, n: int) -> str:
    """``circuits-IC-eap-ig-t0.9-mean-n64``: one folder per set of choices (``*`` spelled ``star``)."""
    return f"circuits-{split}-{method.replace('*', 'star')}-t{target:g}-{counterfactual}-n{n}"


def check_choices(
    split: str, splits: tuple[str, ...], method: str, target: float, counterfactual: str, n: int, ig_steps: int
) -> None:
    """Raise a one-line ICLError for the first bad choice."""
    if split not in splits:
        raise ICLError(f"--split: {split!r} is not a split of this run (its splits: {', '.join(splits)})")
    if method not in METHODS:
        raise ICLError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if not (isinstance(target, float | int) and math.isfinite(target) and 0 < target <= 1):
        raise ICLError(f"--target: expected a faithfulness in (0, 1], got {target!r}")
    if counterfactual not in PATCHES and counterfactual not in splits:
        raise ICLError(
            f"--counterfactual: expected mean, zero or a split of this run ({', '.join(splits)}), got {counterfactual!r}"
        )
    if counterfactual == split:
        raise ICLError(f"--counterfactual: {split} is the split itself; patching it with itself changes nothing")
    if not 1 <= n <= MAX_SEQUENCES:
        raise ICLError(f"--n: expected 1..{MAX_SEQUENCES} sequences, got {n}")
    if not 1 <= ig_steps <= MAX_IG_STEPS:
        raise ICLError(f"--ig-steps: expected 1..{MAX_IG_STEPS}, got {ig_steps}")


def resolve_study_steps(run: Path, steps: list[int] | str | None) -> list[int]:
    """``None``/``"last"``: the last readable checkpoint; ``"all"``: every one; else the steps given."""
    available = list_checkpoints(run)
    if not available:
        raise ICLError(f"{run / layout.CHECKPOINTS}: no checkpoints")
    if steps is None or steps == "last":
        last = latest_good_checkpoint(run)
        if last is None:
            raise ICLError(f"{run / layout.CHECKPOINTS}: no readable checkpoint")
        return [last]
    if steps == "all":
        return available
    if isinstance(steps, str):
        raise ICLError(f"--steps: expected last, all or step numbers, got {steps!r}")
    chosen = sorted(set(steps))
    if len(chosen) > MAX_STEPS:
        raise ICLError(f"--steps: at most {MAX_STEPS} checkpoints, got {len(chosen)}")
    missing = [s for s in chosen if s not in set(available)]
    if missing:
        raise ICLError(
            f"--steps: no checkpoint at step {missing[0]} (have {len(available)}: {available[0]}..{available[-1]})"
        )
    return chosen


def find_circuits(
    run: Path | str,
    split: str | None = None,
    method: str = "eap-ig",
    steps: list[int] | str | None = None,
    target: float = TARGET,
    counterfactual: str = "mean",
    n: int = 64,
    ig_steps: int = 5,
    out: Path | str | None = None,
    write: bool = True,
    min_effect: float = MIN_EFFECT,
) -> CircuitStudy:
    """Discover the circuit of ``split`` at each chosen checkpoint of ``run``.

    Args:
        run: a run folder of ``icl-circuits train``.
        split: the split whose logit difference the circuit explains (default: the run's ICL split).
        method: edge scores: ``exact``, ``eap``, ``eap-ig`` or ``atp*`` (docs/circuits.md).
        steps: checkpoint steps, ``"last"`` (default: the last readable one) or ``"all"``.
        target: faithfulness the circuit must reach (0..1].
        counterfactual: what a patched edge carries: ``mean`` (its mean over the split's
            sequences), ``zero``, or a split's name (its output on that split's sequences).
        n: sequences of the split.
        ig_steps: EAP-IG integration steps.
        out: folder for the tables and figure (default ``RUN/analysis/circuits-...``).
        write: write the tables and figure (False: only return them).
        min_effect: least behaviour (logits) for a circuit to be looked for.

    Returns:
        The :class:`CircuitStudy`.
    """
    run = Path(run)
    cfg = load_config(run)
    if cfg.data.layout == "packed":
        raise ICLError(f"{run}: the edge graph needs the interleaved layout (data.layout=packed here)")
    source = build_source(cfg.data, cfg.seed, "cpu")
    split = split or source.icl_split
    check_choices(split, tuple(source.splits), method, target, counterfactual, n, ig_steps)
    if not (math.isfinite(min_effect) and min_effect >= 0):
        raise ICLError(f"--min-effect: expected a finite number of logits >= 0, got {min_effect!r}")
    chosen = resolve_study_steps(run, steps)
    batch = source.eval_batch(split, n)
    patch, reference = (
        ("corrupt", source.eval_batch(counterfactual, n)) if counterfactual not in PATCHES else (counterfactual, None)
    )
    if reference is not None and tuple(reference.tokens().shape) != tuple(batch.tokens().shape):
        raise ICLError(
            f"--counterfactual: {counterfactual}'s sequences have shape {tuple(reference.tokens().shape)}, "
            f"{split}'s {tuple(batch.tokens().shape)}; a counterfactual split must match"
        )
    folder = (
        Path(out) if out is not None else run / layout.ANALYSIS / folder_name(split, method, target, counterfactual, n)
    )
    if write:
        try:  # before any compute: an unwritable folder fails now, not after the checkpoints
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ICLError(
                f"{folder}: cannot write the circuit tables here ({err.strerror or err}); use --out"
            ) from None
    rows, edge_tables, graph = [], [], None
    for step in chosen:
        model = load_model(run, step)
        graph = build_graph(model)
        circuit = discover(model, batch, method, target, patch, reference, ig_steps, graph, min_effect)
        choice = {"split": split, "method": method, "target": target, "counterfactual": counterfactual, "n": n}
        choice["min_effect"] = min_effect
        rows.append({"step": step, **choice, **circuit.summary(), "edges": " ".join(circuit.edges)})
        edge_tables.append(circuit.scores.assign(step=step))
    circuits = pd.DataFrame(rows)
    edges = pd.concat(edge_tables, ignore_index=True)
    edges = edges[["step", *[c for c in edges.columns if c != "step"]]]
    if not write:
        return CircuitStudy(circuits, edges, None, ())
    folder = (
        Path(out) if out is not None else run / layout.ANALYSIS / folder_name(split, method, target, counterfactual, n)
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / layout.STUDY_CIRCUITS, folder / layout.STUDY_EDGES]
    circuits.to_csv(files[0], index=False)
    edges.to_csv(files[1], index=False)
    last = edges[edges["step"] == chosen[-1]]
    row = circuits.iloc[-1]
    title = f"{split} circuit at step {chosen[-1]} ({method}, {int(row['n_edges'])} of {int(row['n_total'])} edges)"
    files.append(folder / layout.STUDY_FIG_CIRCUIT)
    figures.save(circuit_figure(graph, last, title), files[-1])
    if len(chosen) > 1:
        files.append(folder / layout.STUDY_FIG_EDGES)
        figures.save(edge_heatmap(edges.assign(split=split), split), files[-1])
    return CircuitStudy(circuits, edges, folder, tuple(files))


def study_lines(study: CircuitStudy) -> list[str]:
    """What ``icl-circuits circuits`` prints: each step's circuit and its edges, best first."""
    lines = []
    for row in study.circuits.itertuples():
        head = f"step {row.step}: {row.split} circuit ({row.method}, target {row.target:g}, counterfactual {row.counterfactual}, {row.n} sequences)"
        if not row.present:
            lines.append(
                f"{head}: none (the behaviour is {row.effect:.2f} logits, below the {row.min_effect:g} needed)"
            )
            continue
        faith = f"faithfulness {row.faithfulness:.2f}"
        if row.faithfulness > 1:
            faith += " (above 1: the edges left out lower the logit difference on net)"
        lines.append(
            f"{head}: {row.n_edges} of {row.n_total} edges, {faith}, completeness {row.completeness:.2f}, "
            f"accuracy {row.acc_circuit:.2f} (model {row.acc_clean:.2f}, every edge patched {row.acc_empty:.2f})"
        )
        scores = study.edges[(study.edges["step"] == row.step) & study.edges["in_circuit"].astype(bool)]
        score = scores.set_index("edge")["score"]
        for edge in row.edges.split():
            lines.append(f"  {edge}  {score[edge]:+.3f}")
    return lines
