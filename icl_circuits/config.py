"""Experiment, training and the full run config."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Literal

from icl_circuits.configbase import FrozenConfig, require
from icl_circuits.data import DataConfig, data_config_from_dict, family_config
from icl_circuits.errors import ConfigError
from icl_circuits.intervention_config import InterventionConfig
from icl_circuits.limits import check_sizes
from icl_circuits.models.config import ModelConfig

#: A run name: it becomes the default run folder ``checkpoints/NAME``, so no separators,
#: no leading dot (no ``..``, no hidden folder) and nothing a shell would mangle.
NAME_RE = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]{0,63}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(FrozenConfig):
    """Optimisation, checkpointing and evaluation.

    Attributes:
        steps: optimiser steps.
        batch_size: sequences per step.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (with ``momentum``).
        lr: peak learning rate.
        betas: Adam betas.
        momentum: SGD momentum.
        weight_decay: decoupled (AdamW) or coupled (Adam/SGD) weight decay.
        decay_on: which parameters get ``weight_decay``: ``all``, ``attention`` (attention
            weights only, as in Nguyen & Reddy's transience run), ``attention+embed`` or
            ``matrices`` (weight matrices, no biases or norms).
        l2: explicit penalty ``l2 * sum_p ||p||_2`` added to the loss, over the ``decay_on``
            group: each parameter array's Euclidean (Frobenius) norm, **not squared, no 1/2**,
            as in ``aadityasingh/icl-dynamics`` (``main.py``, ``compute_loss``), the code of
            Singh et al. 2023's L2 runs, which penalises every array (``decay_on=all``).
        schedule: learning-rate decay after warm-up: ``constant``, ``cosine``, ``linear``
            or ``inverse_sqrt`` (Chan et al. 2022).
        warmup_steps: linear warm-up steps.
        grad_clip: max global grad norm; 0 = off.
        n_checkpoints: checkpoints per run (log-spaced early, linear later; first and last
            step always included).
        checkpoint_every: also checkpoint every k steps; 0 = off.
        eval_size: sequences per evaluation split.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
        compile: ``torch.compile`` the training step's model.
        threads: torch CPU threads while training. The default 1 makes a run bitwise
            reproducible (two runs, or a resumed one, give the same metrics and weights) and
            is the fastest for these small models (``benchmarks/RESULTS.md``); 0 keeps torch's
            own choice (one per core), which is not reproducible.
        logger: also log every checkpoint's metrics to ``wandb`` (offline unless ``WANDB_MODE``
            says otherwise) or ``tensorboard``, into the run folder; ``none`` (default): only
            ``metrics.jsonl`` (see :mod:`icl_circuits.training.tracking`).
        stop_above: early stop: end the run at the first checkpoint after step 0 whose
            ``stop_metric`` accuracy exceeds this (strictly, as Nguyen & Reddy's
            ``icl_val_top1 > 0.99``); 0 (default) = off. Checked at checkpoints only (the
            reference checks after each epoch's evaluation), so the stop step is the first
            checkpoint past the threshold. The checkpoint records it (``state.json`` key
            ``stopped``): resuming the run does nothing, and readers take that step as its end
            (:func:`icl_circuits.runs.store.run_end`).
        stop_metric: which accuracy ``stop_above`` watches: ``ICL`` (the data source's ICL
            split, e.g. ``IC``) or ``IWL`` (its IWL split).
        lr_scale: per-module learning-rate scales, in the order attention, MLP, embedding,
            unembedding (``icl_circuits.training.optim.lr_group`` says which parameter is
            which; others keep scale 1): each module trains at ``lr`` times its scale, under
            every schedule. Default: all 1.
        interventions: interventions during training, each over a step range (head ablations,
            clamped attention patterns, paths into the readout, frozen weights;
            :class:`~icl_circuits.intervention_config.InterventionConfig`,
            :mod:`icl_circuits.training.interventions`); empty (default): none.
    """

    steps: int = 4000
    batch_size: int = 128
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    momentum: float = 0.0
    weight_decay: float = 0.0
    decay_on: Literal["all", "attention", "attention+embed", "matrices"] = "all"
    l2: float = 0.0
    schedule: Literal["constant", "cosine", "linear", "inverse_sqrt"] = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0
    n_checkpoints: int = 50
    checkpoint_every: int = 0
    eval_size: int = 1024
    device: str = "auto"
    compile: bool = False
    threads: int = 1
    logger: Literal["none", "wandb", "tensorboard"] = "none"
    stop_above: float = 0.0
    stop_metric: Literal["ICL", "IWL"] = "ICL"
    lr_scale: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    interventions: tuple[InterventionConfig, ...] = ()

    def validate(self) -> None:
        require(self.steps >= 1, "train.steps", "at least 1", self.steps)
        require(self.batch_size >= 1, "train.batch_size", "at least 1", self.batch_size)
        require(self.lr > 0, "train.lr", "a positive learning rate", self.lr)
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            "two numbers in [0, 1)",
            self.betas,
        )
        require(0 <= self.momentum < 1, "train.momentum", "a number in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "train.weight_decay", "a non-negative number", self.weight_decay)
        require(self.l2 >= 0, "train.l2", "a non-negative number", self.l2)
        require(
            0 <= self.warmup_steps <= self.steps,
            "train.warmup_steps",
            f"between 0 and steps={self.steps}",
            self.warmup_steps,
        )
        require(self.grad_clip >= 0, "train.grad_clip", "a non-negative norm (0 = off)", self.grad_clip)
        require(self.n_checkpoints >= 2, "train.n_checkpoints", "at least 2 (first and last step)", self.n_checkpoints)
        require(
            self.checkpoint_every >= 0,
            "train.checkpoint_every",
            "a non-negative interval (0 = off)",
            self.checkpoint_every,
        )
        require(self.eval_size >= 1, "train.eval_size", "at least 1", self.eval_size)
        require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "train.device",
            "auto, cpu or cuda[:i]",
            self.device,
        )
        require(self.threads >= 0, "train.threads", "a number of threads (0 = torch's choice)", self.threads)
        require(0 <= self.stop_above < 1, "train.stop_above", "an accuracy in [0, 1) (0 = off)", self.stop_above)
        require(self.stop_metric in ("ICL", "IWL"), "train.stop_metric", "ICL or IWL", self.stop_metric)
        require(
            len(self.lr_scale) == 4 and all(x > 0 for x in self.lr_scale),
            "train.lr_scale",
            "four positive scales (attention, MLP, embedding, unembedding)",
            self.lr_scale,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig(FrozenConfig):
    """Everything that determines a run: its folder stores exactly this as config.json.

    Attributes:
        name: a label (usually the preset name).
        seed: seeds the world (class means), the data stream, the evaluation sets and the init.
        data: the data family's config (``data.family`` picks it).
        model: the model config.
        train: the training config.
    """

    name: str = "custom"
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=lambda: data_config_from_dict({}))
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> None:
        require(
            isinstance(self.name, str) and NAME_RE.fullmatch(self.name) is not None,
            "name",
            "a plain name of 1-64 letters, digits, '.', '_', '-' or '+', not starting with '.' "
            "(it names the default run folder)",
            self.name,
        )
        require(0 <= self.seed < 2**63, "seed", "a non-negative integer", self.seed)
        check_sizes(self)
        d_in = self.data.d_in
        if self.model.encoder == "identity":
            # Equal widths, or wider with the one-hot labels beside x (x ⊕ onehot(y)).
            require(
                d_in == self.model.d_model or self.model.label_init == "onehot",
                "model.d_model",
                f"equal to the exemplar dimension {d_in} for the identity encoder",
                self.model.d_model,
            )
        if self.model.label_init == "onehot":
            width = d_in + self.data.vocab_size
            require(
                self.model.d_model >= width,
                "model.d_model",
                f"at least d_in + n_labels = {width} for one-hot labels",
                self.model.d_model,
            )
        if self.model.binary_logit:
            require(
                self.data.vocab_size == 2,
                "model.binary_logit",
                f"false for {self.data.vocab_size}-label data (one logit needs 2 labels)",
                self.model.binary_logit,
            )
        if self.model.encoder == "cnn":
            side = round(self.data.d_in**0.5)
            require(
                side * side == self.data.d_in,
                "model.encoder",
                "linear or identity: cnn needs square images",
                self.model.encoder,
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "") -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a table, got {data!r}")
        data = dict(data)
        # The family key picks the data config class; the parsed instance then passes the
        # generic type check of the DataConfig union.
        data["data"] = data_config_from_dict(data.get("data", {}))
        return super().from_dict(data, prefix)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply CLI overrides such as ``data.n_classes=32`` or ``train.lr=3e-4`` to ``cfg``.

    Values are parsed as JSON where possible (``32``, ``3e-4``, ``true``, ``[1, 2]``),
    else taken as strings. Unknown keys fail like unknown keys in a config file. A data
    field's old name (``data.K`` for ``data.n_classes``: the family's ``RENAMED``) sets the
    field it was renamed to.
    """
    tree = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: expected key=value (e.g. data.n_classes=32)")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        except RecursionError:
            raise ConfigError(f"{key}: value nested too deeply to parse") from None
        node = tree
        parts = key.split(".")
        if len(parts) == 2 and parts[0] == "data" and isinstance(tree.get("data"), dict):
            renamed = family_config(tree["data"]["family"]).RENAMED
            parts[1] = renamed.get(parts[1], parts[1])
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key}: unknown key ({part!r} is not a config section)")
            node = node[part]
        if parts[-1] not in node and parts[-1] not in _section_fields(tree, parts[:-1]):
            raise ConfigError(f"{key}: unknown key (expected one of {sorted(node)})")
        if parts == ["data", "family"] and value != node.get("family"):
            # Switching family starts from that family's defaults.
            tree["data"] = {"family": value}
            continue
        node[parts[-1]] = value
    return RunConfig.from_dict(tree)


def _section_fields(tree: dict, section: list[str]) -> set[str]:
    """Field names of the config section at ``section`` (a section may omit fields at their defaults)."""
    if section == ["data"]:
        return set(family_config(tree["data"]["family"]).__dataclass_fields__) | {"family"}
    target: Any = RunConfig
    for part in section:
        hints = {f.name: f.type for f in dataclasses.fields(target)}
        target = {"model": ModelConfig, "train": TrainConfig}.get(part) if part in hints else None
        if target is None:
            return set()
    return {f.name for f in dataclasses.fields(target)}
