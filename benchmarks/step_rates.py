"""Step rates, side by side in one run: training rate against the hand-written loop (with and
without the data prefetch), the data share of a step in every preset, the Nguyen & Reddy model
against its reference loop, and vectorised seeds (the replicate rule). One torch thread.

The section between the ``step-rates`` markers of ``benchmarks/RESULTS.md``:
``python -m benchmarks.run --section step-rates [--rounds R] [--repro-steps S]`` measures it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import (
    bare_loop,
    clock,
    load,
    median,
    ms,
    train_step_time,
)
from benchmarks.handmade import NguyenReddyRef, loops, nr_tokens
from benchmarks.seed_replicates import cpu_bound, ensemble
from icl_circuits.config import apply_overrides
from icl_circuits.presets import get_preset
from icl_circuits.training import trainer
from icl_circuits.training.replicates import (
    VECTORISE_MAX_FLOPS,
    VECTORISE_MIN_SEEDS,
)

BEGIN, END = "<!-- step-rates:begin -->", "<!-- step-rates:end -->"
PRESETS = ["demo", "chan2024-stylized", "chan2024-omniglot", "nguyen-reddy2024", "singh2024-induction", "reddy2023"]


class _NoPrefetch:
    def __enter__(self):
        self.orig = trainer.Prefetch.__init__

        def off(obj, make, start, end, enabled=True):
            self.orig(obj, make, start, end, False)

        trainer.Prefetch.__init__ = off

    def __exit__(self, *exc):
        trainer.Prefetch.__init__ = self.orig


def waited_share(cfg, steps: int, root: Path) -> tuple[float, float, bool]:
    """(step seconds, seconds the loop waited for data per step, whether the thread ran) of
    train() with the default prefetch, in the steady state: the steps after the prefetch's
    warm-up and probe steps (made on demand while it decides)."""
    seen = []
    orig = trainer.Prefetch.__init__

    def spy(obj, *a, **k):
        orig(obj, *a, **k)
        seen.append(obj)

    trainer.Prefetch.__init__ = spy
    try:
        t = train_step_time(cfg, steps, root)
    finally:
        trainer.Prefetch.__init__ = orig
    from icl_circuits.training.prefetch import Prefetch

    pf = seen[-1]
    waits = pf.waits[Prefetch.WARMUP_STEPS + Prefetch.PROBE_STEPS + 1 :]
    return t, sum(waits) / len(waits), pf.pool is not None


def rate(rounds: int, root: Path) -> tuple[list, list]:
    rows, goals = [], []
    for name, n in (("demo", 100), ("chan2024-stylized", 300)):
        cfg = apply_overrides(get_preset(name), ["train.device=cpu"])
        lp = loops(cfg, n)
        hand = lp["hand"]

        def hl(ex, lab, y, hand=hand):
            return F.cross_entropy(hand(ex, lab), y)

        t = {"hand": [], "ours": [], "nopf": []}
        for _ in range(rounds):
            t["hand"].append(bare_loop(hl, hand.parameters(), cfg, lp["hand_in"]))
            t["ours"].append(train_step_time(cfg, n, root / name))
            with _NoPrefetch():
                t["nopf"].append(train_step_time(cfg, n, root / name))
        per = [h / o for h, o in zip(t["hand"], t["ours"], strict=True)]
        m = {k: median(v) for k, v in t.items()}
        r = m["hand"] / m["ours"]
        rows.append(
            f"| {name} | {ms(m['hand'])} | {ms(m['ours'])} | {ms(m['nopf'])} | **{r:.2f}x** "
            f"| {m['hand'] / m['nopf']:.2f}x | {', '.join(f'{x:.2f}' for x in per)} |"
        )
        goals.append((f"training rate {name}: ours / hand-written loop ≥ 0.9x", f"{r:.2f}x", r >= 0.9))
    return rows, goals


def data_shares(root: Path) -> tuple[list, list]:
    rows, goals = [], []
    for name in PRESETS:
        cfg = apply_overrides(get_preset(name), ["train.device=cpu"])
        src = cfg.data.build_source(cfg.seed)
        bs = cfg.train.batch_size
        gen = median([clock(lambda s=s, src=src, bs=bs: src.train_batch(s, bs).tokens()) for s in range(100, 106)])
        steps = 40 if name == "nguyen-reddy2024" else 150
        step, wait, thread = waited_share(cfg, steps, root / f"d-{name}")
        share = wait / step
        rows.append(
            f"| {name} | {bs} | {ms(gen)} | {gen / step:.1%} | {ms(step)} | {'yes' if thread else 'no'} "
            f"| {ms(wait)} | **{share:.1%}** |"
        )
        goals.append((f"data on the critical path, {name} ≤ 5% of a step", f"{share:.1%}", share <= 0.05))
    return rows, goals


def nguyen_reddy(rounds: int, root: Path) -> tuple[list, list]:
    cfg = apply_overrides(get_preset("nguyen-reddy2024"), ["train.device=cpu"])
    src = cfg.data.build_source(cfg.seed)
    bs, n = cfg.train.batch_size, 5
    ref = NguyenReddyRef(cfg.data.d + 2)
    ref_in = [nr_tokens(src.train_batch(s, bs)) for s in range(n)]

    def ref_loss(tok, y):
        return -F.logsigmoid(y * ref(tok)).mean()

    t_ref, t_ours = [], []
    for _ in range(rounds):
        t_ref.append(bare_loop(ref_loss, ref.parameters(), cfg, ref_in, warmup=1))
        t_ours.append(train_step_time(cfg, n, root / "nr"))
    a, b = median(t_ref), median(t_ours)
    r = a / b
    rows = [
        f"| reference loop (`NguyenReddyRef`), pre-generated batches | {ms(a)} | {bs / a:,.0f} | 1.00x |",
        f"| ours, `train()` on `nguyen-reddy2024` (data made in the loop) | {ms(b)} | {bs / b:,.0f} | **{r:.2f}x** |",
    ]
    return rows, [("Nguyen & Reddy, same model: ours / reference sequences/s ≥ 1.0x", f"{r:.2f}x", r >= 1.0)]


def repro_subset(root: Path, steps: int, workers: int = 2) -> tuple[list, list]:
    """chan2024's main cpu grid (6 N x 3 seeds, its cpu overrides) at ``steps`` steps, as a
    sweep with ``workers`` workers: every run alone, then the measured rule (vectorised)."""
    from icl_circuits.papers.chan2024.reproduce import grids, settings
    from icl_circuits.reproduce.common import final
    from icl_circuits.sweeps import LocalBackend, SweepSpec, run_sweep

    s = settings("cpu")
    axes = grids(s)["transformer"]
    overrides = [o for o in s["overrides"] if not o.startswith("train.steps=")] + [f"train.steps={steps}"]
    spec = SweepSpec(base=s["preset"], overrides=tuple(overrides), grid=axes)
    secs, tables, loads = {}, {}, {}
    for how, vec in (("separate", False), ("rule", None)):
        loads[how] = load()
        t0 = time.perf_counter()
        res = run_sweep(
            spec, root / f"repro-{how}", backend=LocalBackend(workers), progress=False, figures=False, vectorise=vec
        )
        secs[how] = time.perf_counter() - t0
        tables[how] = final(res.results, "acc", rule=s["checkpoint"]).set_index(["point", "split"])["value"]
    diff = (tables["separate"] - tables["rule"]).abs()
    n = len(axes["data.n_train"]) * len(axes["seed"])
    r = secs["separate"] / secs["rule"]
    rows = [
        f"| every run alone | {secs['separate']:.0f} s | 1.00x | {loads['separate']} |",
        f"| the rule (vectorised where it pays) | {secs['rule']:.0f} s | **{r:.2f}x** | {loads['rule']} |",
        "",
        f"{n} runs of {steps} steps (chan2024's cpu grid `transformer`: N = 2^6..2^16, 3 seeds; the cpu scale "
        f"trains 10,000 steps), {workers} workers. Final accuracies (checkpoint of least training loss, every "
        f"point and split, {len(diff)} values): max |difference| {diff.max():.3f}, mean {diff.mean():.4f}; "
        f"{int((diff > 0.02).sum())} differ by more than 0.02.",
    ]
    return rows, [(f"chan2024 cpu grid subset ({n} runs, {steps} steps): ≥ 1.5x sooner", f"{r:.2f}x", r >= 1.5)]


ROOT = Path(__file__).resolve().parents[1]


#: The cpu-scale reproductions' measured run times: one row each (docs/reproductions/README.md).
def reproduction_times() -> list[str]:
    """Where each reproduction's run time lives (one table, rebuilt by ``make docs``), not a copy of it."""
    return [
        "### Reproductions: wall time per reproduction",
        "",
        "Not measured by this script: each reproduction's cpu run from scratch, with the conditions it was "
        "timed under, is in [docs/reproductions/README.md](../docs/reproductions/README.md#run-times) "
        "(from `docs/reproductions/run_times.csv`).",
    ]


REPRO_HEAD = "### A reproduction's grid: alone against the rule"


def kept_repro(old: str) -> tuple[list, list]:
    """Without ``--repro-steps``: the grid timing of the last run that measured it (in the report
    text ``old``), kept as it was."""
    if REPRO_HEAD not in old or BEGIN not in old:
        return [], []
    section = old[old.index(REPRO_HEAD) : old.index(END)].split("\n### ")[0]
    rows = [line for line in section.splitlines()[4:] if not line.startswith("(kept from")]
    rows = "\n".join(rows).strip("\n").splitlines()
    goal = next((line for line in old.splitlines() if line.startswith("| chan2024 cpu grid subset")), None)
    if goal is None:
        return [], []
    name, measured, status = (c.strip() for c in goal.strip("|").split("|"))
    note = "(kept from the last run with `--repro-steps`; not re-measured by this one)"
    return [*rows, "", note], [(name, measured, status == "met")]


def missed_notes(goals: list) -> list[str]:
    """Measured reason and next lever of each missed goal."""
    why = {
        "training rate": "a step of a few milliseconds where per-step Python work (module calls, unpacking the "
        "bit-cast tokens) weighs, and the per-round ratios scatter with the load. Taken out so far: the "
        "optimiser's per-parameter loop (foreach, bitwise the same), the stylized training set's tokens laid out "
        "once, and batches made ahead in bursts on the loop's thread (one batch between two steps cost 170 us, "
        "5.5% of chan2024-stylized's step, and made the prefetch thread start, which itself cost about 5%; in "
        "bursts of 32 a batch costs 50 us and no thread starts). Next lever: the embedding's unpacking of the "
        "bit-cast tokens (about 0.1 ms of chan2024-stylized's forward).",
        "data on the critical path": "where the prefetch's probe judged a batch cheap, the loop makes it itself, "
        "in bursts of up to 32 steps; inside the loop a batch costs 2-4x what it costs alone (cold caches after "
        "the backward pass). Next lever: a lower threshold for the thread, once its cost on the smallest steps "
        "is measured on free cores.",
        "vectorised seeds": "demo's stacked eager step is at its CPU bound (stated above): its matmuls already "
        "run at about 80 of the core's 98 GFLOP/s, and its elementwise ops, norms, softmax and the head "
        "layout's copies cost as much per seed stacked as alone. `train.compile=true` (inductor fusing those "
        "ops) passes 1.5x (its row). Compiling stays opt-in: a chunk of seeds takes about 30 s to compile "
        "(cached after), and compiled floats differ from eager ones in summation order, which would move the "
        "reproductions' asserted claims.",
        "vectorised seeds chan2024-stylized": "the stacked step costs 1.3-1.6 ms per seed against 2.8-3.4 ms "
        "alone: the ratio sits near 2x and moves with the load (this script's runs on this code: 2.21x; "
        "first-to-last-checkpoint timings 1.9-2.2x). Taken out: the fused optimiser kernel on the stacked "
        "tensors, the norms' affines applied instead of folded where the activation has fewer rows than "
        "the next linear's outputs, no split of a single chunk. Next lever: the tanh GELU's forward and "
        "backward (about 12% of the stacked step), or a GPU.",
        "chan2024 cpu grid": "evaluation stays per member on the CPU (stacked evaluation measured slower: "
        "compute-bound, 1.34-2.00 vs 1.16-1.58 CPU s per checkpoint of 9 members); the gain is the training "
        "step's (stacked forward) and, in the reproduction itself, the three grids' runs pooled so 8-run grids "
        "vectorise too.",
    }
    notes = []
    for g, m, ok in goals:
        keys = [key for key in why if g.startswith(key)]
        if not ok and keys:
            notes.append(f"- **{g}** ({m}): {why[max(keys, key=len)]}")
    return ["Missed goals: measured reason, next lever", "", *notes, ""] if notes else []


def measure(rounds: int = 3, repro_steps: int = 0, previous: str = "") -> str:
    """The step-rates section (between its markers); ``previous``: the report it replaces, whose
    reproduction-grid timing is kept unless ``repro_steps`` re-measures it."""
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), load()
    root = Path(tempfile.mkdtemp())
    r_rows, r_goals = rate(rounds, root)
    d_rows, d_goals = data_shares(root)
    n_rows, n_goals = nguyen_reddy(rounds, root)
    e_rows, e_goals, demo = ensemble(root)
    bound = cpu_bound(demo, root)
    p_rows, p_goals = repro_subset(root, repro_steps) if repro_steps else kept_repro(previous)
    goals = r_goals + n_goals + e_goals + p_goals + d_goals
    mark = {True: "met", False: "**missed**"}
    text = "\n".join(
        [
            BEGIN,
            "## Step rates: training against the hand-written loop, data off the critical path, Nguyen & Reddy, seed replicates",
            "",
            f"`python -m benchmarks.run --section step-rates --rounds {rounds}`, one torch thread, {os.cpu_count()} cores shared "
            f"with other jobs; took {time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) at start "
            f"{load0}, at end {load()}. Every ratio compares interleaved measurements (median of the rounds; "
            "each round's ratio listed), so a noisy neighbour slows both sides; under this load single "
            "rounds scatter by ±30%.",
            "",
            "| goal | measured | status |",
            "| --- | --- | --- |",
            *[f"| {g} | {m} | {mark[ok]} |" for g, m, ok in goals],
            "",
            *missed_notes(goals),
            "### Training rate (`train()` against the hand-written loop of the same model)",
            "",
            "`hand-written`: `benchmarks/handmade.HandModel` (fused QKV, SDPA) with pre-generated batches; "
            "`ours`: `train()`'s loop between its first and last checkpoint, the training forward of "
            "`icl_circuits/models/fast.py` and the data prefetch by default (a thread only when a batch costs over "
            "5% of a step); `no prefetch`: the same with `prefetch=False`.",
            "",
            "| preset | hand-written step | ours | ours, no prefetch | ours / hand-written | no prefetch / hand-written | per round |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *r_rows,
            "",
            "### Data on the critical path, every preset",
            "",
            "`generator`: `source.train_batch(step, batch).tokens()` (median of 6); `waited`: the time `train()`'s "
            "loop waited for its batch per step in the steady state (150 steps, 40 for nguyen-reddy2024, the "
            "prefetch's 10 warm-up and probe steps left out): the generator's time where the batch is made on "
            "demand, what the thread has not finished where it prefetches (`thread`: by default it starts when "
            "the probe steps' median batch costs over 5% of their median step: "
            "`icl_circuits/training/prefetch.py`). The stylized family (chan2024-*) gathers its batches from its "
            "materialised training set and its token rows laid out once.",
            "",
            "| preset | batch | generator | generator / step | `train()` step | thread | waited | waited / step |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *d_rows,
            "",
            "### Nguyen & Reddy 2024, the same model",
            "",
            "The `nguyen-reddy2024` preset is their one-layer packed model (x ⊕ onehot(y) tokens, N = 100 with "
            "the query, K = 20000 in the preset, batch 128, SGD); the reference is the rebuilt loop "
            "(`benchmarks/handmade.NguyenReddyRef`, pre-generated batches, no evaluation).",
            "",
            "| loop | step | sequences / s | vs reference |",
            "| --- | --- | --- | --- |",
            *n_rows,
            "",
            "### Seed replicates: vectorised against separate runs, and the rule",
            "",
            "Per-seed throughput of `train_ensemble` (S seeds, one stacked forward, `icl_circuits.models.stacked`, "
            "the fused optimiser kernel) over `train()` per seed, one torch thread: the median time between two "
            "steps once the first (8-15) are over (`benchmarks.common.steady_step`), 2 interleaved rounds. "
            f"`rule`: what `icl_circuits.training.replicates.vectorise_pays` chooses (S ≥ {VECTORISE_MIN_SEEDS}; "
            f"≤ {VECTORISE_MAX_FLOPS / 1e9:.1f} GFLOP per seed step only where the ensemble falls back to vmap). "
            "The `train.compile=true` row compiles the ensemble only; its separate runs stay eager.",
            "",
            *bound,
            "| preset | S | GFLOP per seed step | separate: step | ensemble: step per seed | per-seed ratio | per round | rule |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *e_rows,
            "",
            *(
                [
                    "### A reproduction's grid: alone against the rule",
                    "",
                    "| how | wall time | sooner | load at start |",
                    "| --- | --- | --- | --- |",
                    *p_rows,
                ]
                if p_rows
                else []
            ),
            "",
            *reproduction_times(),
            END,
        ]
    )
    return text
