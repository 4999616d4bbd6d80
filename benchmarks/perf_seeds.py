"""The seed-replicate measurements (part of ``benchmarks/perf.py``): the vectorised
ensemble's per-seed steady-state step against separate ``train()`` runs, and ``demo``'s CPU bound.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import median, ms, steady_step  # noqa: E402
from icl_circuits.config import apply_overrides  # noqa: E402
from icl_circuits.presets import get_preset  # noqa: E402
from icl_circuits.training.replicates import step_flops, vectorise_pays  # noqa: E402

#: (preset, S, per-seed goal, the ensemble's extra overrides): the goals' rows, then reported ones.
ENSEMBLE_CASES = (
    ("chan2024-stylized", 16, 2.0, ()),
    ("demo", 16, 1.5, ()),
    ("demo", 16, 1.5, ("train.compile=true",)),
    ("singh2024-induction", 16, None, ()),
    ("nguyen-reddy2024", 16, None, ()),
    ("chan2024-stylized", 3, None, ()),
    ("demo", 3, None, ()),
)
MATMULS = {"aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"}


def ensemble(root: Path, rounds: int = 2) -> tuple[list, list, dict]:
    """Per-seed steady-state step of the ensemble against ``train()``; also the two sides' steps
    of the demo rows (for :func:`cpu_bound`)."""
    rows, goals, demo = [], [], {}
    for name, s, want, extra in ENSEMBLE_CASES:
        cfg = apply_overrides(get_preset(name), ["train.device=cpu"])
        ens_cfg = apply_overrides(cfg, list(extra))
        small = "nguyen" in name
        steps, skip = (8, 3) if small else (40, 10)
        e_steps, e_skip = (6, 2) if small else ((40, 15) if extra else (24, 8))
        per_single, per_ens = [], []
        for _ in range(rounds):
            per_single.append(steady_step(cfg, [0], steps, skip, root / "single"))
            per_ens.append(steady_step(ens_cfg, list(range(s)), e_steps, e_skip, root / "ens"))
        a, b = median(per_single), median(per_ens)
        ratio = s * a / b
        flops = step_flops(cfg)
        rule = vectorise_pays(cfg, s)
        label = f"{name}, {', '.join(extra)}" if extra else name
        if name == "demo" and s == 16:
            demo["compiled" if extra else "eager"] = b / s
            demo["single"] = a
        rows.append(
            f"| {label} | {s} | {flops / 1e9:.3f} | {ms(a)} | {ms(b / s)} | **{ratio:.2f}x** "
            f"| {', '.join(f'{s * x / y:.2f}' for x, y in zip(per_single, per_ens, strict=True))} "
            f"| {'vectorised' if rule else 'separate'} |"
        )
        if want:
            goals.append(
                (f"vectorised seeds {label}: S={s} per-seed throughput ≥ {want}x", f"{ratio:.2f}x", ratio >= want)
            )
    return rows, goals, demo


def peak_gflops() -> float:
    """This core's float32 matmul rate (GFLOP/s): 2048^3 products for about a second."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0) / 1e9


def matmul_per_seed(cfg, n_seeds: int, root: Path) -> float:
    """Seconds per seed of a stacked ensemble step in its matmuls (torch.profiler's self CPU time of
    bmm / baddbmm / mm / addmm over 5 steps after 10: big ops, which the profiler barely slows)."""
    from torch.profiler import ProfilerActivity, profile

    from icl_circuits.training import ensemble as ens

    original, seen, out = ens.VmapEnsemble.step, [0], []

    def step(self, *args, **kwargs):
        seen[0] += 1
        if seen[0] != 11:
            return original(self, *args, **kwargs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                result = original(self, *args, **kwargs)
        out.append(sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS) / 1e6 / 5)
        return result

    ens.VmapEnsemble.step = step
    try:
        steady_step(cfg, list(range(n_seeds)), 14, 0, root / "profile")
    finally:
        ens.VmapEnsemble.step = original
    return out[0] / n_seeds


def cpu_bound(demo: dict, root: Path) -> list[str]:
    """The demo rows' CPU bound: what stacking could reach if every matmul ran at the core's peak."""
    cfg = apply_overrides(get_preset("demo"), ["train.device=cpu"])
    peak, flops = peak_gflops(), step_flops(cfg)
    at_peak = flops / (peak * 1e9)
    single = demo["single"]
    matmuls = matmul_per_seed(cfg, 16, root)
    rest = demo["eager"] - matmuls
    return [
        f"CPU bound for `demo` (S = 16): this core multiplies float32 matrices at {peak:.0f} GFLOP/s "
        f"(2048^3, one thread); a seed's step is {flops / 1e9:.3f} GFLOP, {ms(at_peak)} at that rate, against "
        f"{ms(single)} for the separate step: **{single / at_peak:.2f}x** if the whole step were matmuls at peak. "
        f"The stacked eager step spends {ms(matmuls)} per seed in its matmuls ({flops / matmuls / 1e9:.0f} GFLOP/s) "
        f"and {ms(rest)} outside them (elementwise ops, norms, "
        "softmax, the head layout's copies: per element, as costly per seed stacked as alone), so eager "
        f"stacking is bound by **{single / (at_peak + rest):.2f}x** (measured: {single / demo['eager']:.2f}x). "
        f"Compiled (`train.compile=true`: inductor fuses those ops) it measured {single / demo['compiled']:.2f}x "
        "against the eager separate step, the compile (about 30 s a chunk of seeds, cached after) excluded.",
        "",
    ]
