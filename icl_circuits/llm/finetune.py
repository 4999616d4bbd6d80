"""Fine-tuning a language model on prompt collections it can memorise, into a run folder.

The collection (Chan et al. 2024, §5, rebuilt openly): a fixed set of made-up names with fixed
cities (:class:`~icl_circuits.llm.tasks.TaskSet`). Each training prompt queries one trained
name; its own fact is in the context with probability ``p_relevant``, otherwise the context
holds other names' facts only, so the answer must come from the weights. The loss is the
cross-entropy of the answer token only.

Which parameters train: the attention projections (``q_proj, k_proj, v_proj, o_proj``) of the
layers in ``train_layers`` (default 16..29 of 30). Attention is where induction and copying
live (the model's top induction heads are in layers 17-23, a strong previous-token head in
layer 16), so this is where fine-tuning can trade ICL away, and it can memorise by reading
the name tokens (OV circuits). Embeddings, norms, MLPs and layers 0-15 stay frozen, which
keeps a checkpoint at 47.3 MiB (12.4 M float32 parameters; the cpu run's 15: 710 MB) and the
backward pass out of the lower 16 layers. Checkpoints store only these parameters.

Run folder (the toolkit's layout, :mod:`icl_circuits.runs.layout`)::

    RUN/config.json      {"format_version": LLM_FORMAT, "llm_finetune": {...}}
    RUN/metrics.jsonl    step, split, metric, value (the toolkit's tidy rows)
    RUN/checkpoints/step_XXXXXX/model.safetensors   the trained parameters only
    RUN/analysis/heads.csv   per-head scores at every checkpoint (step, metric, layer, head_index, value)

``read_metrics``, ``list_checkpoints`` and ``load_checkpoint`` of :mod:`icl_circuits.runs`
read it as they read any run; ``icl-circuits show`` and ``analyze`` recognise it by its
``llm_finetune`` section (:mod:`icl_circuits.llm.report`); the native config reader
(:func:`icl_circuits.runs.read.load_config`) refuses it with one line naming the format below.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from icl_circuits.llm.loading import LanguageModel
from icl_circuits.llm.tasks import TaskSet, answer_tokens, train_prompt
from icl_circuits.runs import layout
from icl_circuits.runs.store import append_lines, list_checkpoints, load_checkpoint, run_lock, save_checkpoint

#: config.json's format_version for these runs: the one line ``show``/``analyze`` print.
LLM_FORMAT = "llm-finetune-1 (a language-model fine-tuning run: icl-circuits show/analyze read it, icl_circuits.llm.study in Python)"
HEADS_FILE = layout.LLM_HEADS


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run (the ``chan2024-llm`` study's settings; see :func:`chan2024_llm`).

    Attributes:
        model: ``smollm2-135m``, a model folder / .gguf path, or ``tiny`` (random test model).
        p_relevant: probability that a training prompt's context holds the query's fact.
        n_trained: names with memorisable facts.
        n_facts: facts per context.
        steps, batch, lr, weight_decay: AdamW fine-tuning.
        train_layers: ``(first, stop)`` layers whose attention projections train.
        n_checkpoints: log-spaced checkpoints (step 0 included).
        eval_size: prompts per evaluation split.
        head_seqs, head_half: repeated random sequences for the head scores (count, half length).
        seed: task world, data order and evaluation prompts.
    """

    name: str = "chan2024-llm"
    model: str = "smollm2-135m"
    p_relevant: float = 0.1
    n_trained: int = 24
    n_facts: int = 2
    steps: int = 150
    batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    train_layers: tuple[int, int] = (16, 30)
    n_checkpoints: int = 16
    eval_size: int = 16
    head_seqs: int = 4
    head_half: int = 16
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        d = dict(d)
        d["train_layers"] = tuple(d["train_layers"])
        return cls(**d)


def chan2024_llm(**overrides) -> FinetuneConfig:
    """The ``chan2024-llm`` preset: SmolLM2-135M, 150 steps of batch 8, attention of layers 16-29."""
    return dataclasses.replace(FinetuneConfig(), **overrides)


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step 0 and about ``n - 1`` log-spaced steps up to ``steps`` (always included)."""
    grid = np.unique(np.round(np.logspace(0, np.log10(max(steps, 1)), max(n - 1, 1))).astype(int))
    return sorted({0, steps, *(int(s) for s in grid if 0 < s <= steps)})


def trainable(hf_model: torch.nn.Module, layers: tuple[int, int]) -> dict[str, torch.nn.Parameter]:
    """The attention projections of ``layers``; everything else is frozen.

    Keys are Hugging Face names (the bridge's ``._original_component`` wrappers removed).
    """
    keep = {}
    for raw, p in hf_model.named_parameters():
        name = raw.replace("._original_component", "")
        parts = name.split(".")
        is_attn = "self_attn" in parts and parts[-2] in ("q_proj", "k_proj", "v_proj", "o_proj")
        layer = int(parts[parts.index("layers") + 1]) if "layers" in parts else -1
        p.requires_grad_(is_attn and layers[0] <= layer < layers[1])
        if p.requires_grad:
            keep[name] = p
    return keep


def encode_batch(tokenizer, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``tokens [batch, pos]``, last prompt positions ``[batch]``, answer ids ``[batch]``."""
    ids = [tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    answers = [answer_tokens(tokenizer, p.text, p.answer)[0] for p in prompts]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, s in enumerate(ids):
        tokens[i, : len(s)] = torch.tensor(s)
    return tokens, torch.tensor([len(s) - 1 for s in ids]), torch.tensor(answers)


def answer_loss(hf_model, tokens: torch.Tensor, last: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the answer token, unembedding only the last prompt position."""
    hidden = hf_model.model(input_ids=tokens).last_hidden_state  # [batch, pos, d_model]
    logits = hf_model.lm_head(hidden[torch.arange(len(tokens)), last])  # [batch, d_vocab]
    return F.cross_entropy(logits.float(), answers)


def batch_at(ts: TaskSet, cfg: FinetuneConfig, step: int) -> list:
    """The training prompts of ``step`` (a function of seed and step only, for resuming)."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    return [train_prompt(ts, cfg.p_relevant, rng) for _ in range(cfg.batch)]


def _prepare(run: Path, cfg: FinetuneConfig) -> None:
    run.mkdir(parents=True, exist_ok=True)
    path = run / layout.CONFIG
    body = {"format_version": LLM_FORMAT, "llm_finetune": cfg.to_dict()}
    if path.exists():
        old = json.loads(path.read_text())
        # The settings decide whether it is the same run (format_version's wording may differ).
        if not isinstance(old, dict) or old.get("llm_finetune") != json.loads(json.dumps(body["llm_finetune"])):
            raise ValueError(f"{path}: holds a different fine-tuning config; use another folder")
        return
    path.write_text(json.dumps(body, indent=1) + "\n")
    from importlib.metadata import version

    prov = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "transformer_lens": version("transformer-lens"),
        "seed": cfg.seed,
        "device": "cpu",
    }
    (run / layout.PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")


def finetune(lm: LanguageModel, ts: TaskSet, cfg: FinetuneConfig, run: Path | str, evaluate, progress=None) -> Path:
    """Fine-tune ``lm`` in place into run folder ``run``; evaluate at every checkpoint.

    Args:
        lm: the model (its bridge shares parameters with ``lm.model.original_model``).
        ts: the task world.
        cfg: the run's settings.
        run: the run folder (created; a finished run is left as it is).
        evaluate: ``evaluate(lm, step) -> (metric rows [{"split", "metric", "value"}], head table)``.
        progress: optional ``callable(step, loss)``.

    Resuming: a run interrupted after checkpoint ``s`` restarts from ``s``'s weights with fresh
    AdamW moments (checkpoints keep only the trained weights), so it is not bit-identical to an
    uninterrupted run.
    """
    run = Path(run)
    _prepare(run, cfg)
    hf = lm.model.original_model
    params = trainable(hf, cfg.train_layers)
    ckpts = checkpoint_steps(cfg.steps, cfg.n_checkpoints)
    with run_lock(run):
        done = list_checkpoints(run)
        start = done[-1] if done else 0
        if done:
            with torch.no_grad():
                for k, v in load_checkpoint(run, start)["model"].items():
                    params[k].copy_(v)
        if done and start >= cfg.steps:
            return run
        opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        losses: list[float] = []
        for step in range(start, cfg.steps + 1):
            if step in ckpts and step not in done:
                _checkpoint(lm, run, step, params, losses, evaluate)
                losses = []
            if step == cfg.steps:
                break
            hf.train()
            loss = answer_loss(hf, *encode_batch(lm.tokenizer, batch_at(ts, cfg, step)))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress:
                progress(step + 1, losses[-1])
    hf.eval()
    return run


def _checkpoint(lm: LanguageModel, run: Path, step: int, params: dict, losses: list[float], evaluate) -> None:
    lm.model.original_model.eval()
    rows, heads = evaluate(lm, step)
    if losses:
        rows = [*rows, {"split": "train", "metric": "loss", "value": float(np.mean(losses))}]
    state = {"step": step, "metrics": rows}
    save_checkpoint(run, step, {k: v.detach() for k, v in params.items()}, {}, {}, state)
    append_lines(run / layout.METRICS, [json.dumps({"step": step, **r}) for r in rows])
    if heads is not None and len(heads):
        (run / layout.ANALYSIS).mkdir(exist_ok=True)
        path = run / layout.ANALYSIS / HEADS_FILE
        heads = heads.assign(step=step)[["step", *[c for c in heads.columns if c != "step"]]]
        heads.to_csv(path, mode="a", header=not path.exists(), index=False)


def read_heads(run: Path | str) -> pd.DataFrame:
    """Per-head scores at every checkpoint: ``step, metric, layer, head_index, value``."""
    path = Path(run) / layout.ANALYSIS / HEADS_FILE
    if not path.exists():
        return pd.DataFrame(columns=["step", "metric", "layer", "head_index", "value"])
    return pd.read_csv(path).drop_duplicates(["step", "metric", "layer", "head_index"], keep="last")
