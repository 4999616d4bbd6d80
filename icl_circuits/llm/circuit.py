"""Circuit discovery on a pretrained language model: induction on repeated random tokens.

The task (as in :mod:`icl_circuits.llm.heads`): ``BOS`` and ``half`` random tokens, then the
same tokens again. At the second-repeat positions the next token is predictable only by
induction (find the earlier occurrence of the current token, copy what followed it).

* **Metric**: the logit of the actual next token minus the mean logit, averaged over the
  second-repeat positions ``half + 1 .. 2 * half - 1`` and the sequences
  (:func:`probes.edge_patching.next_token_metric`); accuracy is the share of those positions
  whose argmax is the next token.
* **Patching**: ``corrupt`` by default: each sequence's first half kept, its second half
  replaced by fresh random tokens (no repeat, so nothing to induct; the counterfactual of
  Conmy et al.'s induction task); ``mean`` (over the batch, per position) is the alternative.
* **Scores**: EAP and AtP* (:mod:`probes.eap`) score every edge (one forward and backward
  pass each); exact patching checks a sample: the ``n_top`` edges with the largest EAP |score|
  and ``n_random`` others drawn at random (seeded), and the Spearman correlation of each
  method with exact patching is reported on that sample and on its top part.
* **Circuit**: :func:`probes.discovery.prune` on the AtP* scores at the faithfulness target.

``python -m icl_circuits.llm.circuit`` runs it on the default model (SmolLM2-135M-Instruct, offline)
and prints the measured row that ``docs/circuits.md`` reports.
"""

from __future__ import annotations

import json
import time

import torch
from scipy.stats import spearmanr
from torch import Tensor

from probes.discovery import TARGET, prune
from probes.eap import edge_scores, exact_edge_scores
from probes.edge_patching import next_token_accuracy, next_token_metric, patch_values
from probes.graph import build_graph


def induction_task(lm, n_seq: int = 4, half: int = 16, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(clean, corrupt, positions)``: repeated random tokens, their unrepeated counterfactual, scored positions.

    Tokens are drawn from ids ``>= 5`` (past the special tokens) below the vocabulary size.
    """
    from icl_circuits.llm.heads import repeated_tokens

    vocab = int(lm.model.cfg.d_vocab)
    clean = repeated_tokens(vocab, n_seq, half, seed=seed, bos=lm.bos, low=5)
    fresh = repeated_tokens(vocab, n_seq, half, seed=seed + 1, bos=lm.bos, low=5)
    start = clean.shape[1] - half  # first position of the second repeat
    corrupt = clean.clone()
    corrupt[:, start:] = fresh[:, start:]
    positions = torch.zeros(clean.shape[1], dtype=torch.bool)
    positions[start:-1] = True
    return clean, corrupt, positions


def _spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``: tied scores share their mean rank)."""
    return float(spearmanr(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()).statistic)


def lm_circuit(
    lm,
    n_seq: int = 4,
    half: int = 16,
    seed: int = 0,
    target: float = TARGET,
    n_top: int = 20,
    n_random: int = 20,
    patch_method: str = "corrupt",
    max_rows: int = 16,
    min_effect: float = 1.0,
) -> dict:
    """Score, check and prune the induction circuit of ``lm``; one flat dict of measurements.

    Args:
        lm: a :class:`icl_circuits.llm.loading.LanguageModel`.
        n_seq: sequences; half: random tokens per repeat; seed: of the tokens and the sample.
        target: faithfulness target of the circuit.
        n_top: edges with the largest EAP |score| checked by exact patching; n_random: others.
        patch_method: ``corrupt`` (unrepeated second half) or ``mean``.
        max_rows: sequences per exact-patching pass.
        min_effect: least ``M(G) - M(empty)`` for the circuit to be looked for.

    Returns:
        ``n_total`` (edges of the graph), times (``t_eap``, ``t_atp``, ``t_exact``, ``t_prune``: seconds), the rank
        agreement with exact patching on the checked sample (``spearman_{eap,atp}_sample``:
        ``n_top + n_random`` edges; ``spearman_{eap,atp}_top``: the sample's ``n_top`` edges with
        the largest exact |score|), the circuit (``size``, ``faithfulness``, ``completeness``,
        ``effect``, ``acc_*``), and the circuit's first edges (``edges``).
    """
    model = lm.model
    graph = build_graph(model, split_embed=False)
    clean, corrupt, positions = induction_task(lm, n_seq, half, seed)
    metric, accuracy = next_token_metric(clean, positions), next_token_accuracy(clean, positions)
    patch = patch_values(model, graph, patch_method, corrupt if patch_method == "corrupt" else clean)
    out: dict = {"model": lm.name, "n_seq": n_seq, "seq_len": clean.shape[1]}
    scores = {}
    for method, key in (("eap", "t_eap"), ("atp*", "t_atp")):
        t0 = time.perf_counter()
        scores[method] = edge_scores(model, graph, clean, patch, metric, method)
        out[key] = time.perf_counter() - t0
    top = torch.argsort(scores["eap"].abs(), descending=True)[:n_top]
    rest = torch.ones(graph.n_edges, dtype=torch.bool)
    rest[top] = False
    gen = torch.Generator().manual_seed(seed)
    pool = torch.nonzero(rest).flatten()
    sample = torch.cat([top, pool[torch.randperm(len(pool), generator=gen)[:n_random]]])
    t0 = time.perf_counter()
    exact = exact_edge_scores(model, graph, clean, patch, metric, max_rows=max_rows, edges=sample.tolist())
    out["t_exact"] = time.perf_counter() - t0
    ex = exact[sample]
    top_exact = torch.argsort(ex.abs(), descending=True)[:n_top]
    for method, name in (("eap", "eap"), ("atp*", "atp")):
        s = scores[method][sample]
        out[f"spearman_{name}_sample"] = _spearman(s, ex)
        out[f"spearman_{name}_top"] = _spearman(s[top_exact], ex[top_exact])
    t0 = time.perf_counter()
    circuit = prune(
        model, graph, clean, None, patch, scores["atp*"], target, min_effect, metric=metric, accuracy=accuracy
    )
    out["t_prune"] = time.perf_counter() - t0
    out.update(circuit.summary())
    out["size"] = circuit.size
    out["edges"] = list(circuit.edges[:12])
    return out


def main() -> None:  # pragma: no cover - needs the GGUF model; measured output in docs/circuits.md
    from icl_circuits.llm import load_lm

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lm = load_lm()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    row = lm_circuit(lm)
    row.update(t_load=load_s, t_total=time.perf_counter() - t0)
    print(json.dumps(row, indent=1, default=float))


if __name__ == "__main__":
    main()
