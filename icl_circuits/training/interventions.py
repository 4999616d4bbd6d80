"""Interventions during training: ablated heads, clamped patterns, cut paths, frozen weights.

``train.interventions`` (:class:`~icl_circuits.intervention_config.InterventionConfig`) lists
them, each over a step range. :class:`Interventions` applies them inside the single-model
training step (:class:`icl_circuits.training.trainer.SingleModel`):

* ``ablate``: the heads' ``blocks.{l}.attn.hook_z`` slices are replaced (``zero``, or ``mean``:
  the mean over the step's batch per position, detached), so no gradient reaches the heads'
  queries, keys or values through their output (their ``W_O`` slice still gets one under
  ``mean``: the constant mean output is still read).
* ``pattern``: the heads' ``blocks.{l}.attn.hook_pattern`` is set to a fixed pattern:
  ``previous_token`` (every position attends to the one before it, position 0 to itself;
  interleaved layout only) or ``induction`` (the query row uniform over the label tokens that
  follow context exemplars of the query's class; sequences without one, and the other rows,
  keep the head's own pattern). The native attention applies the hook before the values, so
  the clamped pattern is what the head computes with.
* ``path``: a sender's direct path into the readout at the query position is removed: the
  sender's contribution there (``embed``: the query's embedding plus position, read at
  ``blocks.0.hook_resid_pre``; a head: ``z @ W_O`` of its slice) is subtracted from the last
  block's ``hook_resid_post`` at the query (``zero``), or replaced by its batch mean (``mean``).
  Everything else the sender writes (to later heads, to other positions) is kept.
* ``freeze``: the named weights stay bitwise unchanged: their gradients are zeroed before
  clipping and the optimiser step, and their values restored after it (whole parameters by
  name prefix, rows ``a:b`` of one parameter, or a head's rows of W_Q, W_K, W_V and their
  biases and its columns of W_O).

Forward interventions run the training model behind a :class:`TransformerBridge` that shares
its parameters (the hook points); a step where none is active runs the ordinary fast path, so
a run is bitwise the same as without interventions up to the first active step.
Checkpoint ``t``'s evaluation applies the forward interventions of its last step ``t - 1``.
:func:`fork_run` starts a run with interventions from a checkpoint of one without.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from transformer_lens.model_bridge.sources import build_bridge_from_module

from icl_circuits.config import RunConfig
from icl_circuits.data.batch import Batch
from icl_circuits.errors import ConfigError, RunFolderError
from icl_circuits.intervention_config import EMBED, InterventionConfig, parse_head, parse_rows
from icl_circuits.metrics import evaluate
from icl_circuits.models.build import ARCHITECTURE, model_layout
from icl_circuits.runs import layout
from icl_circuits.runs.read import config_json, load_config
from icl_circuits.runs.store import list_checkpoints

Head = tuple[int, int]


# ----------------------------------------------------------------------------- fixed patterns
def previous_token_pattern(n_pos: int, device: torch.device | str = "cpu") -> Tensor:
    """``[query_pos, key_pos]``: position ``i`` attends to ``i - 1``, position 0 to itself."""
    out = torch.zeros(n_pos, n_pos, device=device)
    out[0, 0] = 1.0
    idx = torch.arange(1, n_pos, device=device)
    out[idx, idx - 1] = 1.0
    return out


def induction_query_row(batch: Batch) -> tuple[Tensor, Tensor]:
    """The perfect induction row of the query and which sequences have one.

    Returns:
        ``(row [batch, key_pos], has_match [batch])``: uniform over the label tokens that
        follow context exemplars of the query's class (packed layout: over the items of the
        query's class); all zero where none does.
    """
    match = batch.query_in_context().float()  # [batch, n_pairs]
    row = torch.zeros(len(batch), batch.seq_len, device=batch.device)
    row[:, batch.item_pos()[:-1] + (0 if batch.packed else 1)] = match
    count = match.sum(1)
    return row / count.clamp(min=1)[:, None], count > 0


# ----------------------------------------------------------------------------- targets
def check_interventions(model: torch.nn.Module, interventions: Sequence[InterventionConfig]) -> None:
    """Raise a one-line ConfigError for a head or module the model does not have."""
    cfg = model.cfg
    names = [n for n, _ in model.named_parameters()]
    for i, iv in enumerate(interventions):
        where = f"train.interventions[{i}].targets"
        for target in iv.targets:
            head = parse_head(target)
            if head is not None:
                layer, h = head
                if not (layer < cfg.n_layers and h < cfg.n_heads):
                    raise ConfigError(
                        f"{where}: head {target} does not exist (the model has {cfg.n_layers} layers x {cfg.n_heads} heads)"
                    )
            elif iv.kind == "freeze" and (rows := parse_rows(target)) is not None:
                params = dict(model.named_parameters())
                if rows[0] not in params:
                    raise ConfigError(f"{where}: no parameter of the model is named {rows[0]!r} (in {target})")
                if rows[2] > params[rows[0]].shape[0]:
                    raise ConfigError(
                        f"{where}: {target}: {rows[0]} has {params[rows[0]].shape[0]} rows, fewer than {rows[2]}"
                    )
            elif iv.kind == "freeze" and not any(n == target or n.startswith(target + ".") for n in names):
                prefixes = sorted({n.rsplit(".", 1)[0] for n in names})
                raise ConfigError(f"{where}: no parameter of the model is named {target!r} (modules: {prefixes})")
        if iv.kind == "pattern" and iv.resolved_method == "previous_token" and model_layout(model) == "packed":
            raise ConfigError(
                f"train.interventions[{i}].method: previous_token needs the interleaved layout (data.layout)"
            )


def head_slices(model: torch.nn.Module, head: Head) -> list[tuple[torch.nn.Parameter, tuple]]:
    """A head's parameters as ``(parameter, index)``: its rows of q, k, v (weights and biases)
    and its columns of the output weight."""
    layer, h = head
    attn = model.layers[layer].attn
    rows = slice(h * attn.d_head, (h + 1) * attn.d_head)
    out = [(lin.weight, (rows,)) for lin in (attn.q, attn.k, attn.v)]
    out += [(lin.bias, (rows,)) for lin in (attn.q, attn.k, attn.v) if lin.bias is not None]
    return out + [(attn.o.weight, (slice(None), rows))]


def shared_bridge(native: torch.nn.Module):
    """A :class:`TransformerBridge` over a copy of ``native`` whose parameters *are* ``native``'s
    (the same tensors), so hooked forwards train the native model."""
    clone = copy.deepcopy(native)
    owners = {}
    for name, _ in clone.named_parameters():
        path, _, attr = name.rpartition(".")
        owners[name] = (clone.get_submodule(path) if path else clone, attr)
    bridge = build_bridge_from_module(clone, ARCHITECTURE, tl_config=copy.deepcopy(native.cfg), model_name="train")
    for name, param in native.named_parameters():
        module, attr = owners[name]
        setattr(module, attr, param)
    bridge.eval()  # no dropout in these models: the forward is the training forward
    return bridge


# ----------------------------------------------------------------------------- hooks
def _ablate(heads: list[int], method: str):
    def hook(z: Tensor, hook) -> Tensor:
        # z: [batch, pos, head_index, d_head]
        z = z.clone()
        z[:, :, heads] = 0.0 if method == "zero" else z[:, :, heads].detach().mean(0, keepdim=True)
        return z

    return hook


def _clamp(heads: list[int], method: str, batch: Batch | None):
    def hook(pattern: Tensor, hook) -> Tensor:
        # pattern: [batch, head_index, query_pos, key_pos]
        pattern = pattern.clone()
        n_pos = pattern.shape[-1]
        if method == "previous_token":
            pattern[:, heads] = previous_token_pattern(n_pos, pattern.device).to(pattern.dtype)
            return pattern
        assert batch is not None and len(batch) == pattern.shape[0]
        row, has = (t.to(pattern.device) for t in induction_query_row(batch))
        for h in heads:
            pattern[:, h, -1] = torch.where(has[:, None], row.to(pattern.dtype), pattern[:, h, -1])
        return pattern

    return hook


class Interventions:
    """The interventions of one run, applied to its native model's training steps."""

    def __init__(self, model: torch.nn.Module, interventions: Sequence[InterventionConfig]) -> None:
        check_interventions(model, interventions)
        self.model = model
        self.items = list(interventions)
        self.n_layers = model.cfg.n_layers
        self._bridge = None

    @property
    def bridge(self):
        if self._bridge is None:
            self._bridge = shared_bridge(self.model)
        return self._bridge

    def forward_active(self, step: int) -> list[InterventionConfig]:
        return [iv for iv in self.items if iv.kind != "freeze" and iv.active(step)]

    def hooks(self, step: int, batch: Batch | None) -> list[tuple[str, object]]:
        """The ``(hook name, function)`` pairs of the forward interventions active at ``step``."""
        hooks: list[tuple[str, object]] = []
        paths: list[tuple[str | Head, str]] = []
        for iv in self.forward_active(step):
            by_layer: dict[int, list[int]] = {}
            for target in iv.targets:
                head = parse_head(target)
                if iv.kind == "path":
                    paths.append((head if head is not None else EMBED, iv.resolved_method))
                else:
                    by_layer.setdefault(head[0], []).append(head[1])
            for layer, heads in sorted(by_layer.items()):
                if iv.kind == "ablate":
                    hooks.append((f"blocks.{layer}.attn.hook_z", _ablate(heads, iv.resolved_method)))
                else:
                    hooks.append((f"blocks.{layer}.attn.hook_pattern", _clamp(heads, iv.resolved_method, batch)))
        if paths:
            hooks += self._path_hooks(paths)
        return hooks

    def _path_hooks(self, paths: list[tuple[str | Head, str]]) -> list[tuple[str, object]]:
        seen: dict[str, Tensor] = {}  # sender -> its contribution at the query, [batch, d_model]

        def record_embed(resid: Tensor, hook) -> Tensor:
            seen[EMBED] = resid[:, -1]
            return resid

        def record_z(layer: int):
            def hook(z: Tensor, hook) -> Tensor:
                w_o = self.model.layers[layer].attn.o.weight  # [d_model, n_heads * d_head]
                d_head = z.shape[-1]
                for sender, _ in paths:
                    if sender != EMBED and sender[0] == layer:
                        h = sender[1]
                        seen[f"L{layer}H{h}"] = z[:, -1, h] @ w_o[:, h * d_head : (h + 1) * d_head].T
                return z

            return hook

        def cut(resid: Tensor, hook) -> Tensor:
            resid = resid.clone()
            for sender, method in paths:
                key = EMBED if sender == EMBED else f"L{sender[0]}H{sender[1]}"
                part = seen.pop(key)
                keep = part.detach().mean(0, keepdim=True) if method == "mean" else 0.0
                resid[:, -1] = resid[:, -1] - part + keep
            return resid

        hooks: list[tuple[str, object]] = []
        if any(s == EMBED for s, _ in paths):
            hooks.append(("blocks.0.hook_resid_pre", record_embed))
        for layer in sorted({s[0] for s, _ in paths if s != EMBED}):
            hooks.append((f"blocks.{layer}.attn.hook_z", record_z(layer)))
        return hooks + [(f"blocks.{self.n_layers - 1}.hook_resid_post", cut)]

    def logits(self, step_model: torch.nn.Module, tokens: Tensor, batch: Batch, step: int) -> Tensor:
        """``[batch, n_labels]`` query logits of the training forward of ``step``."""
        from icl_circuits.models.build import query_logits

        hooks = self.hooks(step, batch)
        if not hooks:
            return query_logits(step_model, tokens)
        with self.bridge.hooks(fwd_hooks=hooks):
            return self.bridge(tokens)[:, -1]

    def evaluate(self, evals: dict[str, Batch], n_labels: int, step: int) -> list[dict]:
        """:func:`icl_circuits.metrics.evaluate` under the forward interventions of ``step``."""
        if not self.forward_active(step):
            return evaluate(self.model, evals, n_labels)
        rows: list[dict] = []
        for split, batch in evals.items():
            with self.bridge.hooks(fwd_hooks=self.hooks(step, batch)):
                rows += evaluate(self.bridge, {split: batch}, n_labels, chunk=len(batch))
        return rows

    @contextlib.contextmanager
    def frozen(self, step: int) -> Iterator[None]:
        """Around clipping and the optimiser step: the weights frozen at ``step`` get zero
        gradients on entry and their values back on exit."""
        slices = []
        for iv in self.items:
            if iv.kind != "freeze" or not iv.active(step):
                continue
            for target in iv.targets:
                head, rows = parse_head(target), parse_rows(target)
                if head is not None:
                    slices += head_slices(self.model, head)
                elif rows is not None:
                    slices.append((dict(self.model.named_parameters())[rows[0]], (slice(rows[1], rows[2]),)))
                else:
                    slices += [
                        (p, (...,))
                        for n, p in self.model.named_parameters()
                        if n == target or n.startswith(target + ".")
                    ]
        saved = []
        with torch.no_grad():
            for param, index in slices:
                if param.grad is not None:
                    param.grad[index] = 0.0
                saved.append((param, index, param[index].clone()))
        try:
            yield
        finally:
            with torch.no_grad():
                for param, index, value in saved:
                    param[index] = value


# ----------------------------------------------------------------------------- fork
def fork_run(base: Path | str, step: int, cfg: RunConfig, out: Path | str) -> Path:
    """A new run folder ``out`` for ``cfg`` that continues ``base``'s run from its checkpoint ``step``.

    ``cfg`` must be ``base``'s config but for the ``train.interventions`` that start at or after
    ``step``: up to ``step`` the two runs are then the same run, so ``out`` gets
    ``base``'s checkpoints and metrics up to ``step`` and ``train(cfg, out)`` resumes from there.

    Raises:
        RunFolderError: ``out`` exists, ``base`` has no checkpoint ``step``, or ``cfg`` differs
            from ``base``'s config in more than its interventions or acts before ``step``.
    """
    base, out = Path(base), Path(out)
    stored = load_config(base)
    if stored.replace(train=stored.train.replace(interventions=cfg.train.interventions)) != cfg:
        raise RunFolderError(f"fork_run: {out}: the config differs from {base}'s in more than train.interventions")

    def before(ivs: Sequence[InterventionConfig]) -> list[InterventionConfig]:
        return [iv for iv in ivs if iv.start < step]

    if before(cfg.train.interventions) != before(stored.train.interventions):
        raise RunFolderError(f"fork_run: {out}: the interventions that start before step {step} must be {base}'s")
    if step not in list_checkpoints(base):
        raise RunFolderError(f"fork_run: {base} has no checkpoint at step {step}")
    if out.exists():
        raise RunFolderError(f"fork_run: {out} exists; choose another folder")
    tmp = out.with_name(out.name + ".forking")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / layout.CHECKPOINTS).mkdir(parents=True)
    for s in list_checkpoints(base):
        if s <= step:
            shutil.copytree(layout.checkpoint_dir(base, s), layout.checkpoint_dir(tmp, s))
    lines = (base / layout.METRICS).read_text().splitlines()
    kept = [line for line in lines if line and json.loads(line)["step"] <= step]
    (tmp / layout.METRICS).write_text("".join(f"{line}\n" for line in kept))
    shutil.copy(base / layout.PROVENANCE, tmp / layout.PROVENANCE)
    (tmp / layout.CONFIG).write_text(json.dumps(config_json(cfg), indent=2, sort_keys=True, allow_nan=False))
    tmp.rename(out)
    return out
