"""Upper bounds on every size in a config, and the memory a run needs before it allocates.

Two checks keep a mistyped size from hanging or crashing a command:

* :func:`check_sizes` (called by ``RunConfig.validate``): every integer field has an upper
  bound, generous for real experiments (``SIZE_LIMITS``, else ``DEFAULT_MAX``), so that no
  config that validates can make a loop run for hours or a shape overflow.
* :func:`check_memory` (called by ``train`` and when a run is loaded for analysis): an
  estimate of the bytes the run needs (data tables, parameters with gradients and Adam
  state, training activations, evaluation sets) against the machine's memory; the error
  names the field that drives the estimate.

Both raise :class:`~icl_circuits.errors.ConfigError` with one line naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any

from icl_circuits.configbase import FrozenConfig, require
from icl_circuits.errors import ConfigError

if TYPE_CHECKING:
    from icl_circuits.config import RunConfig

#: Bound of integer fields without an entry in ``SIZE_LIMITS`` (seed has its own).
DEFAULT_MAX = 2**31 - 1

#: Upper bounds of size fields, by dotted name (``data.n_classes`` applies to any data family).
SIZE_LIMITS: dict[str, int] = {
    "data.n_classes": 2**24,
    "data.n_pairs": 2**12,
    "data.burst": 2**12,
    "data.d": 2**16,
    "data.n_high": 2**20,
    "data.n_low": 2**20,
    "data.n_exemplars": 2**12,
    "data.n_common": 2**20,
    "data.n_holdout": 2**20,
    "data.n_labels": 2**20,
    "data.shots": 2**12,
    "data.ways": 2**12,
    "data.n_relabel_labels": 2**12,
    "model.n_layers": 256,
    "model.n_heads": 1024,
    "model.d_model": 2**16,
    "model.d_head": 2**14,
    "model.d_mlp": 2**18,
    "model.readout_hidden": 2**18,
    "train.steps": 10**9,
    "train.batch_size": 2**20,
    "train.warmup_steps": 10**9,
    "train.n_checkpoints": 10**5,
    "train.checkpoint_every": 10**9,
    "train.eval_size": 2**20,
    "train.threads": 1024,
}
#: At most this many entries in a tuple-valued size field (``model.readout_hidden``).
MAX_TUPLE = 64
#: At most this many checkpoints in a run, however they are requested.
MAX_CHECKPOINTS = SIZE_LIMITS["train.n_checkpoints"]
#: Bytes per float (float32 everywhere).
FLOAT = 4
#: Bounds (inclusive) of the command line's number options, by argparse ``dest``: the flag and
#: its range. Analysis sequences are capped well below ``train.eval_size``'s bound because an
#: analysis holds every split's activations and attention patterns at once.
FLAG_LIMITS: dict[str, tuple[str, float, float]] = {
    "eval_size": ("--eval-size", 1, 2**16),
    "probe_eval_size": ("--probe-eval-size", 1, 2**16),
    "workers": ("--workers", 1, 1024),
    "max_retries": ("--max-retries", 0, 100),
    "gpus_per_run": ("--gpus-per-run", 0, 1024),
    "n": ("--n", 1, 4096),
    "ig_steps": ("--ig-steps", 1, 256),
    "llm_heads": ("--llm-heads", 1, 64),
    "checkpoints": ("--checkpoints", 1, 10_000),
}


def check_flags(values: dict[str, Any]) -> None:
    """Refuse a command-line number outside ``FLAG_LIMITS`` (None: not given), naming the flag."""
    for dest, (flag, lo, hi) in FLAG_LIMITS.items():
        value = values.get(dest)
        if value is None or isinstance(value, bool):
            continue
        if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
            raise ConfigError(f"{flag}: expected {lo:g}..{hi:g}, got {value!r}")


def check_sizes(cfg: FrozenConfig, prefix: str = "") -> None:
    """Refuse any integer field of ``cfg`` (recursively) above its upper bound."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if isinstance(value, FrozenConfig):
            check_sizes(value, f"{name}.")
        elif name == "seed":
            continue
        elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            require(len(value) <= MAX_TUPLE, name, f"at most {MAX_TUPLE} entries", value)
            bound = SIZE_LIMITS.get(name, DEFAULT_MAX)
            require(all(v <= bound for v in value), name, f"sizes of at most {bound}", value)
        elif isinstance(value, int) and not isinstance(value, bool):
            bound = SIZE_LIMITS.get(name, DEFAULT_MAX)
            require(value <= bound, name, f"at most {bound}", value)
    if prefix == "" and hasattr(cfg, "train"):
        tc = cfg.train
        if tc.checkpoint_every > 0:
            n = tc.steps // tc.checkpoint_every
            require(
                n <= MAX_CHECKPOINTS,
                "train.checkpoint_every",
                f"at least steps / {MAX_CHECKPOINTS} = {-(-tc.steps // MAX_CHECKPOINTS)} (at most "
                f"{MAX_CHECKPOINTS} checkpoints)",
                tc.checkpoint_every,
            )


# ---------------------------------------------------------------------------- memory
def _sizes(cfg: RunConfig) -> dict[str, Any]:
    """The numbers the estimate depends on, keyed by the config field that sets each."""
    data, model, tc = cfg.data, cfg.model, cfg.train
    terms = data.memory_terms()
    world, d_in, n_labels, pairs, splits = terms.world, terms.d_in, terms.n_labels, terms.pairs, terms.splits
    return {
        "world": world,
        d_in[0]: d_in[1],
        "n_labels": n_labels,
        pairs[0]: pairs[1],
        "model.d_model": model.d_model,
        "model.n_layers": model.n_layers,
        "model.n_heads": model.n_heads,
        "model.d_head": model.head_dim,
        "model.d_mlp": 0 if model.attn_only else (model.d_mlp or 4 * model.d_model),
        "model.readout_hidden": list(model.readout_hidden) if model.readout == "mlp" else [],
        "train.batch_size": tc.batch_size,
        "train.eval_size": tc.eval_size,
        "splits": splits,
        "_keys": {"d_in": d_in[0], "pairs": pairs[0]},
    }


def _need(s: dict[str, Any]) -> dict[str, float]:
    """Estimated bytes by part: world tables, parameters (x4 for grads and Adam), activations."""
    keys = s["_keys"]
    d_in, pairs = s[keys["d_in"]], s[keys["pairs"]]
    n_ctx = 2 * pairs + 1
    d, layers, heads, dh, mlp = (
        s[k] for k in ("model.d_model", "model.n_layers", "model.n_heads", "model.d_head", "model.d_mlp")
    )
    world = 1.0
    for v in s["world"].values():
        world *= v
    widths = [d, *s["model.readout_hidden"], s["n_labels"]]
    readout = sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    params = d_in * d + n_ctx * d + layers * (4 * d * heads * dh + 2 * d * mlp) + readout
    # Per sequence: inputs, then per layer the residual stream, q/k/v/z, scores and pattern
    # (kept for backward and for hooks) and the MLP hidden layer.
    per_seq = n_ctx * (d_in + layers * (6 * d + 4 * heads * dh + 2 * heads * n_ctx + 2 * mlp))
    eval_store = s["splits"] * s["train.eval_size"] * n_ctx * (d_in + 2)
    # Evaluation runs without gradients: one layer's activations are live at a time.
    eval_chunk = min(s["train.eval_size"], 4096) * per_seq / max(layers, 1)
    return {
        "data tables": FLOAT * world,
        "parameters, gradients and optimiser state": FLOAT * 4 * params,
        "training activations": FLOAT * 2 * s["train.batch_size"] * per_seq,
        "evaluation sets": FLOAT * (eval_store + eval_chunk),
    }


def estimate_bytes(cfg: RunConfig) -> dict[str, float]:
    """Estimated peak memory of training ``cfg``, in bytes, by part."""
    return _need(_sizes(cfg))


def _driving_field(cfg: RunConfig, s: dict[str, Any]) -> str:
    """The size field to lower: the one furthest above its default, weighted by its effect.

    Each field's score is ``log(value / default) * log2(growth of the estimate when the
    field doubles)``, so a batch size 10^4 times the default is named before a context
    length at its default, however quadratic the context's cost.
    """
    default = _sizes(type(cfg)(data=type(cfg.data)()))  # the defaults, in the same data family
    base = sum(_need(s).values())

    def growth(grown: dict[str, Any]) -> float:
        return math.log2(max(sum(_need(grown).values()) / base, 1.0))

    def above(key: str, value: Any, ref: Any) -> float:
        value, ref = (max(value, default=1), max(ref, default=1)) if isinstance(value, list) else (value, ref)
        return math.log(max(value, 1) / max(ref or 1, 1))

    scores: dict[str, float] = {}
    for key, value in s.items():
        if key.startswith("_") or key in ("n_labels", "splits"):
            continue
        if key == "world":
            for wkey, wvalue in value.items():
                grown = dict(s, world={**value, wkey: wvalue * 2})
                scores[wkey] = growth(grown) * above(wkey, wvalue, default["world"].get(wkey, wvalue))
            continue
        doubled = [2 * v for v in value] if isinstance(value, list) else 2 * value
        grown = dict(s, **{key: doubled})
        if key == "model.d_model" and not cfg.model.d_head:
            grown["model.d_head"] = 2 * s["model.d_head"]  # d_head follows d_model
        scores[key] = growth(grown) * above(key, value, default.get(key, value))
    return max(scores, key=scores.__getitem__)


def machine_bytes(device: Any = "cpu") -> int:
    """Total memory of ``device``: physical RAM for the CPU, the GPU's memory for CUDA."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**36


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(cfg: RunConfig, device: Any = "cpu", available: int | None = None) -> None:
    """Refuse a run whose estimated memory exceeds the device's, naming the field to lower."""
    s = _sizes(cfg)
    parts = _need(s)
    total = sum(parts.values())
    have = machine_bytes(device) if available is None else available
    if total <= have:
        return
    field = _driving_field(cfg, s)
    biggest = max(parts, key=parts.__getitem__)
    value: Any = cfg
    for part_name in field.split("."):
        value = getattr(value, part_name, None)
    require(
        False,
        field,
        f"a smaller value: this run needs about {_gib(total)} (mostly {biggest}), more than the "
        f"{_gib(have)} of {device}",
        value,
    )
