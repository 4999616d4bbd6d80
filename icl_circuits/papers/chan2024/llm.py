"""Chan et al. 2024, §5, on an open LM: fine-tuning that makes memorising possible costs ICL.

Chan, Chen, György & Schuurmans (2024) fine-tune Gemini Nano on prompt collections where
memorising is possible and report that its in-context learning drops. Here, offline, on
SmolLM2-135M-Instruct (:mod:`icl_circuits.llm`):

1. The base model's induction heads (repeated random tokens), checked by ablating the top-k
   against k random heads (zero and mean ablation): the repeated half's loss and the tasks.
2. Two fine-tuning runs (preset ``chan2024-llm``: attention of layers 16-29, AdamW) on a fixed
   set of made-up names with fixed cities, the query's fact in context with probability
   ``p_relevant`` (low and high), evaluated at ~16 log-spaced checkpoints: ICL on held-out
   names, memorisation of the trained facts, conflicts, pretrained knowledge, head scores.

Scales: ``smoke`` runs the tiny random Llama (plumbing only); ``cpu`` the real model, 150
steps per run; ``full`` 600 steps, 3 p_relevant values, larger evaluation sets.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch
from scipy.stats import spearmanr

from icl_circuits.llm import ablation as A
from icl_circuits.llm import heads as H
from icl_circuits.llm import study as S
from icl_circuits.llm import tasks as T
from icl_circuits.llm.finetune import answer_loss, batch_at, chan2024_llm, encode_batch, finetune, trainable
from icl_circuits.llm.scoring import keep_known, score_prompts, split_metrics
from icl_circuits.reproduce.common import Claim, Reproduction, pick
from icl_circuits.reproduce.plan import Plan, Task, linear_seconds
from probes.figures import save

RUNS = "runs"
#: "Memorised": accuracy on the trained facts up by at least this from step 0.
MEM_RISE = 0.3


def load(model: str):
    """The model of a scale: ``tiny`` (random test model) or a :func:`load_lm` spec."""
    if model == "tiny":
        from icl_circuits.llm.tiny import tiny_lm

        return tiny_lm(seed=0)
    from icl_circuits.llm import load_lm

    return load_lm(model)


def settings_for(scale: str) -> dict:
    return {
        "model": pick(scale, "tiny", "smollm2-135m", "smollm2-135m"),
        "p_relevant": pick(scale, [0.0, 0.9], [0.0, 0.9], [0.0, 0.1, 0.5, 0.9]),
        "steps": pick(scale, 4, 150, 600),
        "n_checkpoints": pick(scale, 3, 16, 24),
        "eval_size": pick(scale, 3, 16, 32),
        "train_layers": pick(scale, (1, 2), (16, 30), (16, 30)),
        "head_seqs": pick(scale, 2, 8, 16),
        "head_half": pick(scale, 6, 24, 32),
        "k_heads": pick(scale, 2, 10, 10),
        "n_random": pick(scale, 2, 3, 5),
        "n_trained": pick(scale, 8, 24, 24),
    }


def base_study(lm, ts: T.TaskSet, st: dict) -> tuple[pd.DataFrame, pd.DataFrame, list, dict]:
    """Head scores, the known capitals, and the top-k vs random ablation of the base model."""
    tokens = S.head_tokens(lm, st["head_seqs"], st["head_half"])
    scores = H.head_scores(lm.model, tokens, st["head_half"])
    top = H.top_heads(scores, "induction", st["k_heads"])
    known = keep_known(lm.model, lm.tokenizer, [T.knowledge_prompt(c, ts) for c in ts.capitals])
    countries = [c for c in ts.capitals if T.capital_query(c) in {p.text for p in known}]
    evals = T.eval_prompts(ts, st["eval_size"], known=countries)

    def tasks(model) -> list[dict]:
        flat = evals["icl"] + evals["knowledge"]
        return split_metrics(score_prompts(model, lm.tokenizer, flat)).to_dict("records")

    abl = A.induction_ablation(lm.model, tokens, st["head_half"], top, st["n_random"], extra=tasks)
    return scores, abl, top, {"evals": evals, "known": countries}


def threads() -> int:
    """Torch threads: all cores on a free machine, one when others keep the cores busy.

    On busy cores threads wait on each other's time slices, so one thread is faster there
    (``benchmarks/RESULTS.md``, "Threads for fine-tuning the language model").
    """
    cores = os.cpu_count() or 1
    return 1 if os.getloadavg()[0] > cores else cores


def plan(scale: str) -> Plan:
    """The dry run's plan: no sweeps; the fine-tuning runs, timed by a few steps of the real model."""
    st = settings_for(scale)

    def probe() -> float:
        lm = load(st["model"])
        ts = T.build_taskset(lm.tokenizer, st["n_trained"])
        cfg = chan2024_llm(model=st["model"], n_trained=st["n_trained"], train_layers=st["train_layers"])
        hf = lm.model.original_model
        opt = torch.optim.AdamW(trainable(hf, cfg.train_layers).values(), lr=0.0)
        hf.train()

        def steps(k: int) -> None:
            for step in range(k):
                answer_loss(hf, *encode_batch(lm.tokenizer, batch_at(ts, cfg, step))).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        return linear_seconds(steps, [st["steps"]] * len(st["p_relevant"]), small=(1, 3))

    name = f"fine-tuning {st['model']}: {len(st['p_relevant'])} runs of {st['steps']} steps (p_relevant {st['p_relevant']})"
    note = f"not timed: the base model's head study and the evaluations at {st['n_checkpoints']} checkpoints per run"
    return Plan(stages=(), tasks=(Task(name, probe),), notes=(note,))


def run(out: Path, scale: str = "cpu", workers: int | None = None, progress: bool = True) -> Reproduction:
    """Run the study into ``out`` (the fine-tuning runs in ``out/runs/p<p_relevant>``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads())
    try:
        return _run(out, scale, progress)
    finally:
        torch.set_num_threads(before)


def _run(out: Path, scale: str, progress: bool) -> Reproduction:
    st = settings_for(scale)
    torch.manual_seed(0)
    lm = load(st["model"])
    ts = T.build_taskset(lm.tokenizer, st["n_trained"])
    scores, abl, top, base = base_study(lm, ts, st)
    evaluator = S.Evaluator(base["evals"], S.head_tokens(lm, 4, 16, seed=1), 16, top)
    hf = lm.model.original_model
    initial = {k: v.detach().clone() for k, v in trainable(hf, st["train_layers"]).items()}
    comps, changes = {}, []
    for p in st["p_relevant"]:
        with torch.no_grad():
            for k, v in trainable(hf, st["train_layers"]).items():
                v.copy_(initial[k])
        cfg = chan2024_llm(
            model=st["model"],
            p_relevant=p,
            n_trained=st["n_trained"],
            steps=st["steps"],
            n_checkpoints=st["n_checkpoints"],
            eval_size=st["eval_size"],
            train_layers=st["train_layers"],
        )
        folder = out / RUNS / f"p{p}"
        finetune(lm, ts, cfg, folder, evaluator, _ticker(p) if progress else None)
        comps[p] = S.competition(folder)
        changes.append(S.head_changes(folder, k=st["k_heads"]).assign(p_relevant=p))
    curves = pd.concat([c.reset_index().assign(p_relevant=p) for p, c in comps.items()], ignore_index=True)
    heads_change = pd.concat(changes, ignore_index=True)
    claims = make_claims(abl, comps, heads_change, scores, top, base, ts, st["eval_size"])
    fig = figure(comps, out / "chan2024_llm_curves.png", ts.chance)
    settings = {**st, "known_capitals": len(base["known"]), "cities": len(ts.cities), "chance": ts.chance}
    tables = {"head_scores": scores, "ablation": abl, "curves": curves, "head_changes": heads_change}
    return Reproduction("chan2024-llm", scale, settings, claims, tables, [fig])


def _ticker(p: float):
    def tick(step: int, loss: float) -> None:
        if step % 10 == 0:
            print(f"chan2024-llm p_relevant={p}: step {step}, loss {loss:.3f}", flush=True)

    return tick


def _f(x: float) -> str:
    return f"{x:.2f}"


def make_claims(abl, comps, heads_change, scores, top, base, ts, n_prompts: int) -> list[Claim]:
    """The claims; each fine-tuning claim is one seed with ``n_prompts`` prompts per split, which it says."""
    summary = A.ablation_summary(abl)
    task = abl[(abl.split == "icl") & (abl.metric == "acc")]
    ps = sorted(comps)
    lo, hi = comps[ps[0]], comps[ps[-1]]
    by = {r.method: r for r in summary.itertuples()}
    top_txt = ", ".join(f"L{layer}H{h}" for layer, h in top[:5])
    ind = scores[scores.metric == "induction"].set_index(["layer", "head_index"]).value
    claims = [
        Claim(
            "the LM has induction heads (attention to the token after the earlier copy)",
            "Olsson et al. 2022: induction heads in every LM studied",
            f"top {len(top)} heads {top_txt}…; scores {_f(ind.loc[top[0]])}…{_f(ind.loc[top[-1]])}",
            bool(ind.loc[top[0]] >= 0.3),
        ),
        Claim(
            f"ablating the top-{len(top)} induction heads raises the repeated-half loss far more than "
            f"{len(top)} random heads",
            "(Olsson et al. 2022)",
            "; ".join(
                f"{m}: {_f(r.clean)} -> {_f(r.top)} (top, {r.top_increase:+.2f}) vs {_f(r.random)} "
                f"(random mean, {r.random_increase:+.2f})"
                for m, r in by.items()
            ),
            bool(all(r.top_increase > 1.0 and r.top_increase >= 3 * max(r.random_increase, 0.0) for r in by.values())),
        ),
        Claim(
            "… and ICL on the held-out-name task",
            "–",
            "; ".join(
                f"{m}: acc {_f(task[task.condition == 'clean'].value.iloc[0])} -> "
                f"{_f(g[g.condition == 'top'].value.mean())} (top) vs {_f(g[g.condition == 'random'].value.mean())} (random)"
                for m, g in task[task.condition != "clean"].groupby("method")
            )
            + f" (chance {_f(ts.chance)})",
            None,
        ),
    ]
    mem0, mem1 = lo.IWL.iloc[0], lo.IWL.iloc[-1]
    icl0, icl1 = lo.ICL.iloc[0], lo.ICL.iloc[-1]
    corr = float(spearmanr(lo.ICL, lo.IWL, nan_policy="omit").statistic)
    peak_step = lo.ICL.idxmax()
    peak = lo.ICL.loc[peak_step]
    risen = lo.IWL[lo.IWL >= mem0 + MEM_RISE]
    mem_step = risen.index[0] if len(risen) else None
    single = f"one seed, {n_prompts} prompts per split: a single observation"
    claims += [
        Claim(
            f"fine-tuning memorises the trained facts (p_relevant={ps[0]}: memorised accuracy up by >= {MEM_RISE}) "
            "[checkpoint: last]",
            "memorisation possible by design",
            f"memorised acc {_f(mem0)} -> {_f(mem1)} (chance {_f(ts.chance)})",
            bool(mem1 - mem0 >= MEM_RISE),
        ),
        Claim(
            f"after fine-tuning to memorise (p_relevant={ps[0]}), ICL on held-out in-context prompts is below its "
            f"peak by >= 0.15 and memorisation has risen by >= {MEM_RISE} since that peak ({single}) "
            "[every checkpoint]",
            "Gemini Nano's ICL drops after such fine-tuning (§5)",
            f"p_relevant={ps[0]}: ICL {_f(icl0)} at step 0, peak {_f(peak)} at step {peak_step} "
            f"(memorised {_f(lo.IWL.loc[peak_step])}), final {_f(icl1)} (memorised {_f(mem1)}); "
            f"Spearman(ICL, memorised) over checkpoints {corr:.2f}",
            bool(peak - icl1 >= 0.15 and mem1 - lo.IWL.loc[peak_step] >= MEM_RISE),
        ),
        Claim(
            f"ICL falls as memorisation rises, not before (p_relevant={ps[0]}): when memorisation first reaches "
            f"{MEM_RISE} above its start, ICL is still >= half its peak ({single}) [every checkpoint]",
            "not stated in the paper (it reports ICL after fine-tuning)",
            f"memorisation {_f(mem0)} + {MEM_RISE} first reached at step "
            f"{mem_step if mem_step is not None else 'never'}; ICL there "
            f"{_f(lo.ICL.loc[mem_step]) if mem_step is not None else '–'} (peak {_f(peak)} at step {peak_step})",
            bool(mem_step is not None and lo.ICL.loc[mem_step] >= peak / 2),
        ),
        Claim(
            f"rarer relevant context (lower p_relevant) costs more ICL (final ICL at p_relevant={ps[0]} >= 0.1 "
            f"below p_relevant={ps[-1]}; {single}) [checkpoint: last]",
            "ICL falls as p_relevant falls (stylized data, §3-4)",
            "; ".join(
                f"p={p}: final ICL {_f(comps[p].ICL.iloc[-1])}, memorised {_f(comps[p].IWL.iloc[-1])}" for p in ps
            ),
            bool(lo.ICL.iloc[-1] <= hi.ICL.iloc[-1] - 0.1),
        ),
        Claim(
            "conflicts (context contradicts a trained fact) are resolved from memory after fine-tuning",
            "–",
            "; ".join(
                f"p={p}: context {_f(c.conflict_context.iloc[0])} -> {_f(c.conflict_context.iloc[-1])}, "
                f"memory {_f(c.conflict_memory.iloc[0])} -> {_f(c.conflict_memory.iloc[-1])}"
                for p, c in comps.items()
            ),
            bool(lo.conflict_memory.iloc[-1] > lo.conflict_context.iloc[-1]),
        ),
        Claim(
            "pretrained knowledge (capitals the base model knows) survives",
            "–",
            f"{len(base['known'])} known capitals; "
            + "; ".join(
                f"p={p}: acc {_f(c.knowledge.iloc[0])} -> {_f(c.knowledge.iloc[-1])}"
                for p, c in comps.items()
                if "knowledge" in c
            ),
            None,
        ),
    ]
    parts = []
    for p, g in heads_change.groupby("p_relevant"):
        worst = g.sort_values("change").head(3)
        lost = ", ".join(f"L{r.layer}H{r.head_index} {_f(r.start)}->{_f(r.end)}" for r in worst.itertuples())
        parts.append(f"p={p}: top-{len(g)} mean {_f(g.start.mean())} -> {_f(g.end.mean())}; most lost: {lost}")
    drop = {p: (g.end - g.start).mean() for p, g in heads_change.groupby("p_relevant")}
    claims.append(
        Claim(
            "which heads lose their induction score (base top-k, repeated random tokens)",
            "not measured in the paper",
            "; ".join(parts),
            bool(drop[ps[0]] < drop[ps[-1]]) if len(ps) > 1 else None,
        )
    )
    # The first three are measured on the base model; the rest compare step 0 with the last checkpoint.
    wheres = ["base model"] * 3 + ["checkpoint: step 0 and last"] * (len(claims) - 3)
    return [
        c if c.claim.endswith("]") else dataclasses.replace(c, claim=f"{c.claim} [{w}]")
        for c, w in zip(claims, wheres, strict=True)
    ]


def figure(comps: dict, path: Path, chance: float) -> Path:
    cols = [
        ("ICL", "ICL (held-out names)"),
        ("IWL", "memorised (trained names)"),
        ("conflict_memory", "conflict: memory wins"),
        ("top_induction", "top induction heads' score"),
    ]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2))
    for ax, (col, title) in zip(axes, cols, strict=True):
        for p, table in comps.items():
            if col in table:
                ax.plot(table.index + 1, table[col], marker="o", ms=3, label=f"p_relevant={p}")
        if col != "top_induction":
            ax.axhline(chance, ls=":", c="gray", label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("fine-tuning step + 1")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    save(fig, path)
    return path
