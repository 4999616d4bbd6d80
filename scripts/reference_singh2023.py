"""Run the authors' code (``aadityasingh/icl-dynamics``) at our cpu settings of the singh2023 reproduction.

Their code is JAX (equinox, optax): it runs in its own virtual environment, never in the
project's. Their data generator reads exemplars from an HDF5 file ``[classes, exemplars, D]``;
we write one with Gaussian class means (our Gaussian family: ``mu_k ~ N(0, I/D)``, scaled by
``1 / sqrt(1 + eps^2)``), and their fresh per-exemplar Gaussian noise (``--noise_scale_train``,
std per coordinate) is set to ``eps / sqrt(D) / sqrt(1 + eps^2)``: the exemplars then have our
family's law. What differs, by their code's design: every class is its own label (no ``k mod
L``). Four evaluators of 1000 sequences each: ``icl``, their ICL evaluator, relabels the two
context classes of a *trained* class pair to labels 0 / 1 (``--pe_fs_relabel_scheme 01``, the
training burstiness), so recalling a class's own label is wrong; ``icl_novel`` does the same on
``NOVEL`` held-out classes (``--class_split K 0 NOVEL``; the data file holds them after the K
trained ones), ICL with nothing to recall, as our ICL split; ``iwl`` has no copy of the query's
class in context (``--pe_no_support 1``); ``train_eval`` is the training layout.

Run time: their jitted step compiles once (``JAX_LOG_COMPILES=1``: one ``train_step``, one
``eval_step`` per eval batch shape); all 1000 evaluation sequences go in one batch (one shape),
evaluations are spaced ``--evals`` over the run, and XLA runs on one thread per process
(``XLA_ONE_THREAD``), so that three runs share two cores. A checkpoint every ``--ckpt-steps``
steps lets a rerun of the same command resume (their ``--load_from_ckpt``); ``--collect`` reads
a run folder's log, a partial run's too.

Usage (one run per setting; each writes its run folder under ``--work`` and tidy rows into
``--out``, replacing that run's earlier rows)::

    python -m venv /tmp/icldyn-venv
    /tmp/icldyn-venv/bin/pip install "jax[cpu]==0.4.26" "jaxlib==0.4.26" equinox==0.11.4 optax==0.2.2 \\
        h5py nptyping "numpy<2" scipy tqdm matplotlib
    git clone <fetched mirror of aadityasingh/icl-dynamics> /tmp/icl-dynamics   # the .h5 file in it is not needed
    python scripts/reference_singh2023.py --repo /tmp/icl-dynamics --python /tmp/icldyn-venv/bin/python \\
        --setting layout2023 --steps 5000 --out icl_circuits/papers/singh2023/reference_code.csv
    # the same for --setting l2 --steps 5000 and --setting threshold --steps 40000 --evals 40

Settings (ours: ``reproduce singh2023``'s cpu conditions):

* ``layout2023``: the 2023 paper's both-strategies layout, ``--pt_burstiness 4`` in 8 pairs
  (4 of the query's class, 4 of one distractor class), K 1024, D 63, eps 0.1 (ours: ``none``).
* ``threshold``: 2 pairs, one exemplar of the query's class and one distractor, K 144, D 8,
  eps 0.5 (ours: ``threshold``; the model has 8 heads per layer).
* ``l2``: Chan's mix (``--mixing_coeffs 0.9 0.1``: burstiness 4, or none of the query's class),
  K 1024, with their L2 penalty ``--weight_decay 1e-3`` (``weight_decay * sum ||p||_2``;
  ours: ``mixed-l2``).

Model: their ``SequenceClassifier``, 2 layers, d 64, attention-only (``mlp_ratio`` None), learned
absolute positions (``ape``), LayerNorm, causal; Adam 1e-3, batch 128 (ours: the demo model has
an MLP readout; theirs a linear unembedding).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "layout2023": {"K": 1024, "D": 63, "eps": 0.1, "N": 8, "heads": 2, "mix": ["1.0"], "burst": ["4"], "wd": 0.0},
    "threshold": {"K": 144, "D": 8, "eps": 0.5, "N": 2, "heads": 8, "mix": ["1.0"], "burst": ["1"], "wd": 0.0},
    "l2": {"K": 1024, "D": 63, "eps": 0.1, "N": 8, "heads": 2, "mix": ["0.9", "0.1"], "burst": ["4", "0"], "wd": 1e-3},
}
#: Held-out classes (``--class_split K 0 NOVEL``) for the novel-class ICL evaluator.
NOVEL = 64
EVAL_SEQS = 1000  # their default --eval_iters; one eval batch of all of them compiles one shape
#: Steps of training loss averaged into each evaluation's ``train_loss`` (one batch's loss is noisy).
LOSS_WINDOW = 50
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def write_data(path: Path, k: int, d: int, eps: float, seed: int, python: str) -> None:
    """The class means as their HDF5 layout ``[K, 1, D]`` (written by their venv's h5py)."""
    code = (
        "import h5py, numpy as np, sys\n"
        f"rng = np.random.default_rng({seed})\n"
        f"mu = rng.standard_normal(({k}, 1, {d})) / np.sqrt({d}) / np.sqrt(1 + {eps}**2)\n"
        f"with h5py.File({str(path)!r}, 'w') as f: f['means'] = mu.astype(np.float32)\n"
    )
    subprocess.run([python, "-c", code], check=True)


def run(
    repo: Path, python: str, setting: str, steps: int, seed: int, work: Path, evals: int, ckpt_steps: int
) -> float | None:
    s = SETTINGS[setting]
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"gauss_{setting}_s{seed}.h5"
    if not data.exists():
        write_data(data, s["K"] + NOVEL, s["D"], s["eps"], seed, python)
    bs = 128
    every = max(bs, steps * bs // evals)
    noise = s["eps"] / math.sqrt(s["D"]) / math.sqrt(1 + s["eps"] ** 2)
    name = f"{setting}_s{seed}_{steps}"
    icl_burst = str(max(1, int(s["burst"][0])))
    folder = work / name
    ckpts = sorted((folder / "checkpoints").glob("*.eqx")) if folder.exists() else []
    resume = ["--load_from_ckpt", str(ckpts[-1]), "--load_from_ckpt_cfg", str(folder / "config.json")] if ckpts else []
    args = [
        *("--run", name, "--raw_name", "--base_folder", str(work), "--suppress_output"),
        *("--data_type", "file", "--data_file", str(data), "--data_path_in_file", "means"),
        *("--class_split", str(s["K"]), "0", str(NOVEL), "--exemplar_split", "1", "0", "0"),
        *("--noise_scale_train", repr(noise)),
        *("--depth", "2", "--d_model", "64", "--num_heads", str(s["heads"]), "--pos_embedding_type", "ape"),
        *("--init_seed", str(100 + seed), "--train_seed", str(200 + seed), "--eval_seed", str(300 + seed)),
        *("--mixing_coeffs", *s["mix"], "--pt_burstiness", *s["burst"], "--train_context_len", str(s["N"])),
        *("--train_iters", str(steps * bs), "--train_bs", str(bs), "--train_microbs", str(bs)),
        *("--eval_every", str(every), "--eval_iters", str(EVAL_SEQS), "--eval_bs", str(EVAL_SEQS)),
        *("--ckpt_every", str(ckpt_steps * bs), *resume),
        *("--lr", "1e-3", "--optimizer", "adam", "--weight_decay", repr(s["wd"])),
        *("--pe_names", "icl", "iwl", "train_eval", "icl_novel"),
        *("--pe_classes", "train", "train", "train", "test", "--pe_exemplars", "train", "train", "train", "train"),
        *("--pe_burstiness", icl_burst, "0", s["burst"][0], icl_burst),
        *("--pe_fs_relabel_scheme", "01", "None", "None", "01"),
        *("--pe_no_support", "0", "1", "0", "0", "--pe_unique_rest", "0", "1", "0", "0"),
        *("--pe_assign_query_label_random", "0", "0", "0", "0"),
    ]
    if ckpts and int(ckpts[-1].stem) >= steps * bs:  # finished: their loop would not run at all
        return None
    start = time.time()
    env = {**os.environ, "XLA_FLAGS": XLA_ONE_THREAD}
    proc = subprocess.run([python, "main.py", *args], cwd=repo, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"reference_singh2023: {setting} failed:\n{proc.stderr[-3000:]}")
    return time.time() - start


def rows(folder: Path, python: str, setting: str, seed: int, steps: int, seconds: float | None) -> list[dict]:
    """Tidy ``setting, seed, steps, step, metric, value, seconds`` rows from a run's ``log.h5``.

    Metrics: ``icl`` / ``iwl`` / ``train_eval`` / ``icl_novel`` (accuracy of each evaluator, mean
    over its 1000 sequences) at every evaluation, ``icl_in_context`` / ``icl_novel_in_context``
    (their ``in_context_acc``: the argmax over the labels in the context only, 0.5 without
    matching), and ``train_loss`` (mean of the per-step training loss over the
    ``LOSS_WINDOW`` steps up to it). A resumed run evaluates its resume step again: the last
    evaluation of each step is kept. ``seconds``: the wall time of the (last) invocation.
    """
    code = (
        "import h5py, json\n"
        f"f = h5py.File({str(folder / 'log.h5')!r}, 'r')\n"
        "out = {k: [float(v.mean()) for v in f[k + '/acc'][:]] for k in ('icl', 'iwl', 'train_eval', 'icl_novel')}\n"
        "out.update({k + '_in_context': [float(v.mean()) for v in f[k + '/in_context_acc'][:]] for k in ('icl', 'icl_novel')})\n"
        "out['iter'] = [int(i) for i in f['eval_iter'][:]]\n"
        "out['train_iter'] = [int(i) for i in f['train_iter'][:]]\n"
        "out['train_loss'] = [float(v) for v in f['train_loss'][:]]\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)
    bs = 128
    loss = dict(zip((i // bs for i in got["train_iter"]), got["train_loss"], strict=True))
    last = {it // bs: j for j, it in enumerate(got["iter"])}
    out = []
    for step in sorted(last):
        j = last[step]
        window = [loss[t] for t in range(max(1, step - LOSS_WINDOW + 1), step + 1) if t in loss]
        vals = {
            k: got[k][j] for k in ("icl", "iwl", "train_eval", "icl_novel", "icl_in_context", "icl_novel_in_context")
        }
        if window:
            vals["train_loss"] = sum(window) / len(window)
        for metric, value in vals.items():
            out.append(
                {
                    "setting": setting,
                    "seed": seed,
                    "steps": steps,
                    "step": step,
                    "metric": metric,
                    "value": round(value, 5),
                    "seconds": None if seconds is None else round(seconds),
                }
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--python", required=True, help="the python of the reference code's own venv")
    p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/icldyn-runs"))
    p.add_argument("--evals", type=int, default=20, help="evaluations over the run (each: 3 x 1000 sequences)")
    p.add_argument("--ckpt-steps", type=int, default=1000, help="checkpoint interval in steps (a rerun resumes)")
    p.add_argument(
        "--collect",
        action="store_true",
        help="only read the run folder's log (a partial run's too); keeps the seconds --out has for it",
    )
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    key = (a.setting, a.seed, a.steps)
    seconds = None
    if a.out.exists():  # the wall time an earlier invocation measured for this run, if any
        with a.out.open(newline="") as f:
            this = [r for r in csv.DictReader(f) if (r["setting"], int(r["seed"]), int(r["steps"])) == key]
        seconds = float(this[0]["seconds"]) if this and this[0]["seconds"] else None
    if not a.collect:
        took = run(a.repo, a.python, a.setting, a.steps, a.seed, a.work, a.evals, a.ckpt_steps)
        seconds = seconds if took is None else took
    got = rows(a.work / f"{a.setting}_s{a.seed}_{a.steps}", a.python, a.setting, a.seed, a.steps, seconds)
    keep = []
    if a.out.exists():  # replace this run's earlier rows
        with a.out.open(newline="") as f:
            keep = [r for r in csv.DictReader(f) if (r["setting"], int(r["seed"]), int(r["steps"])) != key]
    with a.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(got[0]))
        w.writeheader()
        w.writerows(keep + got)
    icl = [r for r in got if r["metric"] == "icl"]
    print(a.setting, "step", icl[-1]["step"], "ICL", " ".join(f"{r['value']:.3f}" for r in icl))


if __name__ == "__main__":
    main()
