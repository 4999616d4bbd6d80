"""The fine-tuning study: evaluation at every checkpoint, and reading its run folders.

:class:`Evaluator` measures, at one checkpoint, every task split's accuracy (with its chance
level) and the per-head induction / previous-token / duplicate-token scores on repeated random
tokens, plus the repeated half's loss. :func:`analysis_table` turns a run folder into the
toolkit's analysis format (``step, condition, split, metric, layer, head_index, value``), so
:func:`probes.competition_table` and :func:`probes.summarize` work on it unchanged;
:func:`competition` adds the induction columns of the language model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch

from icl_circuits.llm import heads as H
from icl_circuits.llm.finetune import FinetuneConfig, read_heads
from icl_circuits.llm.loading import LanguageModel
from icl_circuits.llm.scoring import score_prompts, split_metrics
from icl_circuits.llm.tasks import Prompt
from icl_circuits.runs import layout
from icl_circuits.runs.read import read_metrics

ANALYSIS_COLUMNS = ["step", "condition", "split", "metric", "layer", "head_index", "value"]
#: The competition table's ICL and IWL columns for these runs.
ICL_SPLIT, IWL_SPLIT = "icl", "memorised"


def head_tokens(lm: LanguageModel, n_seq: int, half: int, seed: int = 0) -> torch.Tensor:
    """Repeated random sequences over the model's ordinary tokens (ids past the specials)."""
    vocab = lm.model.cfg.d_vocab
    low = min(1000, vocab // 4)
    return H.repeated_tokens(vocab, n_seq, half, seed=seed, bos=lm.bos, low=low)


@dataclasses.dataclass
class Evaluator:
    """Fixed evaluation prompts and repeated sequences; call it on a model at a checkpoint.

    Attributes:
        prompts: split -> prompts.
        tokens: ``[batch, pos]`` repeated random sequences for the head scores.
        half: their half length.
        tracked: heads whose mean induction score is logged as ``heads/top_induction``
            (the base model's top induction heads).
    """

    prompts: dict[str, list[Prompt]]
    tokens: torch.Tensor
    half: int
    tracked: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def __call__(self, lm: LanguageModel, step: int = 0) -> tuple[list[dict], pd.DataFrame]:
        """``(metric rows [{"split", "metric", "value"}], per-head table)`` of the model now."""
        flat = [p for ps in self.prompts.values() for p in ps]
        rows = split_metrics(score_prompts(lm.model, lm.tokenizer, flat)).to_dict("records")
        scores = H.head_scores(lm.model, self.tokens, self.half)
        ind = scores[scores.metric == "induction"]
        rows.append({"split": "heads", "metric": "max_induction", "value": float(ind.value.max())})
        if self.tracked:
            top = ind.set_index(["layer", "head_index"]).value.loc[self.tracked]
            rows.append({"split": "heads", "metric": "top_induction", "value": float(top.mean())})
        for metric, value in H.repeat_loss(lm.model, self.tokens, self.half).items():
            rows.append({"split": "repeat", "metric": metric, "value": value})
        return rows, scores


def load_config(run: Path | str) -> FinetuneConfig:
    """The fine-tuning config of an LLM run folder."""
    raw = json.loads((Path(run) / layout.CONFIG).read_text())
    if "llm_finetune" not in raw:
        raise ValueError(f"{run}: not a language-model fine-tuning run folder")
    return FinetuneConfig.from_dict(raw["llm_finetune"])


def analysis_table(run: Path | str) -> pd.DataFrame:
    """The run's metrics and per-head scores in the toolkit's analysis format (``condition`` clean)."""
    m = read_metrics(run).assign(condition="clean", layer=pd.NA, head_index=pd.NA)
    h = read_heads(run).assign(condition="clean", split="repeated_tokens")
    out = pd.concat([m, h], ignore_index=True)[ANALYSIS_COLUMNS]
    out["layer"] = out["layer"].astype("Float64")
    return out


def competition(run: Path | str) -> pd.DataFrame:
    """:func:`probes.competition_table` of the run (ICL = ``icl``, IWL = ``memorised``) plus
    ``conflict_context`` / ``conflict_memory``, ``knowledge``, ``max_induction``,
    ``top_induction`` and ``repeat_loss`` columns."""
    from probes.competition import competition_table

    df = analysis_table(run)
    table = competition_table(df, ICL_SPLIT, IWL_SPLIT)
    flat = df[df.layer.isna()]

    def col(split: str, metric: str) -> pd.Series:
        sub = flat[(flat.split == split) & (flat.metric == metric)]
        return sub.set_index("step").value

    extra = {
        "conflict_context": col("conflict", "acc"),
        "conflict_memory": col("conflict", "acc_memory"),
        "knowledge": col("knowledge", "acc"),
        "knowledge_conflict_context": col("knowledge_conflict", "acc"),
        "max_induction": col("heads", "max_induction"),
        "top_induction": col("heads", "top_induction"),
        "repeat_loss": col("repeat", "loss_repeat_half"),
    }
    for name, series in extra.items():
        if not series.empty:
            table[name] = series
    return table.sort_index()


def head_changes(run: Path | str, metric: str = "induction", k: int = 10) -> pd.DataFrame:
    """The ``k`` heads with the highest first-checkpoint ``metric``: score at the start, end, change."""
    heads = read_heads(run)
    sub = heads[heads.metric == metric]
    first, last = sub.step.min(), sub.step.max()
    a = sub[sub.step == first].set_index(["layer", "head_index"]).value
    b = sub[sub.step == last].set_index(["layer", "head_index"]).value
    out = pd.DataFrame({"start": a, "end": b})
    out["change"] = out.end - out.start
    out = out.sort_values("start", ascending=False).head(k).reset_index()
    return out.assign(metric=metric, first_step=int(first), last_step=int(last))
