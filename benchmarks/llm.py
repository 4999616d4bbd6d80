"""The pretrained LM (icl_circuits.llm): load time, fine-tune step, analysis per checkpoint, RSS, disk.

Everything is measured in one child process (so that its peak RSS is the study's alone):
loading SmolLM2-135M-Instruct from its GGUF file into a bridge, fine-tuning steps of the
``chan2024-llm`` preset (batch 8 prompts of ~19 tokens, attention of layers 16-29 trained),
the evaluation of one checkpoint (5 task splits of 16 prompts, head scores and repeated-half
loss on 4 repeated sequences), and the bytes of one checkpoint. Skipped, with the reason,
when the model is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.common import Goal, Scale

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, statistics, sys, time
from pathlib import Path
import torch
torch.set_num_threads({threads})
t0 = time.perf_counter()
from icl_circuits.llm import load_lm
lm = load_lm()
load_s = time.perf_counter() - t0
from icl_circuits.llm import finetune as F, study as S, tasks as T
cfg = F.chan2024_llm(steps={steps}, n_checkpoints=2)
ts = T.build_taskset(lm.tokenizer, cfg.n_trained)
ev = S.Evaluator(T.eval_prompts(ts, 16), S.head_tokens(lm, 4, 16, seed=1), 16)
ticks, evals = [], []
def evaluate(lm, step):
    t = time.perf_counter(); out = ev(lm, step); evals.append(time.perf_counter() - t); return out
run = F.finetune(lm, ts, cfg, Path({run!r}), evaluate, lambda s, l: ticks.append(time.perf_counter()))
steps = [b - a for a, b in zip(ticks, ticks[1:])]
ckpt = sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"
print(json.dumps({{"load_s": load_s, "step_s": statistics.median(steps), "eval_s": statistics.median(evals),
    "ckpt_bytes": ckpt.stat().st_size, "batch": cfg.batch}}))
"""


def _child(code: str) -> tuple[dict, float]:
    """The child's JSON result and its peak RSS in MiB."""
    wrapper = (
        "import resource, subprocess, sys\n"
        f"out = subprocess.run([sys.executable, '-c', {code!r}], check=True, capture_output=True, text=True)\n"
        "print(out.stdout.strip().splitlines()[-1])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    result, rss = out.stdout.strip().splitlines()[-2:]
    return json.loads(result), int(rss) / (2**20 if sys.platform == "darwin" else 2**10)


def bench_llm(root: Path, scale: Scale) -> tuple[list[Goal], list[str]]:
    """Rows of the language-model section (skipped with the reason when the model is missing)."""
    from icl_circuits.llm.loading import ModelNotFoundError, default_gguf

    lines = ["## Pretrained language model (icl_circuits.llm, SmolLM2-135M-Instruct)", ""]
    try:
        default_gguf()
        import gguf  # noqa: F401
    except (ModelNotFoundError, ImportError) as err:
        return [], [*lines, f"Skipped: {err}", ""]
    steps = 4 if scale.rounds == 1 else 12
    r, rss = _child(CHILD.format(threads=torch.get_num_threads(), steps=steps, run=str(root / "llm-bench")))
    seqs = r["batch"] / r["step_s"]
    lines += [
        "| measurement | value |",
        "| --- | --- |",
        f"| load (GGUF -> float32 -> bridge) | {r['load_s']:.1f} s |",
        f"| fine-tune step (batch {r['batch']}, ~19 tokens, attention of layers 16-29) | {r['step_s']:.2f} s |",
        f"| fine-tune throughput | {seqs:.1f} sequences/s |",
        f"| analysis per checkpoint (5 splits x 16 prompts, head scores, repeated loss) | {r['eval_s']:.1f} s |",
        f"| peak RSS (load + fine-tune + analysis) | {rss:.0f} MiB |",
        f"| bytes per checkpoint (trained parameters only) | {r['ckpt_bytes'] / 2**20:.1f} MiB |",
        "",
        f"Median over {steps} steps and 2 checkpoint evaluations, in one child process.",
        "",
    ]
    goals = [
        Goal("LLM fine-tune step (chan2024-llm)", f"{r['step_s']:.2f} s, {seqs:.1f} seq/s", None),
        Goal("LLM analysis per checkpoint / load", f"{r['eval_s']:.1f} s / {r['load_s']:.1f} s", None),
        Goal("LLM peak RSS / checkpoint size", f"{rss:.0f} MiB / {r['ckpt_bytes'] / 2**20:.1f} MiB", None),
    ]
    return goals, lines
