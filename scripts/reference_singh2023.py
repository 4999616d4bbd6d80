"""Run the authors' code (``aadityasingh/icl-dynamics``) at our cpu settings of the singh2023 reproduction.

Their code is JAX (equinox, optax): it runs in its own virtual environment, never in the
project's. Their data generator reads exemplars from an HDF5 file ``[classes, exemplars, D]``;
we write one with Gaussian class means (our Gaussian family: ``mu_k ~ N(0, I/D)``, scaled by
``1 / sqrt(1 + eps^2)``), and their fresh per-exemplar Gaussian noise (``--noise_scale_train``,
std per coordinate) is set to ``eps / sqrt(D) / sqrt(1 + eps^2)``: the exemplars then have our
family's law. What differs, by their code's design: every class is its own label (no ``k mod
L``), their ICL evaluator relabels the two context classes of a *trained* class pair to labels
0 / 1 (``--pe_fs_relabel_scheme 01``, burstiness 4 in 8 pairs) where ours uses novel classes,
and their IWL evaluator has no copy of the query's class in context (``--pe_no_support 1``).

Usage (one run per setting; each writes its run folder under ``--work`` and a row into ``--out``)::

    python -m venv /tmp/icldyn-venv
    /tmp/icldyn-venv/bin/pip install "jax[cpu]==0.4.26" "jaxlib==0.4.26" equinox==0.11.4 optax==0.2.2 \\
        h5py nptyping "numpy<2" scipy tqdm matplotlib
    git clone <fetched mirror of aadityasingh/icl-dynamics> /tmp/icl-dynamics   # the .h5 file in it is not needed
    python scripts/reference_singh2023.py --repo /tmp/icl-dynamics --python /tmp/icldyn-venv/bin/python \\
        --setting layout2023 --steps 5000 --out icl_circuits/papers/singh2023/reference_code.csv

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
import math
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "layout2023": {"K": 1024, "D": 63, "eps": 0.1, "N": 8, "heads": 2, "mix": ["1.0"], "burst": ["4"], "wd": 0.0},
    "threshold": {"K": 144, "D": 8, "eps": 0.5, "N": 2, "heads": 8, "mix": ["1.0"], "burst": ["1"], "wd": 0.0},
    "l2": {"K": 1024, "D": 63, "eps": 0.1, "N": 8, "heads": 2, "mix": ["0.9", "0.1"], "burst": ["4", "0"], "wd": 1e-3},
}
EVAL_BS = 512


def write_data(path: Path, k: int, d: int, eps: float, seed: int, python: str) -> None:
    """The class means as their HDF5 layout ``[K, 1, D]`` (written by their venv's h5py)."""
    code = (
        "import h5py, numpy as np, sys\n"
        f"rng = np.random.default_rng({seed})\n"
        f"mu = rng.standard_normal(({k}, 1, {d})) / np.sqrt({d}) / np.sqrt(1 + {eps}**2)\n"
        f"with h5py.File({str(path)!r}, 'w') as f: f['means'] = mu.astype(np.float32)\n"
    )
    subprocess.run([python, "-c", code], check=True)


def run(repo: Path, python: str, setting: str, steps: int, seed: int, work: Path) -> dict:
    s = SETTINGS[setting]
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"gauss_{setting}_s{seed}.h5"
    write_data(data, s["K"], s["D"], s["eps"], seed, python)
    bs = 128
    n_eval = 20
    every = max(bs, steps * bs // n_eval)
    noise = s["eps"] / math.sqrt(s["D"]) / math.sqrt(1 + s["eps"] ** 2)
    name = f"{setting}_s{seed}_{steps}"
    args = [
        *("--run", name, "--raw_name", "--base_folder", str(work), "--suppress_output"),
        *("--data_type", "file", "--data_file", str(data), "--data_path_in_file", "means"),
        *("--class_split", str(s["K"]), "0", "0", "--exemplar_split", "1", "0", "0"),
        *("--noise_scale_train", repr(noise)),
        *("--depth", "2", "--d_model", "64", "--num_heads", str(s["heads"]), "--pos_embedding_type", "ape"),
        *("--init_seed", str(100 + seed), "--train_seed", str(200 + seed), "--eval_seed", str(300 + seed)),
        *("--mixing_coeffs", *s["mix"], "--pt_burstiness", *s["burst"], "--train_context_len", str(s["N"])),
        *("--train_iters", str(steps * bs), "--train_bs", str(bs), "--train_microbs", str(bs)),
        *("--eval_every", str(every), "--eval_bs", str(EVAL_BS)),
        *("--lr", "1e-3", "--optimizer", "adam", "--weight_decay", repr(s["wd"])),
        *("--pe_names", "icl", "iwl", "train_eval"),
        *("--pe_classes", "train", "train", "train", "--pe_exemplars", "train", "train", "train"),
        *("--pe_burstiness", str(max(1, int(s["burst"][0]))), "0", s["burst"][0]),
        *("--pe_fs_relabel_scheme", "01", "None", "None"),
        *("--pe_no_support", "0", "1", "0", "--pe_unique_rest", "0", "1", "0"),
        *("--pe_assign_query_label_random", "0", "0", "0"),
    ]
    start = time.time()
    proc = subprocess.run([python, "main.py", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"reference_singh2023: {setting} failed:\n{proc.stderr[-3000:]}")
    return {
        "setting": setting,
        "seed": seed,
        "steps": steps,
        "seconds": round(time.time() - start),
        **curves(work / name / "log.h5", python, bs),
    }


def curves(log: Path, python: str, bs: int) -> dict:
    """Peak and final ICL / IWL accuracy (mean over each evaluator's sequences) from their log.h5."""
    code = (
        "import h5py, json\n"
        f"f = h5py.File({str(log)!r}, 'r')\n"
        "it = [int(i) for i in f['eval_iter'][:]]\n"
        "out = {k: [float(v.mean()) for v in f[k + '/acc'][:]] for k in ('icl', 'iwl', 'train_eval')}\n"
        "print(json.dumps({'iter': it, **out}))\n"
    )
    import json

    got = json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)
    icl, iwl = got["icl"], got["iwl"]
    peak = max(range(len(icl)), key=icl.__getitem__)
    return {
        "icl_peak": round(icl[peak], 4),
        "icl_peak_step": got["iter"][peak] // bs,
        "icl_final": round(icl[-1], 4),
        "iwl_final": round(iwl[-1], 4),
        "train_final": round(got["train_eval"][-1], 4),
        "final_step": got["iter"][-1] // bs,
        "icl_curve": " ".join(f"{v:.3f}" for v in icl),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, required=True)
    p.add_argument("--python", required=True, help="the python of the reference code's own venv")
    p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/icldyn-runs"))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    row = run(a.repo, a.python, a.setting, a.steps, a.seed, a.work)
    new = not a.out.exists()
    with a.out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    print(row)


if __name__ == "__main__":
    main()
