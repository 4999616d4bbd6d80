"""The LLC (:mod:`probes.llc`) at every checkpoint of a run: whole, data-refined, per component.

:func:`llc_over_training` returns a tidy table with the columns of the probe table
(``step, condition, split, metric, layer, head_index, value``). ``condition`` names what was
sampled: ``clean`` the whole model, ``L{l}H{h}`` one head (``layer``, ``head_index`` set),
``L{l}.mlp`` one MLP, ``readout`` the readout, ``ICL circuit`` the heads of the run's ICL
circuit together and ``IWL circuit`` its IWL path (every MLP and the readout). ``split``
names the data the loss is measured on: ``train`` (fresh draws of the training
distribution) or an evaluation split (the data-refined LLC). The metrics: ``llc``,
``llc_std`` (across chains), ``llc_drift`` and ``llc_healthy`` (:func:`probes.llc.diagnose`)
and ``llc_init_loss``.

The parts: ``model`` (whole model on ``train``), ``data`` (whole model on the ICL and the
IWL split) and ``components`` (every head, MLP, the readout and the two circuits, on
``train``). Each part's rows of each checkpoint are cached in ``RUN/analysis/llc-{key}/``
(keyed by the sampler settings, the part and the circuit), so a stopped run resumes where
it stopped and a part computed once serves every later call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from icl_circuits.data import build_source
from icl_circuits.errors import CheckpointError, ICLError
from icl_circuits.metrics import eval_sets
from icl_circuits.runs import layout
from icl_circuits.runs.read import load_config, load_native
from icl_circuits.runs.store import read_json
from probes.circuits import FoundCircuit
from probes.llc import LLCConfig, component_masks, diagnose, estimate_llc, union
from probes.over_training import COLUMNS, resolve_circuit, resolve_steps, write_cache

#: Bump when what a cached table holds changes.
LLC_VERSION = 1
PARTS = ("model", "data", "components")
METRICS = ("llc", "llc_std", "llc_drift", "llc_healthy", "llc_init_loss")
TRAIN = "train"
#: Steps of the training distribution's stream used as the LLC's data: far beyond any run's
#: steps, so they are fresh draws of the distribution the model was trained on.
DATA_STEP = 10**9
FIG = "llc.png"
DEFAULT = LLCConfig()


def sampling_data(source, split: str, n: int, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, target)`` of ``n`` sequences: ``train`` (fresh training draws) or an evaluation split."""
    if split != TRAIN:
        batch = source.eval_batch(split, n)
        return batch.tokens(), batch.target
    batches = [source.train_batch(DATA_STEP + i, batch_size) for i in range(-(-n // batch_size))]
    tokens = torch.cat([b.tokens() for b in batches])[:n]
    target = torch.cat([b.target for b in batches])[:n]
    return tokens, target


def _rows(est, condition: str, split: str, layer=pd.NA, head=pd.NA) -> list[dict]:
    health = diagnose(est)
    values = {
        "llc": est.llc,
        "llc_std": est.std,
        "llc_drift": health["drift"],
        "llc_healthy": float(health["healthy"]),
        "llc_init_loss": est.init_loss,
    }
    return [
        {"condition": condition, "split": split, "metric": m, "layer": layer, "head_index": head, "value": v}
        for m, v in values.items()
    ]


def llc_checkpoint(
    model: torch.nn.Module,
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    parts: Sequence[str],
    config: LLCConfig,
    circuit: FoundCircuit | None = None,
) -> pd.DataFrame:
    """The LLC rows of one native model (columns of ``COLUMNS`` but ``step``).

    Args:
        model: a native model (:func:`icl_circuits.runs.read.load_native`).
        data: ``{split: (tokens, target)}``: ``train`` and, for the ``data`` part, the ICL
            and IWL splits (every split in ``data`` but ``train`` is measured).
        parts: some of ``PARTS``.
        config: the sampler settings.
        circuit: the ICL circuit, for the ``components`` part.
    """
    rows: list[dict] = []
    if "model" in parts:
        rows += _rows(estimate_llc(model, data[TRAIN], config), "clean", TRAIN)
    if "data" in parts:
        for split, tensors in data.items():
            if split != TRAIN:
                rows += _rows(estimate_llc(model, tensors, config), "clean", split)
    if "components" in parts:
        masks = component_masks(model)
        for name, mask in masks.items():
            layer, head = pd.NA, pd.NA
            if "H" in name and name.startswith("L"):
                layer, head = (int(x) for x in name[1:].split("H"))
            elif name.endswith(".mlp"):
                layer = int(name[1:].split(".")[0])
            rows += _rows(estimate_llc(model, data[TRAIN], config, mask=mask), name, TRAIN, layer, head)
        if circuit is not None and circuit.heads:
            icl = union([masks[f"L{layer}H{head}"] for layer, head in circuit.heads])
            rows += _rows(estimate_llc(model, data[TRAIN], config, mask=icl), "ICL circuit", TRAIN)
        iwl = [m for name, m in masks.items() if name.endswith(".mlp") or name == "readout"]
        if iwl:
            rows += _rows(estimate_llc(model, data[TRAIN], config, mask=union(iwl)), "IWL circuit", TRAIN)
    return pd.DataFrame(rows)


def cache_key(config: LLCConfig, part: str, circuit: FoundCircuit | None) -> str:
    """The cache folder's key of one part: the sampler settings, the circuit and ``LLC_VERSION``."""
    blob = {
        "version": LLC_VERSION,
        "config": dataclasses.asdict(config),
        "part": part,
        "circuit": [list(map(list, circuit.prev_token_heads)), list(map(list, circuit.induction_heads))]
        if circuit is not None and part == "components"
        else None,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _cache_file(run: Path, root: Path, step: int, key: str) -> Path:
    manifest = read_json(layout.checkpoint_dir(run, step) / layout.MANIFEST)
    try:
        weights = manifest["files"][layout.MODEL]["sha256"][:12]
    except (KeyError, TypeError):
        raise CheckpointError(f"{layout.checkpoint_dir(run, step) / layout.MANIFEST}: corrupt manifest") from None
    return root / f"llc-{key}" / f"{layout.step_dirname(step)}-{weights}.csv"


def _read(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    return df if list(df.columns) == COLUMNS else None


def llc_over_training(
    run: Path | str,
    steps: Sequence[int] | None = None,
    parts: Sequence[str] = ("model", "data"),
    config: LLCConfig = DEFAULT,
    circuit: FoundCircuit | None = None,
    cache: Path | str | None = None,
    progress: bool = True,
    compute: bool = True,
) -> pd.DataFrame:
    """The LLC rows of every checkpoint (or ``steps``) of ``run``, cached per checkpoint.

    Args:
        run: run folder.
        steps: checkpoint steps (default: all).
        parts: some of ``PARTS``.
        config: the sampler settings (:func:`probes.llc.calibrate` helps choose them).
        circuit: the ICL circuit for ``components`` (default: found at the last checkpoint).
        cache: the cache's folder (default ``RUN/analysis``).
        progress: a progress bar over the checkpoints not yet cached.
        compute: False: return only what is cached (possibly no rows).

    Returns:
        Tidy DataFrame (``COLUMNS``), steps ascending.
    """
    run = Path(run)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ICLError(f"llc parts: expected some of {list(PARTS)}, got {list(parts)}")
    cfg = load_config(run)
    steps = resolve_steps(run, steps)
    source = build_source(cfg.data, cfg.seed, "cpu")
    if "components" in parts:
        circuit = resolve_circuit(run, source, eval_sets(source, 512), circuit)
    root = Path(cache) if cache is not None else run / layout.ANALYSIS
    frames: list[pd.DataFrame] = []
    data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in [p for p in PARTS if p in parts]:
        key = cache_key(config, part, circuit)
        todo = []
        for step in steps:
            path = _cache_file(run, root, step, key)
            df = _read(path)
            if df is not None:
                frames.append(df)
            elif compute:
                todo.append((step, path))
        if not todo:
            continue
        splits = [TRAIN] + ([source.icl_split, source.iwl_split] if part == "data" else [])
        for split in splits:
            if split not in data:
                data[split] = sampling_data(source, split, config.n_data)
        wanted = {s: data[s] for s in splits}
        desc = f"llc {part} ({len(steps) - len(todo)} cached)"
        for step, path in tqdm(todo, disable=not progress, desc=desc, unit="ckpt", smoothing=0):
            df = llc_checkpoint(load_native(run, step), wanted, [part], config, circuit).assign(step=step)[COLUMNS]
            write_cache(path, df)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True).sort_values("step", kind="stable").reset_index(drop=True)
    out["layer"] = out["layer"].astype("Int64")
    out["head_index"] = out["head_index"].astype("Int64")
    return out
