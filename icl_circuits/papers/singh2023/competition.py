"""Is ICL's transience a competition between circuits? Measurements on the transient runs.

On a run whose ICL fades (Singh et al. 2023's question, their abstract: "initial evidence that
ICL transience may be caused by competition between ICL and IWL circuits"):

* :func:`head_scores_over_training`: every head's induction and previous-token scores at every
  checkpoint, next to ICL and IWL accuracy.
* :func:`circuit_heads`: the heads of the ICL and IWL circuits that ``discover_run`` finds at
  each checkpoint, with their faithfulness; :func:`shared_components` says which heads both use
  and when, and whether the heads the ICL circuit loses after its peak join the IWL circuit
  (competition for shared heads) or the IWL circuit grows elsewhere (parallel paths).
* :func:`causal_configs`: interventions during training from the ICL peak (forks of the run,
  :func:`icl_circuits.training.interventions.fork_run`), each with a control of equal size:
  ``block``: the query's direct path into the readout (the route a memorised answer takes from
  the query's own embedding) cut, against ``block-control``: the direct path of one random head
  outside the ICL circuit; ``freeze``: the ICL circuit's heads frozen, against
  ``freeze-control``: as many random heads outside it frozen.
* :func:`causal_forks` names the forks of a run (:class:`~icl_circuits.papers.singh2023.forks.Fork`),
  :func:`causal_rows` reads them once trained (ICL as trained and with the direct path cut at
  evaluation), and :func:`verdict` sets each fork's ICL against its control's and the plain run's,
  with :func:`verdict_of` the verdict those numbers give; :func:`run_causal` does all three for
  one run.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd

from icl_circuits.config import RunConfig
from icl_circuits.data import build_source
from icl_circuits.intervention_config import InterventionConfig
from icl_circuits.papers.singh2023.forks import Fork, train_forks
from icl_circuits.runs.read import load_config, load_model, read_metrics
from icl_circuits.runs.store import list_checkpoints
from probes.scores import attention_scores

HEAD = re.compile(r"L(\d+)H(\d+)")
#: Per-head scores kept from :func:`probes.scores.attention_scores`.
SCORES = ("task_induction", "prev_token")
#: The ICL circuit's main heads carry this share of its edge weight (:func:`main_heads`).
HEAD_SHARE = 0.5
#: A causal effect counts when the fork's final ICL differs from its control's by more than this.
EFFECT = 0.1


def accuracy_curves(run: Path) -> pd.DataFrame:
    """``step, ICL, IWL, loss`` of a run (its data's ICL and IWL splits)."""
    cfg = load_config(run)
    source = cfg.data.source_class()
    m = read_metrics(run)
    acc = m[m["metric"] == "acc"].pivot_table(index="step", columns="split", values="value")
    loss = m[(m["split"] == "train") & (m["metric"] == "loss")].set_index("step")["value"]
    out = pd.DataFrame({"ICL": acc[source.icl_split], "IWL": acc[source.iwl_split], "loss": loss})
    return out.rename_axis("step").reset_index()


def peak_step(run: Path) -> int:
    """The checkpoint where ICL accuracy is highest (the first of equal maxima)."""
    curve = accuracy_curves(run)
    return int(curve.loc[curve["ICL"].idxmax(), "step"])


def head_scores_over_training(run: Path, steps: list[int] | None = None, n: int = 256) -> pd.DataFrame:
    """``step, layer, head_index, metric, value`` for :data:`SCORES` at each checkpoint."""
    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    batch = source.eval_batch(source.icl_split, n)
    rows = []
    for step in steps or list_checkpoints(run):
        scores = attention_scores(load_model(run, step), batch)
        rows.append(scores[scores["metric"].isin(SCORES)].assign(step=step))
    return pd.concat(rows, ignore_index=True)[["step", "layer", "head_index", "metric", "value"]]


def accuracy_with_path_cut(run: Path, steps: list[int] | None = None) -> pd.DataFrame:
    """``step, ICL, IWL, ICL_cut, IWL_cut``: accuracy of each checkpoint as trained and with the
    query's direct path into the readout cut at evaluation only (the weights unchanged)."""
    from icl_circuits.metrics import eval_sets, evaluate
    from icl_circuits.runs.read import load_native
    from icl_circuits.training.interventions import Interventions

    cfg = load_config(run)
    source = build_source(cfg.data, cfg.seed, "cpu")
    evals = eval_sets(source, cfg.train.eval_size)
    cut = [InterventionConfig(kind="path", targets=("embed",))]
    rows = []
    for step in steps or list_checkpoints(run):
        model = load_native(run, step)
        row: dict = {"step": step}
        for suffix, got in (
            ("", evaluate(model, evals, source.n_labels)),
            ("_cut", Interventions(model, cut).evaluate(evals, source.n_labels, 0)),
        ):
            acc = {r["split"]: r["value"] for r in got if r["metric"] == "acc"}
            row[f"ICL{suffix}"], row[f"IWL{suffix}"] = acc[source.icl_split], acc[source.iwl_split]
        rows.append(row)
    return pd.DataFrame(rows)


def heads_of(edges: str) -> frozenset[str]:
    """The heads ``L{l}H{h}`` an edge list (space-separated ``sender->receiver``) runs through."""
    return frozenset(f"L{a}H{b}" for a, b in HEAD.findall(edges or ""))


def circuit_heads(circuits: pd.DataFrame) -> pd.DataFrame:
    """``step, role, present, faithfulness, n_edges, heads`` from ``discover_run``'s circuits."""
    out = circuits[circuits["role"].isin(["ICL", "IWL"])].copy()
    out["heads"] = out["edges"].map(lambda e: " ".join(sorted(heads_of(e))))
    return out[["step", "role", "present", "faithfulness", "n_edges", "heads"]].reset_index(drop=True)


def shared_components(heads: pd.DataFrame, peak: int) -> pd.DataFrame:
    """Per checkpoint: the ICL and IWL circuits' heads, the shared ones, and (after ``peak``)
    the heads the ICL circuit lost since the peak and how many of those the IWL circuit uses."""
    at = {(r.step, r.role): set(r.heads.split()) if r.present else set() for r in heads.itertuples()}
    steps = sorted({s for s, _ in at})
    icl_peak = at.get((peak, "ICL"), set())
    rows = []
    for step in steps:
        icl, iwl = at.get((step, "ICL"), set()), at.get((step, "IWL"), set())
        lost = icl_peak - icl if step > peak else set()
        rows.append(
            {
                "step": step,
                "icl_heads": " ".join(sorted(icl)),
                "iwl_heads": " ".join(sorted(iwl)),
                "shared": " ".join(sorted(icl & iwl)),
                "n_shared": len(icl & iwl),
                "icl_lost_since_peak": " ".join(sorted(lost)),
                "lost_taken_by_iwl": len(lost & iwl),
                "iwl_outside_peak_icl": len(iwl - icl_peak),
            }
        )
    return pd.DataFrame(rows)


def causal_configs(cfg: RunConfig, peak: int, icl_heads: set[str], seed: int = 0) -> dict[str, RunConfig]:
    """The forks' configs from ``peak`` (names ``block``, ``block-control``, ``freeze``,
    ``freeze-control``); a control that has no head outside the ICL circuit to draw is left out."""
    rng = random.Random(seed)
    every = [f"L{layer}H{h}" for layer in range(cfg.model.n_layers) for h in range(cfg.model.n_heads)]
    outside = [h for h in every if h not in icl_heads]

    def with_iv(*ivs: InterventionConfig) -> RunConfig:
        return cfg.replace(train=cfg.train.replace(interventions=ivs))

    out = {"block": with_iv(InterventionConfig(kind="path", targets=("embed",), start=peak))}
    if outside:
        other = rng.choice(outside)
        out["block-control"] = with_iv(InterventionConfig(kind="path", targets=(other,), start=peak))
    if icl_heads:
        out["freeze"] = with_iv(InterventionConfig(kind="freeze", targets=tuple(sorted(icl_heads)), start=peak))
        if len(outside) >= len(icl_heads):
            drawn = tuple(sorted(rng.sample(outside, len(icl_heads))))
            out["freeze-control"] = with_iv(InterventionConfig(kind="freeze", targets=drawn, start=peak))
    return out


def fork_summary(run: Path, peak: int, end: int | None) -> dict:
    """ICL and IWL of a run at the peak and at checkpoint ``end`` (or its last one before; None:
    the last), as trained, and ICL there with the query's direct path cut at evaluation only
    (``ICL_end_cut``, :func:`accuracy_with_path_cut`)."""
    curve = accuracy_curves(run).set_index("step")
    last = curve.loc[:end].iloc[-1]
    step = int(curve.loc[:end].index[-1])
    return {
        "ICL_peak": float(curve.loc[peak, "ICL"]),
        "end": step,
        "ICL_end": float(last["ICL"]),
        "IWL_end": float(last["IWL"]),
        "loss_end": float(last["loss"]),
        "ICL_end_cut": float(accuracy_with_path_cut(run, [step])["ICL_cut"].iloc[0]),
    }


#: The verdicts :func:`verdict_of` gives.
INDEPENDENT = "independent paths (the ICL circuit intact, outvoted at the readout)"
READOUT = "competition at the shared readout (it stops reading the ICL circuit)"
SHARED = "competition in the ICL circuit (its own weights fade)"
UNDECIDED = "undecided"


def verdict_of(block_effect: float, freeze_effect: float, cut_gain: float, effect: float = EFFECT) -> str:
    """The verdict of one run's tests.

    Args:
        block_effect: ICL at the end of the ``block`` fork minus its control's.
        freeze_effect: ICL at the end of the ``freeze`` fork minus its control's.
        cut_gain: the plain run's ICL at the same step with the query's direct path cut at
            evaluation only, minus its ICL as trained.
        effect: the margin each comparison must pass.

    Competition in the ICL circuit: keeping its heads as they were at the peak stops the fade
    (``freeze_effect > effect``). Otherwise, when blocking the replacing route keeps ICL
    (``block_effect > effect``) and freezing the ICL heads leaves ICL within ``effect`` of its
    control: independent paths if the plain run's ICL circuit still answers once the direct path
    is cut (``cut_gain > effect``: it is outvoted), competition at the shared readout if it does
    not (the readout no longer reads it). Anything else is :data:`UNDECIDED`.
    """
    if pd.notna(freeze_effect) and freeze_effect > effect:
        return SHARED
    if pd.notna(block_effect) and pd.notna(freeze_effect) and block_effect > effect and abs(freeze_effect) <= effect:
        return INDEPENDENT if cut_gain > effect else READOUT
    return UNDECIDED


def verdict(table: pd.DataFrame) -> pd.DataFrame:
    """Per condition and seed: each test's final ICL against the plain run's and its control's,
    the plain run's gain from the evaluation-time cut, and :func:`verdict_of` them.

    ``block_effect`` = ICL_end(block) - ICL_end(block-control); ``freeze_effect`` likewise;
    ``cut_gain`` = ICL_end_cut(plain) - ICL_end(plain).
    """
    rows = []
    for (cond, seed), g in table.groupby(["condition", "seed"]):
        t = g.set_index("test")
        end = t["ICL_end"]
        row = {"condition": cond, "seed": int(seed), "plain": end.get("plain")}
        row["plain_cut"] = t["ICL_end_cut"].get("plain", float("nan")) if "ICL_end_cut" in t else float("nan")
        row["cut_gain"] = row["plain_cut"] - row["plain"]
        for test in ("block", "freeze"):
            row[test] = end.get(test)
            row[f"{test}_control"] = end.get(f"{test}-control")
            both = test in end and f"{test}-control" in end
            row[f"{test}_effect"] = float(end[test] - end[f"{test}-control"]) if both else float("nan")
        row["freeze_cut"] = t["ICL_end_cut"].get("freeze", float("nan")) if "ICL_end_cut" in t else float("nan")
        row["verdict"] = verdict_of(row["block_effect"], row["freeze_effect"], row["cut_gain"])
        rows.append(row)
    return pd.DataFrame(rows)


def main_heads(edges: pd.DataFrame, split: str, share: float = HEAD_SHARE) -> set[str]:
    """The heads carrying ``share`` of a circuit's edge weight: each head's weight is the sum of
    ``|score|`` over the circuit's edges that start or end at it; heads are taken by weight, largest
    first, until their weights add up to ``share`` of all heads' weight. (A discovered circuit
    at the faithfulness target often touches every head; this is its core.)"""
    e = edges[(edges["split"] == split) & edges["in_circuit"].astype(bool)]
    weight: dict[str, float] = {}
    for edge, score in zip(e["edge"], e["score"], strict=True):
        for a, b in HEAD.findall(edge):
            weight[f"L{a}H{b}"] = weight.get(f"L{a}H{b}", 0.0) + abs(float(score))
    total, out, acc = sum(weight.values()), set(), 0.0
    for head, w in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0])):
        if total == 0 or acc >= share * total:
            break
        out.add(head)
        acc += w
    return out


def readout_scores(edges: pd.DataFrame) -> pd.DataFrame:
    """Per step and split: the edge score of the query's direct path into the readout
    (``emb.x->readout``) and the summed scores of the heads' edges into the readout."""
    rows = []
    for (step, split), g in edges.groupby(["step", "split"]):
        into = g[g["edge"].str.endswith("->readout")]
        direct = into[into["edge"] == "emb.x->readout"]["score"]
        heads = into[into["edge"].str.match(r"L\d+H\d+->readout")]["score"]
        rows.append(
            {
                "step": int(step),
                "split": split,
                "direct_path": float(direct.iloc[0]) if len(direct) else float("nan"),
                "heads_to_readout": float(heads.sum()),
            }
        )
    return pd.DataFrame(rows)


def peak_forks(base: Path) -> tuple[int, set[str], dict[str, RunConfig]]:
    """``(peak, the ICL circuit's main heads at the peak, the forks' configs)`` of a run."""
    from probes.circuits_over_training import discover_run

    cfg = load_config(base)
    peak = peak_step(base)
    _, edges = discover_run(base, steps=[peak])
    icl_heads = main_heads(edges, cfg.data.source_class().icl_split)
    return peak, icl_heads, causal_configs(cfg, peak, icl_heads, seed=cfg.seed)


def causal_forks(base: Path, out: Path, horizon: int | None = None) -> tuple[int, set[str], list[Fork]]:
    """Discover the ICL circuit at ``base``'s peak and name the four tests' forks from there
    (folders ``out/NAME``), each to be trained to ``horizon`` (default: the run's end)."""
    peak, icl_heads, configs = peak_forks(base)
    forks = [Fork(name, base, peak, cfg, out / name, horizon) for name, cfg in configs.items()]
    return peak, icl_heads, forks


def causal_rows(base: Path, peak: int, icl_heads: set[str], forks: list[Fork]) -> list[dict]:
    """One row per trained fork and ``plain`` (the base run): ICL and IWL at the peak and at the end."""
    end = forks[0].last if forks else load_config(base).train.steps
    rows = [{"test": "plain", "targets": "", **fork_summary(base, peak, end)}]
    for fork in forks:
        targets = " ".join(t for iv in fork.cfg.train.interventions for t in iv.targets)
        rows.append({"test": fork.name, "targets": targets, **fork_summary(fork.folder, peak, end)})
    return [{"peak": peak, "icl_heads": " ".join(sorted(icl_heads)), **r} for r in rows]


def run_causal(base: Path, out: Path, horizon: int | None = None, workers: int | None = 1) -> list[dict]:
    """:func:`causal_forks`, trained (:func:`train_forks`; resumable), and :func:`causal_rows`."""
    peak, icl_heads, forks = causal_forks(base, out, horizon)
    train_forks(forks, workers)
    return causal_rows(base, peak, icl_heads, forks)
