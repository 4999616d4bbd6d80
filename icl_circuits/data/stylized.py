"""Stylized high/low-frequency classes (Chan, Chen, György & Schuurmans 2024, ICLR 2025).

``n_high`` frequent classes ``C_H = {0 .. n_high-1}`` share probability ``p_high`` equally;
``n_low`` rare classes ``C_L = {n_high .. n_high+n_low-1}`` share ``1 - p_high``. Class ``k``
has a centre ``c_k`` (a standard normal vector scaled to unit length, from the seed's world
stream) and an exemplar of class k is ``x = c_k + sigma * N(0, I)``. The label of class k is
k itself. A sequence has ``L`` context pairs and a query whose class (the target) is drawn
from the class weights. Each context slot independently holds the target class with
probability ``p_relevant`` (so the number of relevant slots is Binomial(L, p_relevant));
every other slot holds a class drawn from the class weights with the target excluded
(``irrelevant="exclude"``, the default) or, as ``chanb/simple_icl`` does, drawn from the
class weights and redrawn once if it hits the target (``irrelevant="redraw"``, used by the
``chan2024-*`` presets; the slot then holds the target with probability w_t^2). For L > 1
the reference sets a Binomial number of slots to the target after drawing the context; here
relevance is per slot. ``-irr`` evaluation contexts never hold the query's class.

Training uses a *finite* set of ``n_train`` sequences; the batch at step t draws indices
uniformly from ``[0, n_train)`` and returns those sequences. Sequence i is a pure function
of (seed, i): its class draws, relevance coins and noise are counter-based hashes of its
index (:func:`~icl_circuits.data.sampling.counter_uniforms`), so any batch of indices is
regenerated exactly in one vectorised pass and nothing is stored, even for 2**20 sequences.

Worked example (defaults: 5 + 5 classes, L = 1). A relevant sequence whose query is the
rare class 7, and an irrelevant one (the context holds another class)::

    x(7) 7  x(7) -> 7          x(2) 2  x(7) -> 7

Out-of-base-distribution (OOBD) evaluation shifts every label, context and target, by one
within its frequency group (0->1 .. 4->0, 5->6 .. 9->5), so the first sequence becomes::

    x(7) 8  x(7) -> 8

Evaluation splits (fresh sequences from the ``"eval"`` streams, never training indices):
``{IBD, OOBD}`` x context ``{default p_relevant, "-rel" (p_relevant = 1), "-irr"
(p_relevant = 0)}`` x query ``{any, "-high", "-low"}`` (the target drawn from the class
weights restricted to that group), 18 in all: ``IBD``, ``IBD-high``, ``IBD-rel-low``,
``OOBD-irr-high`` ... ICL is measured on ``OOBD-rel`` (the context holds the query's
shifted label, so only copying from context is right) and IWL on ``IBD-irr`` (the query's
class is absent from the context, so only memorised labels are right).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch
from torch import Tensor

from icl_circuits.configbase import require
from icl_circuits.data.batch import Batch
from icl_circuits.data.family import DataConfigBase, MemoryTerms, register_family
from icl_circuits.data.omniglot import N_CHARACTERS, N_DRAWERS, RAW_SIZE, load_omniglot
from icl_circuits.data.sampling import counter_normals, counter_uniforms, inverse_cdf
from icl_circuits.data.source import DataSource

#: Upper bound of ``n_train``; indices must also fit the 32-bit counter hash.
MAX_TRAIN = 2**20

_CONTEXTS = {"": None, "-rel": 1.0, "-irr": 0.0}
_GROUPS = ("", "-high", "-low")
#: Largest training set (in bytes) that :class:`StylizedSource` keeps in memory.
MATERIALISE_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class StylizedConfig(DataConfigBase):
    """Parameters of the stylized family (defaults follow ``chanb/simple_icl``).

    Attributes:
        n_high: number of high-frequency classes.
        n_low: number of low-frequency classes.
        p_high: total probability of the high-frequency classes.
        d: exemplar dimension.
        noise: [sigma] standard deviation of the exemplar noise around the unit-norm class centre.
        n_pairs: [L] context pairs.
        p_relevant: probability that a context slot holds the query's class.
        n_train: size of the finite training set (sequences).
        irrelevant: the class of a context slot that is not made relevant: ``exclude`` (drawn
            from the class weights with the target removed, so such a slot never holds the
            query's class) or ``redraw`` (``chanb/simple_icl``: drawn from the class weights;
            a draw that hits the target is redrawn once from all classes, so it can hit it
            again: at p_relevant 0 a frequent query still sees its class ~3% of the time
            through the second draw). The ``-irr`` evaluation splits always exclude.
        eval_sets: ``fresh`` (evaluation sequences from their own streams, never training
            ones) or ``reference`` (as ``chanb/simple_icl``'s evaluation: sequence i is the
            training sequence law seeded by index i for i ~ U[0, 5 * eval_size), so for
            training sets larger than that the default-context IBD splits are training
            sequences).
        bank: class exemplars: ``gaussian`` (unit-norm centres, ``d`` dimensions) or
            ``omniglot`` (class k is an Omniglot character; an exemplar is one of its 20
            drawings at ``image_size`` x ``image_size``, plus ``noise``; ``d`` unused).
        image_size: side of the Omniglot images (``bank="omniglot"``).
    """

    RENAMED: ClassVar[dict[str, str]] = {"L": "n_pairs", "sigma": "noise"}

    family: Literal["stylized"] = "stylized"
    n_high: int = 5
    n_low: int = 5
    p_high: float = 0.9
    d: int = 64
    noise: float = 0.2
    n_pairs: int = 1
    p_relevant: float = 0.9
    n_train: int = 2**10
    irrelevant: Literal["exclude", "redraw"] = "exclude"
    eval_sets: Literal["fresh", "reference"] = "fresh"
    bank: Literal["gaussian", "omniglot"] = "gaussian"
    image_size: int = 14

    def validate(self) -> None:
        require(self.n_high >= 1, "data.n_high", "at least 1 high-frequency class", self.n_high)
        require(self.n_low >= 1, "data.n_low", "at least 1 low-frequency class", self.n_low)
        require(0.0 <= self.p_high <= 1.0, "data.p_high", "a probability in [0, 1]", self.p_high)
        require(self.d >= 1, "data.d", "a positive dimension", self.d)
        require(self.noise >= 0.0, "data.noise", "a non-negative noise level", self.noise)
        require(self.n_pairs >= 1, "data.n_pairs", "at least 1 context pair", self.n_pairs)
        require(0.0 <= self.p_relevant <= 1.0, "data.p_relevant", "a probability in [0, 1]", self.p_relevant)
        require(1 <= self.n_train <= MAX_TRAIN, "data.n_train", f"an integer in [1, {MAX_TRAIN}]", self.n_train)
        require(
            1 <= self.image_size <= RAW_SIZE, "data.image_size", f"an image side in [1, {RAW_SIZE}]", self.image_size
        )
        if self.bank == "omniglot":
            require(
                self.n_classes <= N_CHARACTERS,
                "data.n_low",
                f"at most {N_CHARACTERS} classes in all with bank=omniglot",
                self.n_low,
            )

    @property
    def d_in(self) -> int:
        """Exemplar dimension."""
        return self.image_size**2 if self.bank == "omniglot" else self.d

    @property
    def n_classes(self) -> int:
        return self.n_high + self.n_low

    @property
    def vocab_size(self) -> int:
        return self.n_classes

    def memory_terms(self) -> MemoryTerms:
        world = {"data.n_high": self.n_classes, "data.d": self.d}
        return MemoryTerms(world, ("data.d", self.d), ("data.n_pairs", self.n_pairs), self.n_classes, 18)


class StylizedSource(DataSource):
    """Seeded sampler for :class:`StylizedConfig`; see the module docstring."""

    splits = tuple(f"{dist}{ctx}{grp}" for dist in ("IBD", "OOBD") for ctx in _CONTEXTS for grp in _GROUPS)
    icl_split = "OOBD-rel"
    iwl_split = "IBD-irr"

    def __init__(self, cfg: StylizedConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.n_labels = cfg.n_classes
        self.d_in = cfg.d_in
        self.n_pairs = cfg.n_pairs
        world = self.generator("world", 0)
        if cfg.bank == "gaussian":
            centres = torch.randn(cfg.n_classes, cfg.d, generator=world, device=self.device)
            # [n_classes, 1, d]: one "drawing" per class, its unit-norm centre.
            self.bank = (centres / centres.norm(dim=-1, keepdim=True))[:, None]
        else:
            images = load_omniglot(None, cfg.image_size).to(self.device)
            chars = torch.randperm(images.shape[0], generator=world, device=self.device)[: cfg.n_classes]
            self.bank = images[chars, :N_DRAWERS]
        self.centres = self.bank.mean(dim=1)
        classes = torch.arange(cfg.n_classes, device=self.device)
        self.is_high = classes < cfg.n_high
        high_w = cfg.p_high / cfg.n_high
        low_w = (1.0 - cfg.p_high) / cfg.n_low
        self.class_probs = torch.where(self.is_high, high_w, low_w).float()
        self.oobd_label = torch.where(
            self.is_high, (classes + 1) % cfg.n_high, cfg.n_high + (classes - cfg.n_high + 1) % cfg.n_low
        )
        # One 62-bit key per (seed) names the whole training set for the counter hash.
        key_gen = self.generator("trainset", 0)
        self.train_key = int(torch.randint(0, 2**62, (1,), generator=key_gen, device=self.device).item())

    # ------------------------------------------------------------------ pieces
    @property
    def n_uniforms(self) -> int:
        """Uniforms per sequence: target, L slot classes, L relevance coins, then the options' draws."""
        L = self.cfg.n_pairs
        return 1 + 2 * L + (L if self.cfg.irrelevant == "redraw" else 0) + (L + 1 if self.cfg.bank == "omniglot" else 0)

    def _assemble(self, u: Tensor, z: Tensor, target_probs: Tensor, p_relevant: float, exclude: bool) -> Batch:
        """Sequences from uniforms ``u [b, n_uniforms]`` and noise ``z [b, L + 1, d_in]``.

        Columns of ``u``: target, L slot classes, L relevance coins, then (``redraw``) L
        second draws and (``omniglot``) L + 1 drawing picks.
        """
        L, k = self.cfg.n_pairs, self.cfg.n_classes
        target = inverse_cdf(target_probs, u[:, :1])[:, 0]
        relevant = u[:, 1 + L : 1 + 2 * L] < p_relevant
        col = 1 + 2 * L
        if exclude:
            # Slot classes from the weights with the target removed: compact the K - 1 others per row.
            ar = torch.arange(k - 1, device=self.device)
            others = ar + (ar >= target[:, None]).long()
            other = torch.gather(others, 1, inverse_cdf(self.class_probs[others], u[:, 1 : 1 + L]))
        else:
            other = inverse_cdf(self.class_probs, u[:, 1 : 1 + L])
            again = inverse_cdf(self.class_probs, u[:, col : col + L])
            other = torch.where(other == target[:, None], again, other)
        if self.cfg.irrelevant == "redraw":
            col += L
        ctx = torch.where(relevant, target[:, None], other)
        cls = torch.cat([ctx, target[:, None]], dim=1)
        if self.cfg.bank == "omniglot":
            drawer = (u[:, col : col + L + 1] * self.bank.shape[1]).long().clamp(max=self.bank.shape[1] - 1)
        else:
            drawer = torch.zeros_like(cls)
        x = self.bank[cls, drawer] + self.cfg.noise * z.float()
        return Batch(x, ctx.clone(), cls, target)

    def train_indices(self, step: int, batch_size: int) -> Tensor:
        """``[batch_size]`` training-set indices of the batch at ``step``."""
        gen = self.generator("train", step)
        return torch.randint(0, self.cfg.n_train, (batch_size,), generator=gen, device=self.device)

    def training_sequences(self, index: Tensor) -> Batch:
        """Training sequences ``index`` (int64 in ``[0, n_train)``), each a pure function of (seed, index)."""
        return self._indexed(index, self.class_probs, self.cfg.p_relevant, self.cfg.irrelevant == "exclude")

    def _indexed(self, index: Tensor, target_probs: Tensor, p_relevant: float, exclude: bool) -> Batch:
        """The sequences whose draws are the counter hashes of ``index`` (training law, given target law)."""
        L, d = self.cfg.n_pairs, self.d_in
        index = index.to(self.device)
        n_u = self.n_uniforms
        u = counter_uniforms(self.train_key, index, n_u)
        z = counter_normals(self.train_key, index, (L + 1) * d, offset=n_u).view(-1, L + 1, d)
        return self._assemble(u, z, target_probs, p_relevant, exclude)

    # ------------------------------------------------------------------ API
    def train_batch(self, step: int, batch_size: int) -> Batch:
        index = self.train_indices(step, batch_size)
        table = self._training_table()
        if table is None:
            return self.training_sequences(index)
        return table.rows(index).with_tokens(self._table_tokens.index_select(0, index))

    def _training_table(self) -> Batch | None:
        """The whole finite training set, built once (it is a pure function of the index).

        Each sequence's draws are counter hashes of its index alone, so gathering rows of this
        table gives the very batches :meth:`training_sequences` computes (tested bitwise), and
        data generation leaves the training step. The table's model input
        (:meth:`Batch.tokens`, in ``data.layout``) is laid out once as well, and each batch
        carries its gathered rows. Sets whose table and tokens exceed :data:`MATERIALISE_BYTES`
        are generated per batch instead.
        """
        if not hasattr(self, "_table"):
            n_tokens = self.n_pairs + 1 if self.layout == "packed" else 2 * self.n_pairs + 1
            per_seq = (self.n_pairs + 1) * (4 * self.d_in + 3 * 8) + n_tokens * 4 * (self.d_in + 1)
            self._table = None
            if self.cfg.n_train * per_seq <= MATERIALISE_BYTES:
                self._table = Batch.cat(
                    [
                        self.training_sequences(torch.arange(i, min(i + 4096, self.cfg.n_train), device=self.device))
                        for i in range(0, self.cfg.n_train, 4096)
                    ]
                ).with_layout(self.layout)
                # The model's input laid out once too: a batch gathers its token rows.
                self._table_tokens = self._table.tokens()
        return self._table

    def eval_batch(self, split: str, n: int) -> Batch:
        self.check_split(split)
        dist, _, rest = split.partition("-")
        parts = rest.split("-") if rest else []
        ctx = next((p for p in parts if p in ("rel", "irr")), "")
        grp = next((p for p in parts if p in ("high", "low")), "")
        p_rel = {"": self.cfg.p_relevant, "rel": 1.0, "irr": 0.0}[ctx]
        if grp:
            # Within a group the weights are equal, so the restricted law is uniform on it.
            target_probs = (self.is_high if grp == "high" else ~self.is_high).float()
        else:
            target_probs = self.class_probs
        gen = self.generator("eval:" + split, 0)
        # The -irr splits always exclude the query's class (a clean in-weight measure).
        exclude = ctx == "irr" or self.cfg.irrelevant == "exclude"
        if self.cfg.eval_sets == "reference":
            index = torch.randint(0, 5 * n, (n,), generator=gen, device=self.device)
            batch = self._indexed(index, target_probs, p_rel, exclude)
        else:
            L, d = self.cfg.n_pairs, self.d_in
            u = torch.rand(n, self.n_uniforms, generator=gen, device=self.device, dtype=torch.float64)
            z = torch.randn(n, L + 1, d, generator=gen, device=self.device)
            batch = self._assemble(u, z, target_probs, p_rel, exclude)
        if dist == "OOBD":
            batch = Batch(
                batch.exemplars, self.oobd_label[batch.context_labels], batch.classes, self.oobd_label[batch.target]
            )
        return batch


register_family(StylizedConfig, StylizedSource)
