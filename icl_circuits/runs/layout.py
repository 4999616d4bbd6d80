"""The run-folder contract: every file name lives here and nowhere else.

::

    RUN/
      config.json            the RunConfig (human-readable JSON, written once)
      provenance.json        package versions, git commit, seed, device, start time
      metrics.jsonl          one row per (step, split, metric): {"step", "split", "metric", "value"}
      .lock                  held (flock) by the one process training this run
      checkpoints/
        step_000000/         one folder per checkpoint, renamed into place when complete
          model.safetensors  weights (native parameter names)
          optim.safetensors  optimiser tensors
          state.json         step, optimiser hyper-parameters, metrics of this checkpoint;
                             "stopped" when train.stop_above ended the run here (early stop)
          rng.safetensors    torch RNG state
          MANIFEST.json      sha256 and size of every file above (written last)
      analysis/              probe results, cached per checkpoint and analysis version
      wandb/, tensorboard/   only with train.logger = wandb | tensorboard (same metrics as metrics.jsonl)

The folders built on run folders name their files here too: a sweep folder (``SWEEP_*``,
:mod:`icl_circuits.sweeps.sweep`), a reproduction's output folder (``REPRO_*``,
:mod:`icl_circuits.reproduce.common`) and an analysis report (``REPORT_*``, :mod:`probes.report`).
Temporary files and folders start with :data:`icl_circuits.fileio.TMP_PREFIX`.
"""

from __future__ import annotations

from pathlib import Path

#: Bump when the run-folder layout changes incompatibly. 2: data fields renamed to one name
#: per concept (``K`` -> ``n_classes`` ...; ``icl_circuits.data.family``).
FORMAT_VERSION = 2
#: Formats the current code reads (an older config.json is migrated on load).
READABLE_FORMATS = (1, 2)

CONFIG = "config.json"
PROVENANCE = "provenance.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"
CHECKPOINTS = "checkpoints"
ANALYSIS = "analysis"

MODEL = "model.safetensors"
OPTIM = "optim.safetensors"
STATE = "state.json"
RNG = "rng.safetensors"
MANIFEST = "MANIFEST.json"

STEP_PREFIX = "step_"
STEP_DIGITS = 6

# ---------------------------------------------------------------------------- sweep folder
SWEEP_SPEC = "sweep.json"
SWEEP_INDEX = "index.csv"
SWEEP_RESULTS = "results.csv"
SWEEP_RUNS = "runs"
SWEEP_PHASE = "phase_{split}.png"

# ---------------------------------------------------------------------------- reproduction output
REPRO_SUMMARY = "summary.json"
REPRO_CLAIMS = "claims.md"
REPRO_SWEEPS = "sweeps"

# ---------------------------------------------------------------------------- analysis report (RUN/analysis/report-*)
REPORT_PREFIX = "report-"
REPORT_TABLE = "probes.csv"
REPORT_COMPETITION = "competition.csv"
REPORT_SUMMARY = "summary.txt"
REPORT_FIG_COMPETITION = "competition.png"
REPORT_FIG_ABLATION = "ablations.png"  # probe "ablations"
REPORT_FIG_HEADS = "heads_{metric}.png"  # probe "head_scores"
REPORT_CIRCUITS = "circuits.csv"  # probe "circuits" (discovered circuits per checkpoint)
REPORT_CIRCUIT_EDGES = "circuit_edges.csv"
REPORT_CIRCUIT_ENTRY = "circuit_entry.csv"
REPORT_CIRCUIT_OVERLAY = "circuit_overlay.csv"
REPORT_FIG_CIRCUIT = "circuit_{role}.png"
REPORT_FIG_CIRCUIT_EDGES = "circuit_edges_{role}.png"

# ---------------------------------------------------------------------------- `icl-circuits circuits` (RUN/analysis/circuits-*)
STUDY_CIRCUITS = "circuits.csv"
STUDY_EDGES = "circuit_edges.csv"
STUDY_FIG_CIRCUIT = "circuit.png"
STUDY_FIG_EDGES = "circuit_edges.png"

# ---------------------------------------------------------------------------- language-model fine-tuning run
LLM_HEADS = "heads.csv"
REPORT_LLM_ABLATION = "ablations.csv"  # analyze's report of a fine-tuning run: the top-k heads ablated


def seed_dirname(seed: int) -> str:
    """``seed=3``: one replicate's run folder under ``train --seeds``'s folder (a sweep's seed axis name)."""
    return f"seed={seed}"


def step_dirname(step: int) -> str:
    """``step_000123``: zero-padded so that names sort by step."""
    return f"{STEP_PREFIX}{step:0{STEP_DIGITS}d}"


def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / CHECKPOINTS / step_dirname(step)


def parse_step(name: str) -> int | None:
    """The step of a checkpoint folder name, or None for anything else."""
    if not name.startswith(STEP_PREFIX):
        return None
    digits = name[len(STEP_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def is_plain_name(name: object) -> bool:
    """A file name with no path in it: not empty, no separator, no leading dot, no NUL."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
    )
