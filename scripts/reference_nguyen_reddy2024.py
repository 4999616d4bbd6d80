"""Run the authors' own code for Nguyen & Reddy 2024 (``anhhuyalex/icl-kinetics``) at our cpu grid.

A side-by-side check of ``reproduce nguyen-reddy2024`` against the reference implementation at
the same settings: their model (``attention.CausalTransformer``: input LayerNorm, one causal
head ``Linear(65, 195, bias=False)`` at scale 1, MLP 512-512-1 on ``x_q + sa_q``), their data
(``SequenceGMM`` of ``main_icl.py``: K Gaussian means ``N(0, I/63)`` drawn with seed 10, bursty
contexts, the ICL split on new means drawn with seed 100, the IWL split without replacement),
their label table and token (``LoadProjsPermutations``, ``get_random_projs_and_permuted_outputs``:
``x ⊕ onehot(label)``, the query's label zeroed), their loss (``-logsigmoid(out * (2y - 1))``),
their optimiser groups (SGD, no momentum, weight decay 1e-10) and their evaluation
(``validate_gradient_descent``: accuracy = sign agreement). Nothing of theirs is copied here:
``attention`` and ``utils`` are imported from a checkout you name, and the class and function
definitions of ``main_icl.py`` (a script that trains on import) are read from that checkout's
file and executed, without its top-level code.

What is ours (the settings of our cpu grid, ``icl_circuits.papers.nguyen_reddy2024.reproduce``):
N (``len_context``, counting the query) 4, 8, 12, 16, 32; K = 50·N × {¼, ½, 1, 2, 4} (even);
seeds 0, 1; lr 0.1; batch 64; ``max(1500, 110 N)`` steps; evaluation on 256 sequences per
split every 100 steps and at the end; the early stop (ICL accuracy > 0.99) checked at each
evaluation, the reference's rule at our evaluation interval. The seed seeds the
initialisation (as their ``--seed``) and then, plus 1,000,003, the data stream (theirs:
``time.time()``). Two things the checkout needs: ``LoadProjsPermutations`` reads
``args.is_all_tasks_seen``, which their parser does not define (set to ``"False"`` here: the
input projection it draws is not used by the model), and ``utils`` imports ``torchvision``
(stubbed: nothing of it is used).

Setup (CPU; not part of the project's environment)::

    git clone https://github.com/anhhuyalex/icl-kinetics /tmp/icl-kinetics
    python3 -m venv /tmp/nrref && /tmp/nrref/bin/pip install torch numpy

Usage::

    /tmp/nrref/bin/python scripts/reference_nguyen_reddy2024.py --icl-kinetics /tmp/icl-kinetics \\
        --Ns 32 16 12 8 4 --seeds 0 1 --out ref_nr.csv
    python scripts/reference_nguyen_reddy2024.py --summary ref_nr.csv [more.csv ...] --runs-out runs.csv

``icl_circuits/papers/nguyen_reddy2024/reference_code.csv`` holds such ``--runs-out`` rows
(each run's final accuracies); ``reference.py`` there fits K* per N and the exponent from
them with the same code as ours, and the reproduction's claims compare the two. ``--out`` is
appended to run by run, and runs already in it are skipped, so the script resumes.
"""

from __future__ import annotations

import argparse
import ast
import csv
import sys
import time
import types
from pathlib import Path

D = 63
EVAL_SEQUENCES = 256
EVERY = 100
FIELDS = ["N", "K", "seed", "steps", "step", "icl_acc", "iwl_acc", "train_loss", "stopped", "seconds"]
#: The definitions taken from main_icl.py (it trains at import, so it is not imported whole).
DEFINITIONS = (
    "SequenceGMM",
    "LoadProjsPermutations",
    "get_random_projs_and_permuted_outputs",
    "validate_gradient_descent",
)


def load_reference(ref: Path, args: types.SimpleNamespace) -> dict:
    """Their modules and ``main_icl.py``'s definitions, bound to ``args`` (its global)."""
    if str(ref) not in sys.path:
        sys.path.insert(0, str(ref))
    for name in ("torchvision", "torchvision.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    import attention
    import numpy as np
    import torch
    import torch.nn.functional as F
    import utils

    tree = ast.parse((ref / "main_icl.py").read_text())
    keep = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in DEFINITIONS]
    found = {n.name for n in keep}
    if found != set(DEFINITIONS):
        raise SystemExit(f"{ref / 'main_icl.py'}: missing definitions {sorted(set(DEFINITIONS) - found)}")
    space = {"torch": torch, "np": np, "F": F, "nn": torch.nn, "utils": utils, "args": args}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(ref / "main_icl.py"), "exec"), space)  # noqa: S102
    return space | {"attention": attention}


def run(ref: Path, N: int, K: int, seed: int, steps: int, lr: float, batch: int) -> list[dict]:
    """One reference run; a row at every evaluation (every ``EVERY`` steps and the last)."""
    import random

    import numpy as np
    import torch

    torch.set_num_threads(1)
    args = types.SimpleNamespace(
        L=2, K=K, len_context=N, is_all_tasks_seen="False", is_equalize_classes="False", lr=lr, weight_decay=1e-10
    )
    ns = load_reference(ref, args)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = ns["attention"].CausalTransformer(
        x_dim=D + 2, model_size=64, num_classes=2, mlp_dim=512, is_layer_norm="True"
    )
    groups = [
        {"params": model.to_embedding.parameters(), "lr": lr, "weight_decay": args.weight_decay},
        {"params": model.qkv.parameters(), "lr": lr, "weight_decay": args.weight_decay},
        {"params": model.mlp.parameters(), "lr": lr, "weight_decay": 1e-10},
    ]
    optimizer = torch.optim.SGD(groups, lr=lr, weight_decay=args.weight_decay)
    criterion = torch.nn.LogSigmoid()
    data_seed = seed + 1_000_003
    random.seed(data_seed)
    np.random.seed(data_seed)
    torch.manual_seed(data_seed)
    gmm = ns["SequenceGMM"]
    train_ds = gmm(
        K=K,
        D=D,
        burstiness=1,
        epsilon=0.0,
        len_context=N,
        is_full_length=True,
        len_data=steps * batch,
        seed=10,
        prob_mix_up=-1.0,
    )
    icl_ds = gmm(
        K=min(20000, K),
        D=D,
        burstiness=1,
        epsilon=0.0,
        len_context=N,
        is_full_length=True,
        len_data=EVAL_SEQUENCES,
        seed=100,
        prob_mix_up=-1.0,
    )
    iwl_ds = gmm(
        K=K,
        D=D,
        burstiness=-1,
        epsilon=0.0,
        len_context=N,
        is_full_length=True,
        len_data=EVAL_SEQUENCES,
        seed=10,
        prob_mix_up=-1.0,
    )
    iwl_ds.mu_K = train_ds.mu_K
    loader = torch.utils.data.DataLoader
    train_loader = loader(train_ds, batch_size=batch, shuffle=True)
    icl_loader = loader(icl_ds, batch_size=batch, shuffle=True)
    iwl_loader = loader(iwl_ds, batch_size=batch, shuffle=True)
    perms = ns["LoadProjsPermutations"](1, D=D, len_data=60000)
    perm_loader = loader(perms, batch_size=batch, shuffle=True, num_workers=0)
    to_seq, validate = ns["get_random_projs_and_permuted_outputs"], ns["validate_gradient_descent"]
    rows, losses, t0 = [], [], time.time()

    def evaluate(step: int, stopped: bool = False) -> float:
        _, icl = validate(0, icl_loader, perm_loader, model, args, criterion, "cpu")[:2]
        _, iwl = validate(0, iwl_loader, perm_loader, model, args, criterion, "cpu")[:2]
        icl_acc, iwl_acc = icl[N].avg, iwl[N].avg
        rows.append(
            {
                "N": N,
                "K": K,
                "seed": seed,
                "steps": steps,
                "step": step,
                "icl_acc": icl_acc,
                "iwl_acc": iwl_acc,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "stopped": int(stopped),
                "seconds": round(time.time() - t0, 1),
            }
        )
        model.train()
        return icl_acc

    evaluate(0)
    step = 0
    for images, target in train_loader:
        model.train()
        optimizer.zero_grad()
        input_proj, output_permutation = next(iter(perm_loader))
        with torch.no_grad():
            seq, seq_target = to_seq(images, target, input_proj, output_permutation, args, "cpu")
        output, _, _ = model(seq)
        loss = -criterion(output.squeeze(1) * (seq_target * 2 - 1)).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % EVERY == 0 or step == steps:
            acc = evaluate(step)
            losses = []
            if acc > 0.99:  # the reference's early stop, at each evaluation
                rows[-1]["stopped"] = 1
                break
        if step >= steps:
            break
    return rows


def grid(Ns: list[int], k_center: int, factors: list[float]) -> list[tuple[int, int]]:
    """(N, K) of our cpu grid: K = k_center·N·f, even."""
    return [(N, 2 * int(round(k_center * N * f / 2))) for N in Ns for f in factors]


def summary(paths: list[Path], out: Path) -> None:
    """Each finished run's last row (its final accuracies, at the stop or the last step) into ``out``."""
    import pandas as pd

    rows = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    last = rows.sort_values("step").groupby(["N", "K", "seed"], as_index=False).tail(1)
    last = last[(last["stopped"] == 1) | (last["step"] == last["steps"])]
    last = last.rename(columns={"step": "end_step", "iwl_acc": "iw_acc"})
    cols = ["N", "K", "seed", "steps", "end_step", "stopped", "icl_acc", "iw_acc"]
    last[cols].sort_values(["N", "K", "seed"]).to_csv(out, index=False, float_format="%.4f")
    print(f"{len(last)} runs -> {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--icl-kinetics", type=Path, help="a checkout of anhhuyalex/icl-kinetics")
    p.add_argument("--Ns", type=int, nargs="+", default=[32, 16, 12, 8, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--k-center", type=int, default=50)
    p.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path)
    p.add_argument("--summary", type=Path, nargs="+", help="--out files to summarise (no training)")
    p.add_argument("--runs-out", type=Path, help="where --summary writes each run's final row")
    a = p.parse_args()
    if a.summary:
        summary(a.summary, a.runs_out or a.summary[0].with_name("reference_runs.csv"))
        return
    if a.icl_kinetics is None or a.out is None:
        p.error("--icl-kinetics and --out are needed to train")
    done = set()
    if a.out.exists():
        with a.out.open() as f:
            done = {
                (int(r["N"]), int(r["K"]), int(r["seed"]))
                for r in csv.DictReader(f)
                if r["stopped"] == "1" or int(r["step"]) == int(r["steps"])
            }
    for N, K in grid(a.Ns, a.k_center, a.factors):
        for seed in a.seeds:
            if (N, K, seed) in done:
                continue
            steps = max(1500, 110 * N)
            rows = run(a.icl_kinetics, N, K, seed, steps, a.lr, a.batch)
            new = not a.out.exists()
            with a.out.open("a", newline="") as f:
                w = csv.DictWriter(f, FIELDS)
                if new:
                    w.writeheader()
                w.writerows(rows)
            last = rows[-1]
            print(
                f"N={N} K={K} seed={seed}: ICL {last['icl_acc']:.3f} IWL {last['iwl_acc']:.3f} at {last['step']} ({last['seconds']} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
