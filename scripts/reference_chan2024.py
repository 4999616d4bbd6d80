"""Run the authors' own code for Chan et al. 2024 (``chanb/simple_icl``, branch ``iclr_2025``).

A side-by-side check of our ``chan2024-stylized`` reproduction against the reference
implementation at the same settings: the reference's transformer
(``src.models.InContextSupervisedTransformer``: 2 blocks, 1 head, d 64, L = 1), its optimiser
(``src.optimizer.get_optimizer``: Adam, constant 3e-4, the frozen input tokenizer masked), its
loss (softmax cross-entropy on the query) and its data generator (``src.datasets.synthetic``:
5 + 5 classes, p_high 0.9, 64 dims, N training sequences seeded by their index), trained with a
plain loop of batch 32. Nothing of theirs is copied here: the script imports their modules from a
checkout you name. Their TensorFlow data pipeline (``src.dataset``) is not used (batches are
stacked from their generator directly), so TensorFlow is not needed.

Evaluation follows ``experiments/evaluation.py``: each split is the reference's generator with
``train=False`` and ``dataset_size = 5 x 3000`` (so, as in the reference, a few evaluation
sequences are training ones when N is large), ``conditioning`` for the query group,
``p_relevant_context`` 1 / 0 for the ``-rel`` / ``-irr`` contexts and ``flip_label`` for OOBD.
Split names are ours (``IBD``, ``IBD-irr-high``, ``OOBD-low`` ...). The training loss at each
checkpoint is the loss over the whole training set (N <= 4096) or over 4,096 draws from it (the
reference's "pretraining" evaluation); ``--summary`` reads each run at its lowest-training-loss
checkpoint, latest of ties, as ``plot_utils/plot_noisy_inputs.ipynb`` does.

Setup (CPU, about 1 GB; not part of the project's environment)::

    git clone -b iclr_2025 https://github.com/chanb/simple_icl /tmp/simple_icl
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install "jax==0.4.30" "jaxlib==0.4.30" "flax==0.8.5" "numpy==1.26.4" \\
        chex optax dill gymnasium prefetch_generator "pandas==2.2.3"

Usage::

    /tmp/refenv/bin/python scripts/reference_chan2024.py --simple-icl /tmp/simple_icl \\
        --n 64 256 1024 --seeds 0 1 2 --steps 10000 --every 1000 --out ref.csv
    python scripts/reference_chan2024.py --summary ref.csv --best-out best.csv

``icl_circuits/papers/chan2024/reference_code.csv`` holds such ``--best-out`` rows (see
``docs/reproductions/chan2024_appendix.md``); the reproduction's claims compare our transformer with them.

One run of 10,000 steps takes about 1.5 minutes on one core.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

#: Our split name -> (p_relevant_context, conditioning, flip_label); None = the training p_relevant.
SPLITS = {
    "IBD": (None, "none", 0),
    "IBD-high": (None, "high_prob", 0),
    "IBD-low": (None, "low_prob", 0),
    "IBD-irr-high": (0.0, "high_prob", 0),
    "IBD-irr-low": (0.0, "low_prob", 0),
    "OOBD-high": (None, "high_prob", 1),
    "OOBD-low": (None, "low_prob", 1),
    "OOBD-rel-low": (1.0, "low_prob", 1),
}
EVAL_SEQUENCES = 3000


def build(ref: Path, n: int, seed: int, sigma: float, p_rel: float):
    """The reference's model, optimiser, jit-compiled step and generator on N training sequences.

    Returns a namespace: ``params``, ``opt_state``, ``step(params, opt_state, batch)``,
    ``loss_fn``, ``model``, ``stream`` (the training generator), ``generator(size, train, p,
    conditioning, flip)`` and ``stack(items)`` (a batch from generator items).
    """
    # src.dataset (not used) imports TensorFlow; the modules used here do not, but keep them importable.
    for name in ("tensorflow", "tensorflow_datasets"):
        sys.modules.setdefault(name, types.ModuleType(name))
    if str(ref) not in sys.path:
        sys.path.insert(0, str(ref))
    from types import SimpleNamespace as NS

    import jax
    import jax.numpy as jnp
    import jax.random as jrandom
    import numpy as np
    import optax
    import src.models as models
    from src.datasets.synthetic import Synthetic
    from src.optimizer import get_optimizer

    def generator(size: int, train: bool, p: float, conditioning: str = "none", flip: int = 0):
        ds = Synthetic(size, 1, 5, 5, 0.9, p, 64, seed, train, conditioning, sigma, 0.0)
        return ds, ds.get_sequences(flip)

    def stack(items: list[dict]) -> dict:
        return {
            "example": np.stack([x["example"] for x in items]).astype(np.float32),
            "target": np.stack([x["label"] for x in items]).astype(np.int32),
        }

    model = models.InContextSupervisedTransformer(
        output_dim=10, num_contexts=1, num_blocks=2, num_heads=1, embed_dim=64, widening_factor=4, query_pred_only=True
    )
    ds, stream = generator(n, True, p_rel)
    params = model.init(jrandom.split(jrandom.PRNGKey(seed))[0], ds.input_space, ds.output_space)
    lr = NS(scheduler="constant_schedule", scheduler_kwargs=NS(value=3e-4))
    opt = get_optimizer(
        NS(optimizer="adam", lr=lr, opt_kwargs=NS(), max_grad_norm=False, mask_names=["input_tokenizer"]), params
    )

    def loss_fn(p, b):
        logits, _ = model.forward(p, b)
        return jnp.mean(optax.softmax_cross_entropy(logits, b["target"][:, -1]))

    @jax.jit
    def step(p, s, b):
        loss, grads = jax.value_and_grad(loss_fn)(p, b)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    return NS(
        model=model,
        params=params,
        opt_state=opt.init(params),
        step=step,
        loss_fn=loss_fn,
        stream=stream,
        generator=generator,
        stack=stack,
    )


def seconds_per_step(ref: Path, n: int, steps: int, warmup: int = 20) -> float:
    """CPU seconds per training step (batch 32, data and step) after ``warmup`` steps of jit compilation."""
    r = build(ref, n, 0, 0.2, 0.9)
    params, opt_state = r.params, r.opt_state

    def loop(k: int):
        nonlocal params, opt_state
        for _ in range(k):
            params, opt_state, loss = r.step(params, opt_state, r.stack([next(r.stream) for _ in range(32)]))
        loss.block_until_ready()

    loop(warmup)
    t0 = time.process_time()
    loop(steps)
    return (time.process_time() - t0) / steps


def run(ref: Path, n: int, seed: int, steps: int, every: int, sigma: float, p_rel: float) -> list[dict]:
    """Train the reference model on N sequences and evaluate it every ``every`` steps (tidy rows)."""
    import jax
    import jax.numpy as jnp

    r = build(ref, n, seed, sigma, p_rel)
    params, opt_state, generator, stack = r.params, r.opt_state, r.generator, r.stack

    @jax.jit
    def accuracy(p, b):
        logits, _ = r.model.forward(p, b)
        return jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(b["target"][:, -1], -1))

    evals = {}
    for split, (p, conditioning, flip) in SPLITS.items():
        _, g = generator(5 * EVAL_SEQUENCES, False, p_rel if p is None else p, conditioning, flip)
        evals[split] = stack([next(g) for _ in range(EVAL_SEQUENCES)])
    _, g = generator(n, True, p_rel)
    train_set: dict = {}
    if n <= 4096:  # every distinct training sequence (at sigma 0 many coincide): draw well past N ln N
        for _ in range(30 * n):
            item = next(g)
            train_set.setdefault(item["example"].tobytes() + item["label"].tobytes(), item)
            if len(train_set) == n:
                break
    else:
        train_set = {k: next(g) for k in range(4096)}
    train_batch = stack(list(train_set.values()))
    train_loss = jax.jit(r.loss_fn)

    rows = []
    for t in range(1, steps + 1):
        params, opt_state, _ = r.step(params, opt_state, stack([next(r.stream) for _ in range(32)]))
        if t % every == 0:
            key = {"N": n, "p_relevant": p_rel, "sigma": sigma, "seed": seed, "steps": steps, "step": t}
            rows.append({**key, "split": "train", "metric": "loss", "value": float(train_loss(params, train_batch))})
            rows += [
                {**key, "split": s, "metric": "acc", "value": float(accuracy(params, b))} for s, b in evals.items()
            ]
    return rows


def with_steps(t):
    """``t`` with each run's length in ``steps`` (older files lack it: one file, one length per run)."""
    if "steps" in t.columns:
        return t
    return t.assign(steps=t.groupby(["N", "p_relevant", "sigma", "seed"])["step"].transform("max"))


def best_rows(t):
    """Each run's rows at its lowest-training-loss checkpoint (latest of ties)."""
    keys = ["N", "p_relevant", "sigma", "seed", "steps"]
    loss = t[t["split"] == "train"].sort_values("step")
    best = loss.loc[loss.iloc[::-1].groupby(keys)["value"].idxmin(), keys + ["step"]]
    return t.merge(best, on=keys + ["step"])


def summary(paths: list[Path], best_out: Path | None = None) -> str:
    """Seed means at each run's lowest-training-loss checkpoint, as a table (N across)."""
    import pandas as pd

    read = best_rows(pd.concat([with_steps(pd.read_csv(p)) for p in paths], ignore_index=True))
    if best_out is not None:
        read.sort_values(["steps", "p_relevant", "sigma", "N", "seed", "split"]).to_csv(
            best_out, index=False, float_format="%.4f"
        )
    acc = read[read["metric"] == "acc"]
    return acc.groupby(["steps", "p_relevant", "sigma", "split", "N"])["value"].mean().unstack("N").round(3).to_string()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--simple-icl", type=Path, help="checkout of chanb/simple_icl, branch iclr_2025")
    ap.add_argument("--n", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1_000)
    ap.add_argument("--sigma", type=float, default=0.2)
    ap.add_argument("--p-relevant", type=float, default=0.9)
    ap.add_argument("--out", type=Path, help="tidy CSV to append to")
    ap.add_argument("--summary", type=Path, nargs="+", help="print the lowest-training-loss table of CSVs and exit")
    ap.add_argument("--best-out", type=Path, help="with --summary: write the rows read to this CSV")
    ap.add_argument("--time-steps", type=int, help="print CPU seconds per training step over this many steps and exit")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(args.summary, args.best_out))
        return 0
    if args.simple_icl is None or not (args.simple_icl / "src" / "datasets" / "synthetic.py").is_file():
        ap.error("--simple-icl: expected a checkout of chanb/simple_icl (branch iclr_2025) holding src/")
    if args.time_steps:
        print(seconds_per_step(args.simple_icl, args.n[0], args.time_steps))
        return 0
    if args.out is None:
        ap.error("--out: expected a CSV path")
    import pandas as pd

    for n in args.n:
        for seed in args.seeds:
            t0 = time.time()
            rows = pd.DataFrame(run(args.simple_icl, n, seed, args.steps, args.every, args.sigma, args.p_relevant))
            rows.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)
            print(f"N={n} seed={seed}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
