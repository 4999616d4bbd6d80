"""Discovered circuits at every checkpoint of a run, cached with the other analysis tables.

At each checkpoint, :func:`probes.discovery.split_circuits` finds the ICL circuit (on the
run's ICL split) and the IWL circuit (on its IWL split) at the faithfulness target. The
results are cached per checkpoint in ``RUN/analysis/circuits-v{VERSION}-{key}/`` (key: the
parameters; file name: the checkpoint's step and weights checksum), so a second call reads
them back and a new checkpoint costs one checkpoint.

:func:`edge_entry_steps` says when each edge joins a circuit (and whether it stays), and
:func:`circuit_overlay` sets the circuits' birth next to the emergence / peak / transience
detection of :mod:`probes.competition`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icl_circuits.data import build_source
from icl_circuits.errors import CheckpointError
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, load_model
from icl_circuits.runs.store import read_json
from probes.competition import Transition, detect_transition
from probes.discovery import MIN_EFFECT, TARGET, split_circuits
from probes.over_training import resolve_steps, write_cache

#: Bump when what is computed changes: old cache files are then ignored.
VERSION = 1


@dataclasses.dataclass(frozen=True)
class CircuitParams:
    """What :func:`circuits_over_training` computes; part of the cache key.

    Attributes:
        n: sequences per split.
        method: edge scores (``eap-ig``, ``eap`` or ``exact``).
        target: faithfulness target.
        steps: EAP-IG steps.
        min_effect: least behaviour (logits) for a circuit to be looked for.
    """

    n: int = 64
    method: str = "eap-ig"
    target: float = TARGET
    steps: int = 3
    min_effect: float = MIN_EFFECT

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _paths(run: Path, root: Path, step: int, params: CircuitParams) -> tuple[Path, Path]:
    manifest = read_json(layout.checkpoint_dir(run, step) / layout.MANIFEST)
    try:
        weights = manifest["files"][layout.MODEL]["sha256"][:12]
    except (KeyError, TypeError):
        raise CheckpointError(f"{layout.checkpoint_dir(run, step) / layout.MANIFEST}: corrupt manifest") from None
    folder = root / f"circuits-v{VERSION}-{params.key()}"
    stem = f"{layout.step_dirname(step)}-{weights}"
    return folder / f"{stem}.circuits.csv", folder / f"{stem}.edges.csv"


def _read(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.exists() else None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None  # a damaged cache file is recomputed, never trusted


def discover_run(
    run: Path | str,
    steps: list[int] | None = None,
    params: CircuitParams | None = None,
    cache: Path | str | None = None,
    progress: bool = False,
    threads: int | None = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ICL and IWL circuits at every checkpoint (or ``steps``) of ``run``.

    Args:
        run: run folder.
        steps: checkpoint steps (default: all).
        params: what to compute (default :class:`CircuitParams`).
        cache: cache folder (default ``RUN/analysis``).
        progress: tqdm bar over the checkpoints not yet cached.
        threads: torch CPU threads while computing (restored after; None: leave as is). One
            is the fastest for these small models, above all on a busy machine
            (``benchmarks/RESULTS.md``, "Threads for circuit discovery").

    Returns:
        ``(circuits, edges)``: ``circuits`` has one row per step and split (``step, split,
        role, n_edges, n_total, faithfulness, completeness, effect, metric_*, acc_*, present,
        edges, jaccard_icl_iwl``); ``edges`` one row per step, split and edge (``step, split,
        method, edge, sender, receiver, layer, head_index, input, score, in_circuit``).
    """
    run = Path(run)
    params = params or CircuitParams()
    steps = resolve_steps(run, steps)
    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    root = Path(cache) if cache is not None else run / layout.ANALYSIS
    circuits, edges = [], []
    todo = []
    for step in steps:
        c_path, e_path = _paths(run, root, step, params)
        c, e = _read(c_path), _read(e_path)
        if c is None or e is None:
            todo.append((step, c_path, e_path))
        else:
            circuits.append(c)
            edges.append(e)
    before = torch.get_num_threads()
    try:
        if threads and todo:
            torch.set_num_threads(threads)
        for step, c_path, e_path in tqdm(todo, disable=not progress, desc="circuits", unit="ckpt"):
            c, e = _compute(run, source, step, params)
            write_cache(c_path, c)
            write_cache(e_path, e)
            circuits.append(c)
            edges.append(e)
    finally:
        torch.set_num_threads(before)
    c_all = pd.concat(circuits, ignore_index=True).sort_values(["step", "split"], kind="stable")
    e_all = pd.concat(edges, ignore_index=True).sort_values(["step", "split"], kind="stable")
    c_all["edges"] = c_all["edges"].fillna("").astype(str)
    return c_all.reset_index(drop=True), e_all.reset_index(drop=True)


def _compute(run: Path, source, step: int, params: CircuitParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    c, e = split_circuits(
        load_model(run, step),
        source,
        n=params.n,
        method=params.method,
        target=params.target,
        steps=params.steps,
        min_effect=params.min_effect,
    )
    c.insert(0, "step", step)
    e.insert(0, "step", step)
    return c, e


def edge_entry_steps(edges: pd.DataFrame) -> pd.DataFrame:
    """When each edge is in its split's circuit.

    Args:
        edges: the ``edges`` table of :func:`circuits_over_training`.

    Returns:
        One row per split and edge ever in a circuit: ``split, edge, enters`` (first step in
        the circuit), ``stays_from`` (first step of its final unbroken stay; NA if it is not
        in the circuit at the last step), ``n_steps_in`` and ``final_score``, sorted by entry.
    """
    rows = []
    for (split, edge), grp in edges.sort_values("step").groupby(["split", "edge"], sort=False):
        inside = grp["in_circuit"].astype(bool).to_numpy()
        if not inside.any():
            continue
        step = grp["step"].to_numpy()
        stays = pd.NA
        if inside[-1]:
            out = np.nonzero(~inside)[0]
            stays = int(step[out[-1] + 1]) if len(out) else int(step[0])
        rows.append(
            {
                "split": split,
                "edge": edge,
                "enters": int(step[np.argmax(inside)]),
                "stays_from": stays,
                "n_steps_in": int(inside.sum()),
                "final_score": float(grp["score"].iloc[-1]),
            }
        )
    out = pd.DataFrame(rows, columns=["split", "edge", "enters", "stays_from", "n_steps_in", "final_score"])
    out["stays_from"] = out["stays_from"].astype("Int64")
    return out.sort_values(["split", "enters", "edge"], kind="stable").reset_index(drop=True)


def circuit_overlay(
    circuits: pd.DataFrame, behaviour: dict[str, Transition] | None = None, train_loss: pd.Series | None = None
) -> pd.DataFrame:
    """The circuits' birth and death next to the behaviour's emergence, peak and transience.

    Args:
        circuits: the ``circuits`` table of :func:`circuits_over_training`.
        behaviour: e.g. ``probes.summarize(competition_table)`` (keys ``ICL``, ``IWL``).
        train_loss: training loss by step, for the transience test of the circuit's effect.

    Returns:
        One row per role: ``role, split, circuit_from`` (first step from which the circuit is
        present at every later checkpoint), ``effect_emerges, effect_peak_step,
        effect_transient`` (the detection run on the circuit's effect in logits, with a
        rise of at least ``MIN_EFFECT * 4``), ``final_n_edges, final_faithfulness,
        behaviour_emerges, behaviour_peak_step, behaviour_transient``.
    """
    rows = []
    for (role, split), grp in circuits.groupby(["role", "split"], sort=False):
        grp = grp.sort_values("step")
        present = grp["present"].astype(bool).to_numpy()
        step = grp["step"].to_numpy()
        absent = np.nonzero(~present)[0]
        start = None if not present[-1] else int(step[absent[-1] + 1] if len(absent) else step[0])
        eff = detect_transition(
            grp.set_index("step")["effect"], train_loss, name=f"{role} effect", min_rise=4 * MIN_EFFECT, min_drop=1.0
        )
        beh = (behaviour or {}).get(role)
        last = grp.iloc[-1]
        rows.append(
            {
                "role": role or split,
                "split": split,
                "circuit_from": start,
                "effect_emerges": eff.emergence_step,
                "effect_peak_step": eff.peak_step,
                "effect_transient": eff.transient,
                "final_n_edges": int(last["n_edges"]),
                "final_faithfulness": float(last["faithfulness"]),
                "behaviour_emerges": None if beh is None else beh.emergence_step,
                "behaviour_peak_step": None if beh is None else beh.peak_step,
                "behaviour_transient": None if beh is None else beh.transient,
            }
        )
    return pd.DataFrame(rows)
