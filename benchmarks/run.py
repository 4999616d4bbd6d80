"""Benchmarks, measured in one run on one machine; writes benchmarks/RESULTS.md.

Usage: ``python benchmarks/run.py [--quick] [--threads N] [--out PATH]``.

Sections (ratios first in the report, then absolute numbers and the machine):
    training: our step rate for the demo and chan2024-stylized presets against a minimal
        hand-written PyTorch loop of the same architecture, batch and data (the eager limit),
        the same loop over our native model (which splits the gap into model and trainer
        parts), and ``torch.compile``.
    overheads: data generation as a share of the step; checkpoint + evaluation share of a
        full preset run.
    ensemble: per-seed throughput of ``train_ensemble`` at S = 16 against separate runs.
    analysis: the full probe suite per checkpoint, 100 demo checkpoints, growth with the
        number of checkpoints and of heads.
    circuits: discovered ICL and IWL circuits (EAP-IG + pruning) at 100 demo checkpoints.
    memory: peak RSS of a training run and of an analysis run, each in a subprocess.
    reference: Nguyen & Reddy 2024's reference loop rebuilt here, against our preset.
    llm: the pretrained LM (SmolLM2-135M): load time, fine-tune step and sequences/s,
        analysis per checkpoint, peak RSS, bytes per checkpoint (benchmarks/llm.py).

Every timing alternates the things it compares and reports the median of its rounds, so a
noisy neighbour slows both sides of a ratio. Runs on CUDA when available.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.circuits import bench_circuits  # noqa: E402
from benchmarks.common import DEV, FULL, OUT, QUICK, Goal, load, machine  # noqa: E402
from benchmarks.llm import bench_llm  # noqa: E402
from benchmarks.memory import bench_memory, bench_reference  # noqa: E402
from benchmarks.perf import BEGIN as PERF_BEGIN  # noqa: E402
from benchmarks.perf import END as PERF_END  # noqa: E402
from benchmarks.scaling import bench_analysis, bench_ensemble  # noqa: E402
from benchmarks.threads import keep_section  # noqa: E402
from benchmarks.training import bench_overheads, bench_training  # noqa: E402


def report(goals: list[Goal], sections: list[str], header: list[str]) -> str:
    mark = {True: "met", False: "**missed**", None: "reported"}
    lines = [
        *header,
        "## Summary: ratios and goals",
        "",
        "| goal | measured | status |",
        "| --- | --- | --- |",
        *[f"| {g.name} | {g.measured} | {mark[g.met]} |" for g in goals],
        "",
    ]
    notes = [g for g in goals if g.why]
    if notes:
        lines += ["### Missed goals and notes: measured reason, next lever", ""]
        lines += [f"- **{g.name}** ({g.measured}): {g.why}" for g in notes]
        lines += [""]
    return "\n".join(lines + sections) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in under a minute")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the report")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = QUICK if args.quick else FULL
    start, load0 = time.perf_counter(), load()
    goals: list[Goal] = []
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # A cold inductor cache, so that compile times are what a fresh machine pays.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor-cache")
        g, lines, info = bench_training(root, scale)
        goals += g
        sections += lines
        for fn in (
            lambda: bench_overheads(root, scale, info),
            lambda: bench_ensemble(root, scale, info),
            lambda: bench_analysis(root, scale),
            lambda: bench_circuits(root, scale),
            lambda: bench_memory(root, scale),
            lambda: bench_reference(root, scale),
            lambda: bench_llm(root, scale),
        ):
            g, lines = fn()
            goals += g
            sections += lines
    cmd = (
        "python benchmarks/run.py"
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads else "")
    )
    load1 = load()
    busy = any(float(x.split(",")[0]) > 0.5 for x in (load0, load1) if x != "n/a")
    header = [
        "# Benchmark results" + (" (quick smoke run)" if args.quick else ""),
        "",
        f"Machine: {machine()}.",
        f"Command: `{cmd}`; took {time.perf_counter() - start:.0f} s. Load average (1, 5, 15 min) at start: "
        f"{load0}; at end: {load1}."
        + (
            " Other processes shared this machine, so absolute numbers are noisy; ratios compare "
            "interleaved measurements taken under the same load."
            if busy
            else ""
        ),
        ""
        if DEV.type == "cuda"
        else "\nNo CUDA device here, so no GPU table; on a CUDA machine the same command measures every "
        "section on the GPU (the analysis probes run on CPU).\n",
    ]
    text = keep_section(report(goals, sections, header), args.out)  # benchmarks/threads.py's section
    text = keep_section(text, args.out, PERF_BEGIN, PERF_END)  # benchmarks/perf.py's section
    text = keep_section(text, args.out, "<!-- rules:begin -->", "<!-- rules:end -->")  # measured by hand
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
