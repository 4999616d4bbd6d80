"""Vectorised sampling helpers shared by the data families (no per-sequence Python loops)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def zipf_probs(n: int, alpha: float, device: torch.device | str = "cpu") -> Tensor:
    """``[n]`` probabilities ``P(k) ∝ (k + 1) ** -alpha``; alpha = 0 is uniform."""
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=device)
    w = ranks.pow(-float(alpha))
    return (w / w.sum()).float()


def sample_categorical(probs: Tensor, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Draw ``shape`` i.i.d. indices from ``probs`` (with replacement)."""
    numel = 1
    for s in shape:
        numel *= s
    if numel == 0:
        return torch.zeros(shape, dtype=torch.long, device=probs.device)
    # multinomial caps the category count at 2**24; fall back to inverse-CDF sampling.
    if probs.numel() <= 2**24:
        flat = torch.multinomial(probs, numel, replacement=True, generator=gen)
    else:
        u = torch.rand(numel, generator=gen, device=probs.device, dtype=torch.float64)
        flat = torch.searchsorted(probs.double().cumsum(0), u).clamp_(max=probs.numel() - 1)
    return flat.view(shape)


def shuffle_rows(x: Tensor, gen: torch.Generator) -> Tensor:
    """Independently permute the last dimension of every row of ``x [batch, n]``."""
    perm = torch.rand(x.shape, generator=gen, device=x.device).argsort(dim=-1)
    return torch.gather(x, -1, perm)


def randint_excluding(high: int, exclude: Tensor, gen: torch.Generator) -> Tensor:
    """Uniform ints in ``[0, high)`` shaped like ``exclude``, never equal to it elementwise."""
    r = torch.randint(0, high - 1, exclude.shape, generator=gen, device=exclude.device)
    return r + (r >= exclude).long()


def resample_excluding(probs: Tensor, exclude: Tensor, n: int, gen: torch.Generator, max_rounds: int = 64) -> Tensor:
    """``[batch, n]`` draws from ``probs`` with every entry != ``exclude[batch]``.

    Rejection sampling restricted to the clashing entries keeps the conditional distribution
    exact; after ``max_rounds`` any rare survivors are moved to a uniform other class.
    """
    out = sample_categorical(probs, (exclude.shape[0], n), gen)
    for _ in range(max_rounds):
        clash = out == exclude[:, None]
        if not bool(clash.any()):
            return out
        redraw = sample_categorical(probs, (int(clash.sum()),), gen)
        out[clash] = redraw
    clash = out == exclude[:, None]
    if bool(clash.any()):
        out[clash] = randint_excluding(probs.numel(), exclude[:, None].expand_as(out)[clash], gen)
    return out


def sample_excluding(probs: Tensor, exclude: Tensor, n: int, gen: torch.Generator, max_rounds: int = 64) -> Tensor:
    """``[batch, n]`` draws from ``probs`` with no entry in its row of ``exclude [batch, k]``.

    Like :func:`resample_excluding` but with several excluded classes per row; rows still
    clashing after ``max_rounds`` are redrawn exactly from their masked distribution.
    The excluded classes must leave some probability mass in every row.
    """
    out = sample_categorical(probs, (exclude.shape[0], n), gen)
    for _ in range(max_rounds):
        clash = (out[:, :, None] == exclude[:, None, :]).any(-1)
        if not bool(clash.any()):
            return out
        out[clash] = sample_categorical(probs, (int(clash.sum()),), gen)
    clash = (out[:, :, None] == exclude[:, None, :]).any(-1)
    rows = clash.any(1).nonzero()[:, 0]
    if rows.numel():
        masked = probs.expand(rows.numel(), -1).clone().scatter_(1, exclude[rows], 0.0)
        redraw = torch.multinomial(masked, n, replacement=True, generator=gen)
        out[rows] = torch.where(clash[rows], redraw, out[rows])
    return out


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Categorical draws by inverting the CDF of ``probs [..., K]`` at uniforms ``u [..., m]``.

    ``probs`` need not be normalised; a row with no mass is treated as uniform. A class of
    zero probability is never returned, even at the float edges of ``u``.
    """
    cdf = probs.double().cumsum(-1)
    total = cdf[..., -1:]
    uniform = torch.arange(1, probs.shape[-1] + 1, device=probs.device, dtype=torch.float64) / probs.shape[-1]
    cdf = torch.where(total > 0, cdf / total.clamp_min(1e-300), uniform)
    # Searching all but the last edge caps the index at K - 1 without a clamp.
    return torch.searchsorted(cdf[..., :-1].contiguous(), u.double().contiguous())


_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, m: int) -> Tensor:
    """``x * m mod 2**32`` for int64 ``x`` in ``[0, 2**32)``, split in 16-bit halves so no product overflows."""
    return (((((x >> 16) * m) & 0xFFFF) << 16) + (x & 0xFFFF) * m) & _MASK32


def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's finaliser: a bijection of ``[0, 2**32)`` in which every input bit flips ~half the output bits."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniforms(key: int, index: Tensor, n: int, offset: int = 0) -> Tensor:
    """``[*index.shape, n]`` float64 uniforms in ``(0, 1)``: draw ``j`` of item ``i`` is a hash of ``(key, i, offset + j)``.

    Counter-based (stateless) randomness: any subset of items is regenerated exactly and in
    one vectorised pass, without storing anything or replaying a generator. Row and column
    are hashed separately and added before a final mix, so two items never share a shifted
    copy of each other's draws (as ``hash(i ^ j)`` would). Resolution is 2**-32.

    Args:
        key: 64-bit stream key (derive it from a seeded generator).
        index: int64 item indices in ``[0, 2**32)``.
        n: draws per item.
        offset: first counter, so disjoint blocks of draws come from one key.
    """
    i = index.long()[..., None] & _MASK32
    j = torch.arange(offset, offset + n, device=index.device, dtype=torch.long) & _MASK32
    row = _fmix32(i ^ (key & _MASK32))
    col = _fmix32(j ^ ((key >> 32) & _MASK32))
    h = _fmix32((row + col) & _MASK32)
    return (h.double() + 0.5) * 2.0**-32


def counter_normals(key: int, index: Tensor, n: int, offset: int = 0) -> Tensor:
    """``[*index.shape, n]`` float64 standard normals from counters ``offset .. offset + 2n - 1`` (Box-Muller)."""
    u = counter_uniforms(key, index, 2 * n, offset)
    return torch.sqrt(-2.0 * torch.log(u[..., :n])) * torch.cos(2.0 * math.pi * u[..., n:])
