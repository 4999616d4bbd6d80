"""Benchmarks, measured in one run on one machine; the one writer of benchmarks/RESULTS.md.

Usage: ``python -m benchmarks.run [--quick] [--threads N] [--out PATH]`` (from the repository
root, or anywhere with the package installed); ``--section threads`` or ``--section step-rates``
measures only that section and keeps the rest of the file as it is.

Sections (ratios first in the report, then absolute numbers and the machine):
    training: our step rate for the demo and chan2024-stylized presets against a minimal
        hand-written PyTorch loop of the same architecture, batch and data (the eager limit),
        the same loop over our native model (which splits the gap into model and trainer
        parts), and ``torch.compile``.
    overheads: data generation as a share of the step; checkpoint + evaluation share of a
        full preset run.
    ensemble: per-seed throughput of ``train_ensemble`` at S = 16 against separate runs.
    analysis: the full probe suite per checkpoint, 100 demo checkpoints, growth with the
        number of checkpoints and of heads; ``--section analysis [--run RUN]`` measures it
        alone (on RUN, a demo run of 100 checkpoints, or one trained first) and updates its
        rows of the summary.
    circuits: discovered ICL and IWL circuits (EAP-IG + pruning) at 100 demo checkpoints.
    memory: peak RSS of a training run and of an analysis run, each in a subprocess.
    reference: Nguyen & Reddy 2024's reference loop rebuilt here, against our preset.
    llm: the pretrained LM (SmolLM2-135M): load time, fine-tune step and sequences/s,
        analysis per checkpoint, peak RSS, bytes per checkpoint (benchmarks/llm.py).
    threads (``--section threads``): torch threads for training, 1 against 2, speed and
        reproducibility; sweep workers (benchmarks/threads.py).
    step-rates (``--section step-rates``): training rate against the hand-written loop with and
        without the prefetch, the data share of a step in every preset, Nguyen & Reddy against
        its reference loop, vectorised seeds and the replicate rule (benchmarks/step_rates.py).

Every timing alternates the things it compares and reports the median of its rounds, so a
noisy neighbour slows both sides of a ratio. Runs on CUDA when available.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import llc, reference_speed, scaling, step_rates, threads
from benchmarks.circuits import bench_circuits
from benchmarks.common import DEV, FULL, OUT, QUICK, Goal, load, machine
from benchmarks.llm import bench_llm
from benchmarks.memory import bench_memory, bench_reference
from benchmarks.scaling import bench_analysis, bench_ensemble
from benchmarks.training import bench_overheads, bench_training

#: The sections measured apart (``--section``), each kept between its markers when the others are.
KEPT = {
    "threads": (threads.BEGIN, threads.END),
    "step-rates": (step_rates.BEGIN, step_rates.END),
    "reference-speed": (reference_speed.BEGIN, reference_speed.END),
    "llc": (llc.BEGIN, llc.END),
}
#: Summary rows that a kept section measures (goal names start so): a main run keeps their rows.
KEPT_GOALS = (reference_speed.GOAL_ONE, reference_speed.GOAL_GRID.split("(")[0])
#: Sections of the main report that ``--section`` also measures alone: their markers (the main
#: run writes them afresh, so they are not kept).
ALSO_APART = {"analysis": (scaling.BEGIN, scaling.END)}


def update_goals(text: str, goals: list[Goal]) -> str:
    """``text`` with the summary rows and notes of ``goals`` replaced (rows matched by goal name).

    A goal without a row in the summary table is left out of it (the section carries its own
    table); a note is replaced, dropped when the goal has no note now, or added after the notes.
    """
    mark = {True: "met", False: "**missed**", None: "reported"}
    lines = text.split("\n")
    for g in goals:
        row = [i for i, line in enumerate(lines) if line.startswith(f"| {g.name} | ")]
        if row:
            lines[row[0]] = f"| {g.name} | {g.measured} | {mark[g.met]} |"
        note = [i for i, line in enumerate(lines) if line.startswith(f"- **{g.name}** (")]
        new = f"- **{g.name}** ({g.measured}): {g.why}"
        if note and g.why:
            lines[note[0]] = new
        elif note:
            del lines[note[0]]
        elif g.why and row:
            notes = [i for i, line in enumerate(lines) if line.startswith("- **")]
            if notes:
                lines.insert(notes[-1] + 1, new)
    return "\n".join(lines)


def splice(old: str, begin: str, end: str, section: str) -> str:
    """``old`` with its section between ``begin`` and ``end`` replaced by ``section`` (appended if none)."""
    section = section.rstrip("\n")  # the text around the markers keeps its own line breaks
    if begin in old and end in old:
        return old[: old.index(begin)] + section + old[old.index(end) + len(end) :]
    return old.rstrip("\n") + "\n\n" + section + "\n"


def keep_goal_rows(new_report: str, old: str, starts: tuple[str, ...] = KEPT_GOALS) -> str:
    """``new_report`` with ``old``'s summary rows whose goal starts with one of ``starts``, after its last row."""
    rows = [line for line in old.split("\n") if any(line.startswith(f"| {s}") for s in starts)]
    lines = new_report.split("\n")
    table = [i for i, line in enumerate(lines) if line.startswith("| ")]
    if not rows or not table:
        return new_report
    at = table[-1] + 1 if lines[table[0]].startswith("| goal |") else table[0]
    return "\n".join(lines[:at] + rows + lines[at:])


def keep_section(new_report: str, old: str, begin: str, end: str) -> str:
    """``new_report`` with the section between ``begin`` and ``end`` of ``old`` appended, if it has one."""
    if begin not in old or end not in old:
        return new_report
    return new_report.rstrip("\n") + "\n\n" + old[old.index(begin) : old.index(end) + len(end)] + "\n"


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
    parser.add_argument("--section", choices=["main", *KEPT, *ALSO_APART], default="main", help="what to measure")
    parser.add_argument("--rounds", type=int, default=None, help="threads / step-rates: rounds (2 / 3)")
    parser.add_argument("--steps", type=int, default=300, help="threads: training steps per run")
    parser.add_argument("--repro-steps", type=int, default=0, help="step-rates: also time chan2024's cpu grid")
    parser.add_argument("--simple-icl", type=Path, help="reference-speed: a checkout of chanb/simple_icl (iclr_2025)")
    parser.add_argument(
        "--run",
        type=Path,
        help="llc, analysis: a trained demo run folder (llc: make demo; analysis: default trains one)",
    )
    parser.add_argument("--ref-python", default="/tmp/refenv/bin/python", help="reference-speed: its venv's python")
    args = parser.parse_args(argv)
    old = args.out.read_text() if args.out.exists() else ""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.section in ALSO_APART:
        with tempfile.TemporaryDirectory() as tmp:
            goals, lines = bench_analysis(Path(tmp), QUICK if args.quick else FULL, args.run)
        section = "\n".join(lines).rstrip("\n")
        args.out.write_text(update_goals(splice(old, *ALSO_APART[args.section], section), goals))
        print(section)
        return section
    if args.section != "main":
        section_goals: list[Goal] = []  # summary rows this section measures
        if args.section == "threads":
            section = threads.measure(args.steps, max(args.rounds or 2, 2))
        elif args.section == "llc":
            if args.run is None:
                parser.error("--section llc: give --run RUN (a trained demo run, e.g. checkpoints/demo)")
            section = llc.run_section(args.run)
        elif args.section == "reference-speed":
            if args.simple_icl is None:
                parser.error("--section reference-speed: give --simple-icl PATH (scripts/reference_chan2024.py: setup)")
            section, section_goals = reference_speed.section(
                args.ref_python, args.simple_icl, (100, 500), args.rounds or 3, 17
            )
        else:
            section = step_rates.measure(args.rounds or 3, args.repro_steps, old)
        args.out.write_text(update_goals(splice(old, *KEPT[args.section], section), section_goals))
        print(section)
        return section
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
        "python -m benchmarks.run"
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
    text = keep_goal_rows(report(goals, sections, header), old)
    for begin, end in KEPT.values():
        text = keep_section(text, old, begin, end)
    text = keep_section(text, old, "<!-- rules:begin -->", "<!-- rules:end -->")  # written by hand, kept
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
