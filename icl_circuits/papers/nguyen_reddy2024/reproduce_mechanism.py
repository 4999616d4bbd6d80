"""Nguyen & Reddy 2024's mechanism on their one-layer model: independent paths, rates not capacity.

The paper's abstract makes two mechanistic claims: the sub-circuits that memorise and that
generalise are largely independent, and the relative rates at which they learn, not capacity
constraints, explain the transition from memorising to generalising.

**Independence** (:mod:`.mechanism`): the ``nguyen-reddy2024`` preset at one N, trained at
three K (well below K*, near K*, well above K*; K* from ``reproduce nguyen-reddy2024``), no
early stop, checkpoints every 100 steps. At every checkpoint, on the run's ICL and IWL
evaluation splits, each path is mean-ablated alone and both together; at the last
checkpoint, ablating the attention should remove ICL and leave IWL, and ablating the
memorising path should remove IWL and leave ICL. The interaction term of the additive form
is measured over training against each path's own contribution. The ICL and IWL circuits are
discovered at checkpoints over training and their shared edges counted (Jaccard;
:mod:`.circuit_overlap`), on these runs and, for contrast, on the two-layer
``nguyen-reddy2024-interleaved`` preset at a K where it learns both (:data:`INTER_KS`).

**Rates, not capacity** (:mod:`.rates`): at one N, K* (the same sigmoid fit as the main
reproduction) against the MLP readout's width, and against the MLP-to-attention
learning-rate ratio ``r`` (``train.lr_scale``: attention ``r^-1/2``, MLP readout and its
output layer ``r^1/2``, embedding 1, so the geometric mean stays at ``lr``). The predictions,
stated before measuring: the kinetic theory (:mod:`.kinetics`: the memoriser's integrated
error ``~ K^nu / eta_mem`` must cover the ICL plateau ``~ N / eta_icl``) gives
``K* ~ r^(1/nu)`` and no dependence on width; a capacity account gives K* proportional to the
MLP's parameter count and no dependence on ``r``.

Same cpu-scale deviations as ``reproduce nguyen-reddy2024`` (lr 0.1, batch 64, evaluation on
256 sequences every 100 steps, short N).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd

from icl_circuits.models.build import build_native, to_bridge
from icl_circuits.papers.nguyen_reddy2024 import rates
from icl_circuits.papers.nguyen_reddy2024.circuit_overlap import run_overlap
from icl_circuits.papers.nguyen_reddy2024.claims_mechanism import circuit_claims, independence_claims, rate_claims
from icl_circuits.papers.nguyen_reddy2024.measure import per_run
from icl_circuits.papers.nguyen_reddy2024.mechanism import path_rows, paths_over_training
from icl_circuits.papers.nguyen_reddy2024.reproduce import common_overrides
from icl_circuits.reproduce.common import SWEEPS, Reproduction, pick, run_grids
from icl_circuits.reproduce.plan import Plan, Task
from icl_circuits.sweeps import SweepSpec, build_points
from icl_circuits.sweeps.sweep import run_path
from icl_circuits.training.schedule import checkpoint_steps
from probes.circuits_over_training import CircuitParams
from probes.discovery import split_circuits

CHANCE = 0.5
INTERLEAVED = "nguyen-reddy2024-interleaved"
#: The two-layer interleaved contrast at the cpu scale (pilots, 1 seed, 3,000 steps at lr 0.1: at
#: K = 1,024 ICL and IWL are both learned with 2 context items; with 4 or 8, ICL is not).
INTER_N, INTER_KS, INTER_STEPS = 2, [1024], 3000
INTER_AT = [0, 200, 500, 1000, 2000, 3000]
#: Edge scores for circuit discovery: exact patching, one patched forward pass per edge (5 edges
#: in the one-layer graph, 19 in the two-layer one), so no approximation of the ranking.
CIRCUIT_METHOD = "exact"


def settings(scale: str) -> dict:
    small = ["model.readout_hidden=[16,16]", "data.d=15", "model.d_model=17"]
    return {
        "preset": "nguyen-reddy2024",
        "inter_preset": INTERLEAVED,
        "N": pick(scale, 4, 8, 100),
        # Well below, near and well above K* (K* at N = 8: 523 in reproduce nguyen-reddy2024).
        "regimes": pick(
            scale,
            {"below": 8, "near": 32, "above": 256},
            {"below": 100, "near": 566, "above": 6400},
            {"below": 2000, "near": 20000, "above": 200000},
        ),
        "seeds": pick(scale, [0], [0, 1], [0, 1, 2]),
        "steps": pick(scale, 40, 1500, 20_000),
        "ablation_n": pick(scale, 64, 512, 2000),
        # The checkpoints the paths are ablated at (None: every checkpoint).
        "path_steps": pick(scale, None, [0, 100, 200, 400, 700, 1000, 1500], None),
        # Circuit discovery (ICL and IWL circuits, their shared edges) at these checkpoints, on
        # this many sequences per split (None: every checkpoint).
        "circuit_steps": pick(scale, None, [0, 100, 200, 400, 700, 1000, 1500], None),
        "circuit_n": pick(scale, 32, 128, 512),
        # The two-layer interleaved model for contrast: context items, K, seeds, steps.
        "inter_N": pick(scale, 2, INTER_N, INTER_N),
        "inter_Ks": pick(scale, [16], INTER_KS, INTER_KS),
        "inter_seeds": pick(scale, [0], [0, 1], [0, 1]),
        "inter_steps": pick(scale, 40, INTER_STEPS, 20_000),
        "inter_steps_at": pick(scale, None, INTER_AT, None),
        # Rates against capacity: one N, a K grid per setting, one seed per K.
        "rate_N": pick(scale, 4, 4, 100),
        "rate_Ks": pick(scale, [8, 64], [64, 128, 256, 512, 1024, 2048], [2**i for i in range(9, 18)]),
        # The ratio sweeps' K (a coarser grid at the cpu scale, for its run time).
        "ratio_Ks": pick(scale, [8, 64], [64, 256, 1024], [2**i for i in range(9, 18)]),
        "rate_seeds": pick(scale, [0], [0], [0, 1]),
        "rate_steps": pick(scale, 40, 1500, 20_000),
        "widths": pick(scale, [8, 16], [16, 32, 64, 128, 256], [32, 64, 128, 256, 512]),
        # The rate-ratio sweep's MLP width (128 at the cpu scale: a smaller step than the preset's 512).
        "ratio_width": pick(scale, 16, 128, 512),
        "ratios": pick(scale, [0.5, 2.0], [0.25, 0.5, 1.0, 2.0, 4.0], [0.25, 0.5, 1.0, 2.0, 4.0]),
        "common": common_overrides(scale, small),
        "inter_common": common_overrides(scale, ["model.readout_hidden=[16,16]", "data.d=15", "model.d_model=16"]),
        "small": pick(scale, True, False, False),
    }


def grids(s: dict) -> dict[str, tuple[str, list[str], dict[str, list]]]:
    """The reproduction's sweeps: name -> (preset, overrides, grid)."""
    base = [*s["common"], f"data.n_pairs={s['N'] - 1}", "train.stop_above=0.0", f"train.steps={s['steps']}"]
    out = {"paths": (s["preset"], base, {"data.n_classes": list(s["regimes"].values()), "seed": s["seeds"]})}
    inter = [
        *s["inter_common"],
        f"data.n_pairs={s['inter_N']}",
        "train.stop_above=0.0",
        f"train.steps={s['inter_steps']}",
    ]
    out["interleaved"] = (INTERLEAVED, inter, {"data.n_classes": s["inter_Ks"], "seed": s["inter_seeds"]})
    rate_base = [
        *s["common"],
        f"data.n_pairs={s['rate_N'] - 1}",
        f"train.steps={s['rate_steps']}",
        "train.stop_above=0.99",
    ]
    rate_grid = {"data.n_classes": s["rate_Ks"], "seed": s["rate_seeds"]}
    w = s["ratio_width"]
    for r in s["ratios"]:
        if r != 1.0:
            over = [*rate_base, f"model.readout_hidden=[{w},{w}]", rates.lr_scale_override(r)]
            out[f"ratio-{r:g}"] = (s["preset"], over, rate_grid | {"data.n_classes": s["ratio_Ks"]})
    # After the ratio sweeps, so that a pool cut short has every ratio first.
    for w in s["widths"]:
        out[f"width-{w}"] = (s["preset"], [*rate_base, f"model.readout_hidden=[{w},{w}]"], rate_grid)
    return out


def _checkpoints(spec: SweepSpec, steps: list[int] | None) -> int:
    """Checkpoints analysed per run of ``spec``: ``steps``, or all the run keeps."""
    if steps is not None:
        return len(steps)
    tc = build_points(spec)[0].config.train
    return len(checkpoint_steps(tc.steps, tc.n_checkpoints, tc.checkpoint_every))


def _timed(spec: SweepSpec, work) -> Callable[[], float]:
    """A probe: ``work(model, source)`` timed once (after a warm-up) on a fresh model of ``spec``'s first run."""

    def probe() -> float:
        cfg = build_points(spec)[0].config
        model = to_bridge(build_native(cfg.model, seed=0, **cfg.data.model_shape()))
        model.eval()
        source = cfg.data.build_source(cfg.seed)
        work(model, source)
        t0 = time.perf_counter()
        work(model, source)
        return time.perf_counter() - t0

    return probe


def plan(scale: str) -> Plan:
    """The dry run's plan: the path and rate grids in one pool of jobs, as ``run`` trains them, then
    the path ablations and the circuit discovery at their checkpoints (timed on a fresh model,
    pruned all the way as a trained one is)."""
    s = settings(scale)
    stage = {name: SweepSpec(base, tuple(over), grid) for name, (base, over, grid) in grids(s).items()}
    paths, inter = stage["paths"], stage["interleaved"]
    n_paths, n_inter = len(build_points(paths)), len(build_points(inter))
    ck_paths, ck_inter = _checkpoints(paths, s["path_steps"]), _checkpoints(inter, s["inter_steps_at"])
    ck_circ = _checkpoints(paths, s["circuit_steps"])

    def ablate(model, source):
        path_rows(model, {sp: source.eval_batch(sp, s["ablation_n"]) for sp in (source.icl_split, source.iwl_split)})

    def discover(model, source):
        # min_effect -inf: the search over edges runs, as on a trained model with a behaviour.
        split_circuits(model, source, n=s["circuit_n"], method=CIRCUIT_METHOD, min_effect=-math.inf)

    ablate_one, discover_one, discover_two = _timed(paths, ablate), _timed(paths, discover), _timed(inter, discover)
    return Plan(
        stages=(stage,),
        tasks=(
            Task(
                f"path ablations: {n_paths} runs x {ck_paths} checkpoints, {s['ablation_n']} sequences per split",
                lambda: n_paths * ck_paths * ablate_one(),
            ),
            Task(
                f"circuit discovery: one-layer {n_paths} runs x {ck_circ} checkpoints, two-layer {n_inter} runs x "
                f"{ck_inter} checkpoints, {s['circuit_n']} sequences per split",
                lambda: n_paths * ck_circ * discover_one() + n_inter * ck_inter * discover_two(),
            ),
        ),
        notes=("the K* fits over the finished runs are not timed",),
    )


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    s = settings(scale)
    N = s["N"]
    results = run_grids(out, grids(s), workers, progress)

    # Independence: every checkpoint of every run, each path ablated alone and together.
    res = results["paths"]
    sweep = out / SWEEPS / "paths"
    parts = []
    for point, g in res.groupby("point"):
        k, seed = int(g["data.n_classes"].iloc[0]), int(g["seed"].iloc[0])
        regime = next(name for name, v in s["regimes"].items() if v == k)
        table = paths_over_training(run_path(sweep, point), s["ablation_n"], s["path_steps"])
        parts.append(table.assign(regime=regime, K=k, seed=seed, N=N))
    paths = pd.concat(parts, ignore_index=True)

    # The discovered ICL and IWL circuits over training and their shared edges: the one-layer
    # runs above, and the two-layer interleaved runs for contrast.
    cparams = CircuitParams(n=s["circuit_n"], method=CIRCUIT_METHOD)
    parts = []
    for model, name, regimes, steps in (
        ("one-layer", "paths", s["regimes"], s["circuit_steps"]),
        ("two-layer", "interleaved", None, s["inter_steps_at"]),
    ):
        for point, g in results[name].groupby("point"):
            k, seed = int(g["data.n_classes"].iloc[0]), int(g["seed"].iloc[0])
            regime = "both learned" if regimes is None else next(r for r, v in regimes.items() if v == k)
            table = run_overlap(run_path(out / SWEEPS / name, point), steps, cparams)
            parts.append(table.assign(model=model, regime=regime, K=k, seed=seed))
    overlap = pd.concat(parts, ignore_index=True)

    # Rates against capacity.
    widths_runs = pd.concat(
        [per_run(results[f"width-{w}"], s["rate_N"]).assign(mlp_width=w, ratio=1.0) for w in s["widths"]],
        ignore_index=True,
    )
    ratio_runs = pd.concat(
        [
            per_run(results[f"ratio-{r:g}"], s["rate_N"]).assign(mlp_width=s["ratio_width"], ratio=r)
            for r in s["ratios"]
            if r != 1.0
        ]
        + [widths_runs[widths_runs["mlp_width"] == s["ratio_width"]]],
        ignore_index=True,
    )
    d_model = 17 if s["small"] else 65
    kw = rates.kstar_table(widths_runs, "mlp_width", CHANCE).assign(
        params=lambda t: rates.mlp_params(t["mlp_width"], d_model)
    )
    kr = rates.kstar_table(ratio_runs, "ratio", CHANCE)
    fits = rates.fits(kw, kr)
    figure = rates.figure(out, kw, kr, fits)

    rep = Reproduction("nguyen-reddy2024-mechanism", scale, s)
    rep.tables = {
        "paths": paths,
        "circuits_jaccard": overlap,
        "rate_runs": pd.concat([widths_runs, ratio_runs], ignore_index=True).drop_duplicates(
            ["K", "seed", "mlp_width", "ratio"]
        ),
        "kstar_width": kw.drop(columns="boot", errors="ignore"),
        "kstar_ratio": kr.drop(columns="boot", errors="ignore"),
        "rate_fits": pd.DataFrame([fits]),
    }
    rep.figures = [figure]
    how = (
        f"{CIRCUIT_METHOD} edge scores, faithfulness {cparams.target:g}, mean patching, {cparams.n} sequences per split"
    )
    rep.claims = independence_claims(paths, CHANCE) + circuit_claims(overlap, how) + rate_claims(kw, kr, fits)
    return rep
