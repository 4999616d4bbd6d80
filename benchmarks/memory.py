"""Peak memory of training and analysis runs, and the Nguyen & Reddy 2024 reference loop."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import DEV, Goal, Scale, bare_loop, clock, fresh, median, ms, train_step_time
from benchmarks.handmade import NguyenReddyRef, full_sequence_logits, nr_tokens, readout_positions
from benchmarks.scaling import _analysis_run
from benchmarks.training import data_time
from icl_circuits.config import apply_overrides
from icl_circuits.data import build_source
from icl_circuits.models import build_native
from icl_circuits.models.build import query_logits
from icl_circuits.presets import nguyen_reddy2024
from icl_circuits.runs.read import model_shape

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib(code: str) -> float:
    """Peak RSS (MiB) of ``code`` run in a child, read as ``getrusage(RUSAGE_CHILDREN)`` by a wrapper."""
    wrapper = (
        "import resource, subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {code!r}], check=True)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    raw = int(out.stdout.split()[-1])
    return raw / 2**20 if sys.platform == "darwin" else raw / 2**10  # bytes on macOS, KiB on Linux


def bench_memory(root: Path, scale: Scale) -> tuple[list[Goal], list[str]]:
    threads = torch.get_num_threads()
    head = f"import torch; torch.set_num_threads({threads})\nfrom icl_circuits.config import apply_overrides\n"

    def training(preset: str, steps: int) -> float:
        run = fresh(root, f"mem-{preset}")
        return peak_rss_mib(
            head + f"from icl_circuits.presets import {preset}\nfrom icl_circuits.training import train\n"
            f"cfg = apply_overrides({preset}(), ['train.steps={steps}', 'train.n_checkpoints=2', 'train.device={DEV}'])\n"
            f"train(cfg, {str(run)!r}, progress=False)\n"
        )

    rss_demo = training("demo", 20)
    ana = _analysis_run(root, "mem-analysis", ["train.steps=20", "train.n_checkpoints=3"])
    shutil.rmtree(ana / "analysis", ignore_errors=True)
    rss_ana = peak_rss_mib(
        head + f"from probes.over_training import analyze_run\nanalyze_run({str(ana)!r}, progress=False)\n"
    )
    lines = [
        "## Memory (peak RSS, each in its own subprocess)",
        "",
        "| process | peak RSS |",
        "| --- | --- |",
        f"| training, demo preset (20 steps, 2 checkpoints with eval 3 x 1024) | {rss_demo:.0f} MiB |",
        f"| analysis, demo run (3 checkpoints, full probe suite) | {rss_ana:.0f} MiB |",
    ]
    if scale.memory_nr:
        baseline = peak_rss_mib(head + "import icl_circuits.training, probes.over_training\n")
        rss_nr = training("nguyen_reddy2024", 2)
        lines += [
            f"| training, nguyen-reddy2024 preset (2 steps, 2 checkpoints with eval 3 x 1024) | {rss_nr:.0f} MiB |",
            f"| imports only (torch, transformer-lens, icl_circuits, probes) | {baseline:.0f} MiB |",
        ]
    lines += [""]
    goals = [Goal("peak RSS: demo training / analysis", f"{rss_demo:.0f} / {rss_ana:.0f} MiB", None)]
    return goals, lines


def bench_reference(root: Path, scale: Scale) -> tuple[list[Goal], list[str]]:
    cfg = apply_overrides(nguyen_reddy2024(), [f"train.device={DEV}"])
    n = scale.nr_steps
    source = build_source(cfg.data, cfg.seed, DEV)
    bs = cfg.train.batch_size
    batches = [source.train_batch(s, bs) for s in range(n)]
    ref = NguyenReddyRef(cfg.data.d + 2).to(DEV)
    ref_in = [nr_tokens(b) for b in batches]

    def ref_loss(tok, y):
        return -F.logsigmoid(y * ref(tok)).mean()

    def ref_with_data() -> float:
        opt = torch.optim.SGD(ref.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

        def step(s):
            tok, y = nr_tokens(source.train_batch(s, bs))
            loss = ref_loss(tok, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return clock(lambda: [step(s) for s in range(n)]) / n

    native = build_native(cfg.model, seed=cfg.seed, **model_shape(cfg, source)).to(DEV)
    nat_in = [(b.tokens(), b.target) for b in batches]

    def bare_loss(tok, y):
        return F.cross_entropy(query_logits(native, tok), y)

    def full_loss(tok, y):
        return F.cross_entropy(full_sequence_logits(native, tok), y)

    t_ref = median([bare_loop(ref_loss, ref.parameters(), cfg, ref_in) for _ in range(scale.rounds)])
    t_ref_data = ref_with_data()
    t_bare = bare_loop(bare_loss, native.parameters(), cfg, nat_in, warmup=1)
    t_full = bare_loop(full_loss, native.parameters(), cfg, nat_in, warmup=1)
    t_ours = train_step_time(cfg, n, root / "nr")
    t_data = median([data_time(source, bs, 3) for _ in range(scale.rounds)])
    query_only = readout_positions(native, nat_in[0][0]) == 1
    seq = lambda t: f"{bs / t:,.0f}"  # noqa: E731
    lines = [
        "## Reference implementation: Nguyen & Reddy 2024",
        "",
        f"Setting: K = {cfg.data.n_classes}, D = {cfg.data.d}, N = {cfg.data.n_pairs} context items, binary labels, SGD lr "
        f"{cfg.train.lr}, batch {bs}. The reference model (rebuilt here): LayerNorm(65) on tokens x ⊕ onehot(label) "
        "(query label zeroed), one causal single-head attention layer (Q/K/V Linear 65→195 without bias, scale 1, "
        "no positions), ReLU MLP 512-512→1 on x_last + attn_last, loss −logsigmoid(±logit); 101 tokens per "
        "sequence. Ours (`nguyen-reddy2024` preset): the same model in the packed layout "
        "(`data.layout=packed`, one token per item), trained by `train()` with evaluation between checkpoints "
        "excluded; data generated in a background thread.",
        "",
        "| loop | step | sequences / s | vs reference |",
        "| --- | --- | --- | --- |",
        f"| reference, pre-generated batches | {ms(t_ref)} | {seq(t_ref)} | 1.00x |",
        f"| reference + our data generation each step | {ms(t_ref_data)} | {seq(t_ref_data)} | {t_ref / t_ref_data:.2f}x |",
        f"| ours, `train()` | {ms(t_ours)} | {seq(t_ours)} | **{t_ref / t_ours:.3f}x** |",
        f"| our native model, bare loop (`query_logits`) | {ms(t_bare)} | {seq(t_bare)} | {t_ref / t_bare:.2f}x |",
        f"| our native model, bare loop, full-sequence readout | {ms(t_full)} | {seq(t_full)} | {t_ref / t_full:.3f}x |",
        "",
        f"The full-sequence row runs the 512-512 readout at all {nat_in[0][0].shape[1]} positions (TransformerLens's "
        "plain forward, as the bridge does for analysis); "
        + (
            "`query_logits` runs it at the query only."
            if query_only
            else "`query_logits` costs the same, so training still pays for it."
        ),
        "",
    ]
    r = t_ref / t_ours
    why = (
        ""
        if r >= 1.0
        else f"data generation ({ms(t_data)} per step) and `train()`'s bookkeeping against pre-generated batches"
    )
    goals = [
        Goal("Nguyen & Reddy 2024, same model: ours / reference loop, sequences/s ≥ 1.0x", f"{r:.3f}x", r >= 1.0, why)
    ]
    return goals, lines
