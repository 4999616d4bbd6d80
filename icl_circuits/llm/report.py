"""``icl-circuits show`` and ``analyze`` for a language-model fine-tuning run folder.

A fine-tuning run (:mod:`icl_circuits.llm.finetune`, e.g. ``reproduce chan2024-llm``'s
``runs/p0.9``) is recognised by its config's ``llm_finetune`` section. :func:`show_lines` is
what ``show`` prints; :func:`write_llm_report` writes the report of ``analyze`` into
``RUN/analysis/report-step_S-llm{VERSION}-{key}/`` (or ``out``), keyed by the last step and
its parameters and never rewritten, as the toy runs' reports are. It covers, over training:

* head scores (the induction scores logged at every checkpoint, ``analysis/heads.csv``):
  the top heads at the first and last checkpoint and a heatmap of the heads ever in a top-k;
* ICL / IWL / conflict task accuracy (``metrics.jsonl``): the competition table, the
  transitions of :func:`probes.summarize` and the conflict split's context / memory answers,
  each against its chance level;
* the top-k induction heads ablated at chosen checkpoints (mean ablation), against k random
  heads: the repeated half's loss and the ICL and IWL accuracy;
* the discovered induction circuit at the last checkpoint where the graph is small enough
  (``MAX_CIRCUIT_EDGES``), with its measured time; otherwise a line with the graph's size
  and the measured cost on SmolLM2-135M.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pandas as pd
import torch

from icl_circuits.errors import ICLError, RunFolderError
from icl_circuits.fileio import publish_dir, temp_dir
from icl_circuits.llm.finetune import FinetuneConfig, read_heads, trainable
from icl_circuits.runs import layout
from icl_circuits.runs.read import read_metrics
from icl_circuits.runs.store import latest_good_checkpoint, list_checkpoints, load_checkpoint, read_json

#: Bump when what the report computes or prints changes.
VERSION = 1
#: Largest edge graph whose circuit the report discovers (the tiny test model: 82 edges;
#: SmolLM2-135M: 70,651, about 6 minutes on one thread, docs/circuits.md).
MAX_CIRCUIT_EDGES = 5000
SUMMARY = layout.REPORT_SUMMARY


def is_llm_run(run: Path | str) -> bool:
    """Whether ``run`` is a language-model fine-tuning run folder (its config has ``llm_finetune``)."""
    path = Path(run) / layout.CONFIG
    if not path.is_file():
        return False
    raw = read_json(path)
    return isinstance(raw, dict) and isinstance(raw.get("llm_finetune"), dict)


def load_finetune_config(run: Path | str) -> FinetuneConfig:
    """The run's :class:`FinetuneConfig`; a one-line error naming the file if it is not one."""
    path = Path(run) / layout.CONFIG
    raw = read_json(path)
    try:
        return FinetuneConfig.from_dict(raw["llm_finetune"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunFolderError(f"{path}: not a fine-tuning config ({type(err).__name__}: {err})") from None


def show_lines(run: Path | str) -> list[str]:
    """What ``icl-circuits show`` prints for a fine-tuning run (before the last metrics table)."""
    run = Path(run)
    cfg = load_finetune_config(run)
    steps = list_checkpoints(run)
    span = f"steps {steps[0]}..{steps[-1]}" if steps else "none yet"
    first, stop = cfg.train_layers
    return [
        f"run folder:  {run}",
        f"config:      {cfg.name} (language-model fine-tuning: model {cfg.model}, p_relevant {cfg.p_relevant:g}, "
        f"attention of layers {first}..{stop - 1} trained, seed {cfg.seed})",
        f"checkpoints: {len(steps)} ({span}) of {cfg.steps} steps",
    ]


def load_at(run: Path, cfg: FinetuneConfig, step: int, lm=None):
    """The base model with the checkpoint's trained parameters (``lm`` reused if given)."""
    if lm is None:
        if cfg.model == "tiny":
            from icl_circuits.llm.tiny import tiny_lm

            lm = tiny_lm(seed=0)
        else:
            from icl_circuits.llm.loading import load_lm

            lm = load_lm(cfg.model)
    params = trainable(lm.model.original_model, cfg.train_layers)
    saved = load_checkpoint(run, step)["model"]
    if set(saved) != set(params):
        raise RunFolderError(f"{layout.checkpoint_dir(run, step)}: its parameters are not {cfg.model}'s trained layers")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    lm.model.original_model.eval()
    return lm


def _heads_line(heads: pd.DataFrame, step: int, k: int) -> str:
    sub = heads[(heads.step == step) & (heads.metric == "induction")].sort_values("value", ascending=False).head(k)
    return ", ".join(f"L{int(r.layer)}H{int(r.head_index)} {r.value:.2f}" for r in sub.itertuples())


def _ablation(
    lm, cfg: FinetuneConfig, heads: pd.DataFrame, step: int, k: int, n_random: int
) -> tuple[pd.DataFrame, str]:
    from icl_circuits.llm import ablation as A
    from icl_circuits.llm import heads as H
    from icl_circuits.llm import study as S
    from icl_circuits.llm import tasks as T
    from icl_circuits.llm.scoring import score_prompts, split_metrics

    scores = heads[(heads.step == step)]
    top = H.top_heads(scores, "induction", k)
    tokens = S.head_tokens(lm, cfg.head_seqs, cfg.head_half, seed=1)  # the evaluator's (chan2024-llm)
    ts = T.build_taskset(lm.tokenizer, cfg.n_trained, cfg.n_facts)
    evals = T.eval_prompts(ts, cfg.eval_size)
    prompts = evals["icl"] + evals["memorised"]

    def tasks(model) -> list[dict]:
        return split_metrics(score_prompts(model, lm.tokenizer, prompts)).to_dict("records")

    table = A.induction_ablation(lm.model, tokens, cfg.head_half, top, n_random, methods=("mean",), extra=tasks)
    table = table.assign(step=step)

    def value(cond: str, split: str, metric: str) -> float:
        sub = table[(table.condition == cond) & (table.split == split) & (table.metric == metric)]
        return float(sub.value.mean())

    names = " ".join(f"L{layer}H{h}" for layer, h in top)
    parts = [
        f"repeated-half loss {value('clean', 'repeat', 'loss_repeat_half'):.2f} -> "
        f"{value('top', 'repeat', 'loss_repeat_half'):.2f} (random {value('random', 'repeat', 'loss_repeat_half'):.2f})"
    ]
    for split in ("icl", "memorised"):
        parts.append(
            f"{split} acc {value('clean', split, 'acc'):.2f} -> {value('top', split, 'acc'):.2f} "
            f"(random {value('random', split, 'acc'):.2f})"
        )
    return (
        table,
        f"  step {step}, top {len(top)} ({names}) vs {len(top)} random heads (mean of {n_random}): " + "; ".join(parts),
    )


def _circuit_lines(lm, step: int) -> list[str]:
    from icl_circuits.llm.circuit import lm_circuit
    from probes.graph import build_graph

    n_edges = build_graph(lm.model, split_embed=False).n_edges
    if n_edges > MAX_CIRCUIT_EDGES:
        return [
            f"induction circuit: not computed ({n_edges:,} edges, over the report's {MAX_CIRCUIT_EDGES:,}; "
            "SmolLM2-135M's 70,651 edges take about 6 minutes a checkpoint on one thread: "
            "python -m icl_circuits.llm.circuit, docs/circuits.md)"
        ]
    t0 = time.perf_counter()
    found = lm_circuit(lm, n_seq=4, half=8, n_top=10, n_random=10)
    seconds = time.perf_counter() - t0
    head = (
        f"induction circuit at step {step} (repeated random tokens, AtP* scores, corrupt patching; "
        f"computed in {seconds:.1f} s)"
    )
    if not found["present"]:
        return [f"{head}: none (the induction behaviour is {found['effect']:.2f} logits, below the 1 needed)"]
    faith = f"faithfulness {found['faithfulness']:.2f}"
    if found["faithfulness"] > 1:
        faith += " (above 1: the edges left out lower the logit difference on net)"
    return [
        f"{head}: {found['size']} of {n_edges} edges, {faith}, "
        f"accuracy {found['acc_circuit']:.2f} (model {found['acc_clean']:.2f})",
        "  first edges: " + ", ".join(found["edges"]),
    ]


def write_llm_report(
    run: Path | str,
    out: Path | str | None = None,
    steps: list[int] | None = None,
    k: int = 3,
    n_random: int = 3,
    circuits: bool = True,
) -> Path:
    """The report of a fine-tuning run (see the module docstring); returns its folder.

    Args:
        run: the run folder.
        out: folder of the report (default ``RUN/analysis``).
        steps: checkpoints at which the top-k heads are ablated (default: first and last).
        k: induction heads ablated (and listed).
        n_random: random draws of k heads.
        circuits: discover the circuit at the last checkpoint where the graph allows.
    """
    from icl_circuits.llm import study as S
    from probes import figures
    from probes.competition import summarize

    run = Path(run)
    cfg = load_finetune_config(run)
    available = list_checkpoints(run)
    last = latest_good_checkpoint(run)
    if last is None:
        raise RunFolderError(f"{run / layout.CHECKPOINTS}: no readable checkpoint")
    chosen = sorted(set(steps if steps is not None else [available[0], last]))
    missing = [s for s in chosen if s not in available]
    if missing:
        raise ICLError(f"steps: no checkpoint at step {missing[0]} in {run}")
    heads = read_heads(run)
    blob = json.dumps({"version": VERSION, "steps": chosen, "k": k, "n_random": n_random, "circuits": circuits})
    key = f"llm{VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    root = Path(out) if out is not None else run / layout.ANALYSIS
    final = root / f"{layout.REPORT_PREFIX}{layout.step_dirname(last)}-{key}"
    if (final / SUMMARY).exists():
        return final
    tmp = temp_dir(final)

    table = S.competition(run)
    table = table[table.index <= last]
    table.to_csv(tmp / layout.REPORT_COMPETITION)
    transitions = summarize(table)
    figures.save(figures.competition_figure(table, transitions), tmp / layout.REPORT_FIG_COMPETITION)
    metrics = read_metrics(run)
    chance = metrics[metrics.metric == "chance"].groupby("split").value.mean()
    lines = [
        f"run: {run} ({cfg.name}: language-model fine-tuning of {cfg.model}, p_relevant {cfg.p_relevant:g}; "
        f"{len(table)} checkpoints, final step {last} of {cfg.steps})"
    ]
    for name, tr in transitions.items():
        split = S.ICL_SPLIT if name == "ICL" else S.IWL_SPLIT
        lines.append(f"{tr.describe()} [{split} split, chance {chance.get(split, float('nan')):.2f}]")
    if "conflict_context" in table:
        first, end = table.iloc[0], table.iloc[-1]
        lines.append(
            f"conflict (context and memory disagree): context answer {first['conflict_context']:.2f} -> "
            f"{end['conflict_context']:.2f}, memorised answer {first['conflict_memory']:.2f} -> "
            f"{end['conflict_memory']:.2f} (first -> last checkpoint; chance {chance.get('conflict', float('nan')):.2f})"
        )
    if not heads.empty:
        lines.append(
            f"top induction heads (repeated random tokens): step {available[0]}: {_heads_line(heads, available[0], k)}; "
            f"step {last}: {_heads_line(heads, last, k)}"
        )
        ind = heads[heads.metric == "induction"]
        ever = {
            (int(r.layer), int(r.head_index))
            for s in sorted(set(ind.step))
            for r in ind[ind.step == s].nlargest(k, "value").itertuples()
        }
        shown = ind[[(int(a), int(b)) in ever for a, b in zip(ind.layer, ind.head_index, strict=True)]]
        df = shown.assign(condition="clean", metric="induction")
        figures.save(
            figures.head_heatmap(df, "induction", vmin=0.0, vmax=1.0),
            tmp / layout.REPORT_FIG_HEADS.format(metric="induction"),
        )
    lm, ablations = None, []
    lines.append(f"top {k} induction heads ablated (mean ablation), clean -> ablated:")
    t0 = time.perf_counter()
    for step in chosen:
        lm = load_at(run, cfg, step, lm)
        abl, line = _ablation(lm, cfg, heads, step, k, n_random)
        ablations.append(abl)
        lines.append(line)
    pd.concat(ablations, ignore_index=True).to_csv(tmp / layout.REPORT_LLM_ABLATION, index=False)
    lines[-len(chosen) - 1] += f" [{time.perf_counter() - t0:.1f} s]"
    if circuits:
        lm = load_at(run, cfg, last, lm)
        lines += _circuit_lines(lm, last)
    (tmp / SUMMARY).write_text("\n".join(lines) + "\n")
    publish_dir(tmp, final)
    return final
