"""Training step rate against the hand-written loop, torch.compile, and data/checkpoint overheads."""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    DEV,
    PRESETS,
    Goal,
    Scale,
    _optimizer,
    bare_loop,
    bench_cfg,
    clock,
    fresh,
    median,
    ms,
    train_step_time,
)
from benchmarks.handmade import check_hand_model, full_sequence_logits, loops, readout_positions  # noqa: E402
from icl_circuits.config import apply_overrides  # noqa: E402
from icl_circuits.metrics import eval_sets, evaluate  # noqa: E402
from icl_circuits.models import build_native  # noqa: E402
from icl_circuits.models.build import query_logits  # noqa: E402
from icl_circuits.runs.read import load_native, model_shape, read_metrics  # noqa: E402
from icl_circuits.training import train  # noqa: E402
from icl_circuits.training.optim import build_optimizer  # noqa: E402
from icl_circuits.training.runfolder import checkpoint  # noqa: E402
from icl_circuits.training.schedule import checkpoint_steps  # noqa: E402


def bench_training(root: Path, scale: Scale) -> tuple[list[Goal], list[str], dict]:
    goals: list[Goal] = []
    lines = [
        "## Training step rate",
        "",
        "`hand-written` is the eager limit: a plain PyTorch loop over a hand-written model of the same "
        "architecture (loaded with the same weights; max |logit difference| below), pre-generated batches, "
        "no evaluation or checkpoints. `native bare` is the same loop over our TransformerLens-native model "
        "through `query_logits` (the training forward), `+ data` generates each step's batch inside that loop, "
        "`native, full-sequence readout` runs TransformerLens's plain forward (final norm and readout at every "
        "position, as the bridge does for analysis) and keeps the query. `ours` is `train()`'s loop, timed "
        "between its first and last checkpoint (so setup, evaluation and saving are excluded; they are measured "
        "below). Median of interleaved rounds.",
        "",
        "| preset | batch | hand-written | native bare | native bare + data | native, full-sequence readout | ours | ours / hand-written | ours / native bare + data | max logit diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    info: dict = {}
    for name, preset in PRESETS.items():
        cfg = apply_overrides(preset(), [f"train.device={DEV}"])
        n = scale.steps[name]
        lp = loops(cfg, n)
        native, hand = lp["native"], lp["hand"]

        def hand_loss(ex, lab, y, hand=hand):
            return F.cross_entropy(hand(ex, lab), y)

        def native_loss(tok, y, native=native):
            return F.cross_entropy(query_logits(native, tok), y)

        def full_loss(tok, y, native=native):
            return F.cross_entropy(full_sequence_logits(native, tok), y)

        def native_data_loss(step, native=native, source=lp["source"], bs=cfg.train.batch_size):
            batch = source.train_batch(step, bs)
            return F.cross_entropy(query_logits(native, batch.tokens()), batch.target)

        t = {"hand": [], "native": [], "with_data": [], "full": [], "ours": []}
        for _ in range(scale.rounds):
            t["hand"].append(bare_loop(hand_loss, hand.parameters(), cfg, lp["hand_in"]))
            t["native"].append(bare_loop(native_loss, native.parameters(), cfg, lp["native_in"]))
            t["with_data"].append(bare_loop(native_data_loss, native.parameters(), cfg, [(s,) for s in range(n)]))
            t["full"].append(bare_loop(full_loss, native.parameters(), cfg, lp["native_in"]))
            t["ours"].append(train_step_time(cfg, n, root / name))
        t = {k: median(v) for k, v in t.items()}
        diff = check_hand_model(cfg)
        bs, n_data = cfg.train.batch_size, max(n // 2, 5)
        t_data = median([data_time(lp["source"], bs, n_data) for _ in range(scale.rounds)])
        query_only = readout_positions(native, lp["native_in"][0][0]) == 1
        info[name] = {**t, "cfg": cfg, "lp": lp, "data": t_data, "query_only": query_only}
        lines.append(
            f"| {name} | {bs} | {ms(t['hand'])} | {ms(t['native'])} | {ms(t['with_data'])} | {ms(t['full'])} "
            f"| {ms(t['ours'])} | **{t['hand'] / t['ours']:.2f}x** | {t['with_data'] / t['ours']:.2f}x | {diff:.1e} |"
        )
        ratio = t["hand"] / t["ours"]
        why = ""
        if ratio < 0.9:
            model_part = t["hand"] / t["native"]
            data_part = t["native"] / t["with_data"]
            trainer_part = t["with_data"] / t["ours"]
            why = (
                f"the native model in the same bare loop runs at {model_part:.2f}x the hand-written one (model "
                f"cost); generating each batch in that loop costs another factor {data_part:.2f} (a batch takes "
                f"{ms(t_data)}, {t_data / t['ours']:.0%} of our step); `train()`'s own bookkeeping is "
                f"{trainer_part:.2f}x. "
                + (
                    f"`query_logits` already runs the final norm and readout at the query only "
                    f"({t['full'] / t['native']:.2f}x faster than the full-sequence forward). "
                    if query_only
                    else "`query_logits` runs the final norm and readout at every position (the full-sequence "
                    "forward). "
                )
                + "Next lever: "
                + (
                    (
                        "the training forward already has fused QKV and `scaled_dot_product_attention` "
                        "(`models/fast.py`); what remains is per-step Python work (module calls, unpacking the "
                        "bit-cast tokens) on a step of a few milliseconds, and the load: compare the training-rate "
                        "section's per-round ratios, measured in another run."
                        if query_only
                        else "compute the final norm and readout at the query position only in "
                        "`query_logits`; then SDPA instead of the explicit masked softmax."
                    )
                    if model_part <= data_part
                    else "generate batches off the critical path (prefetch the next step's batch in a "
                    "background thread, or several steps per vectorised call)."
                )
            )
        goals.append(Goal(f"training rate {name}: ours / hand-written loop ≥ 0.9x", f"{ratio:.2f}x", ratio >= 0.9, why))
    lines += [""]
    if scale.compile:
        g, cl = bench_compile(root, scale, info)
        goals += g
        lines += cl
    else:
        lines += ["`torch.compile`: skipped in `--quick`.", ""]
    return goals, lines, info


def bench_compile(root: Path, scale: Scale, info: dict) -> tuple[list[Goal], list[str]]:
    lines = [
        "### torch.compile",
        "",
        "The bare native loop with `torch.compile(model)` (compile time = its first 3 steps, cold inductor "
        "cache) against the same "
        "loop eager (interleaved rounds), and `train()` with `train.compile=true` against eager `train()` over "
        "20 steps (results must match).",
        "",
        "| preset | compile time | eager step | compiled step | speed-up | break-even steps | max weight diff vs eager | final loss diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    goals = []
    for name, d in info.items():
        cfg, lp = d["cfg"], d["lp"]
        native = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg, lp["source"])).to(DEV)
        compiled = torch.compile(native)

        def loss(tok, y, compiled=compiled):
            return F.cross_entropy(query_logits(compiled, tok), y)

        opt = _optimizer(native.parameters(), cfg)

        def first_steps(compiled=compiled, opt=opt, inputs=lp["native_in"][:3]):
            for tok, y in inputs:
                opt.zero_grad()
                F.cross_entropy(query_logits(compiled, tok), y).backward()
                opt.step()

        def eager_loss(tok, y, native=native):
            return F.cross_entropy(query_logits(native, tok), y)

        t_compile = clock(first_steps)
        t_comp, t_eager = [], []
        for _ in range(max(scale.rounds - 1, 1)):
            t_comp.append(bare_loop(loss, native.parameters(), cfg, lp["native_in"]))
            t_eager.append(bare_loop(eager_loss, native.parameters(), cfg, lp["native_in"]))
        t_comp, t_eager = median(t_comp), median(t_eager)
        n = 20
        eager = train(bench_cfg(cfg, n), fresh(root, f"eager-{name}"), progress=False)
        comp = train(bench_cfg(cfg, n, "train.compile=true"), fresh(root, f"comp-{name}"), progress=False)
        we, wc = load_native(eager).state_dict(), load_native(comp).state_dict()
        # Key biases have zero gradient, so Adam turns rounding noise into updates: skip them.
        wdiff = max((we[k] - wc[k]).abs().max().item() for k in we if not k.endswith("attn.k.bias"))

        me, mc = read_metrics(eager), read_metrics(comp)
        last = (me.step == n) & (me.split == "train") & (me.metric == "loss")
        ldiff = abs(me.value[last].item() - mc.value[last].item())
        gain = t_eager - t_comp
        even = f"{t_compile / gain:.0f}" if gain > 0 else "never"
        lines.append(
            f"| {name} | {t_compile:.1f} s | {ms(t_eager)} | {ms(t_comp)} | {t_eager / t_comp:.2f}x | {even} "
            f"| {wdiff:.1e} | {ldiff:.1e} |"
        )
        run_steps = cfg.train.steps
        pays = gain > 0 and t_compile < gain * run_steps
        goals.append(
            Goal(
                f"torch.compile pays over a full {name} run ({run_steps} steps)",
                f"{t_eager / t_comp:.2f}x per step, {t_compile:.0f} s to compile: "
                + (f"pays after {even} steps" if gain > 0 else "never pays"),
                None,
                ""
                if pays
                else f"not over this run: compiled {ms(t_comp)} against eager {ms(t_eager)} per step in the same "
                f"bare loop, so the {t_compile:.0f} s compile "
                + (
                    f"is won back after {even} steps, more than the run's {run_steps}"
                    if gain > 0
                    else "is never won back"
                )
                + ". Keep `train.compile` off for such runs (it is off by default); re-check on GPU, where fusion "
                "removes launch overhead.",
            )
        )
        info[name]["compile"] = (t_compile, t_comp)
    lines += [""]
    return goals, lines


def data_time(source, batch_size: int, n: int) -> float:
    """Seconds per training batch (``tokens()`` included)."""
    return clock(lambda: [source.train_batch(s, batch_size).tokens() for s in range(n)]) / n


def top_function(fn) -> tuple[str, float]:
    """The function with the most own time in a cProfile of ``fn()``, and its share."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof)
    (path, _, name), row = max(stats.stats.items(), key=lambda kv: kv[1][2])
    where = f"{Path(path).stem}." if path != "~" else ""
    return f"{where}{name}", row[2] / (stats.total_tt or 1)


def fsync_calls(fn) -> tuple[int, float]:
    """How many times ``fn()`` calls ``os.fsync``, and the seconds spent in it."""
    original, count, spent = os.fsync, [0], [0.0]

    def counted(fd):
        t0 = time.perf_counter()
        original(fd)
        count[0] += 1
        spent[0] += time.perf_counter() - t0

    os.fsync = counted
    try:
        fn()
    finally:
        os.fsync = original
    return count[0], spent[0]


def bench_overheads(root: Path, scale: Scale, info: dict) -> tuple[list[Goal], list[str]]:
    lines = [
        "## Data generation and checkpoint overheads",
        "",
        "Data: `source.train_batch(step, batch).tokens()` per step, against `train()`'s step. "
        "Checkpoint: one `checkpoint` (evaluation of every split at the preset's `eval_size`, atomic "
        "save, metrics append), split into evaluation and writing; its share is projected onto the preset's "
        "full run (`n_checkpoints x checkpoint / (steps x step + n_checkpoints x checkpoint)`).",
        "",
        "| preset | data / step | data share of step | top data function (cProfile own time) | checkpoint | of which evaluation | fsyncs per checkpoint (time) | checkpoints in a full run | checkpoint share of a full run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    goals = []
    for name, d in info.items():
        cfg, source, native = d["cfg"], d["lp"]["source"], d["lp"]["native"]
        bs, n, t_data = cfg.train.batch_size, max(scale.steps[name] // 2, 5), d["data"]
        top, top_share = top_function(lambda source=source, bs=bs, n=n: data_time(source, bs, n))
        share = t_data / d["ours"]
        evals = eval_sets(source, cfg.train.eval_size)
        opt = build_optimizer(native, cfg.train)
        run = fresh(root, f"ckpt-{name}")

        def ckpt(s, run=run, native=native, opt=opt, evals=evals, n_labels=source.n_labels):
            checkpoint(run, s, native, opt.state_dict(), evals, n_labels, 0.0, DEV)

        t_ckpt, t_eval = [], []
        for s in range(3):  # interleaved, best of 3: the checkpoint contains the evaluation
            t_ckpt.append(clock(lambda s=s: ckpt(s)))
            t_eval.append(clock(lambda m=native, e=evals, k=source.n_labels: evaluate(m, e, k)))
        t_ckpt, t_eval = min(t_ckpt), min(t_eval)
        n_fsync, t_fsync = fsync_calls(lambda: ckpt(3))
        n_ck = len(checkpoint_steps(cfg.train.steps, cfg.train.n_checkpoints, cfg.train.checkpoint_every))
        ck_share = n_ck * t_ckpt / (cfg.train.steps * d["ours"] + n_ck * t_ckpt)
        lines.append(
            f"| {name} | {ms(t_data)} | **{share:.1%}** | `{top}` {top_share:.0%} | {ms(t_ckpt)} | {ms(t_eval)} "
            f"| {n_fsync} ({ms(t_fsync)}) | {n_ck} | **{ck_share:.1%}** |"
        )
        why = (
            f"{ms(t_data)} per batch of {bs} made alone against a {ms(d['ours'])} step; cProfile's top function "
            f"is `{top}` ({top_share:.0%} of the generator's own time). `train()` makes batches ahead "
            "(trainer.Prefetch: bursts, or a thread where a batch is costly), so the goal (data ≤ 5% of a step, "
            "every preset) is measured on the loop's own wait in the training-rate section below."
        )
        goals.append(Goal(f"data generation {name}, generator alone, share of the step", f"{share:.1%}", None, why))
        ck_why = ""
        if ck_share > 0.10:
            ck_why = (
                f"evaluation is {t_eval / t_ckpt:.0%} of a checkpoint ({len(evals)} splits x "
                f"{cfg.train.eval_size} sequences); writing does {n_fsync} fsyncs ({ms(t_fsync)}). Next lever: "
                + ("" if d["query_only"] else "the query-only readout in `query_logits` (evaluation uses it), ")
                + "fewer or smaller evaluation sets early in a run (`train.eval_size`)."
            )
        goals.append(Goal(f"checkpoint + evaluation share of a full {name} run", f"{ck_share:.1%}", None, ck_why))
    lines += [""]
    return goals, lines
