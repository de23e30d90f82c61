"""Masked statistics and loss aggregation: the bookkeeping every advantage and loss shares.

Masks are boolean (or 0/1) tensors whose shape is a *prefix* of the data's shape, e.g. a step mask [B, C]
for per-token data [B, C, A]; they broadcast over the trailing dimensions. An entry whose mask is False
contributes exactly nothing: not to sums, not to counts, not to gradients (it is removed with `where`, so
NaN or inf in a masked entry cannot leak either).

Loss aggregation modes (the `algorithm.loss_agg_mode` key), for a per-entry loss `l[b, ...]` with mask `m`:
- `token-mean`:          sum_b,i m*l / sum_b,i m                       (DAPO: every token weighs the same)
- `seq-mean-token-sum`:  mean over sequences b with any m of sum_i m*l  (long sequences weigh more)
- `seq-mean-token-mean`: mean over sequences b with any m of (sum_i m*l / sum_i m)  (GRPO paper)
A "sequence" is the first dimension (a response, or one chunk step of one env); its "tokens" are all the
other dimensions flattened. Sequences with no valid token are left out of the sequence mean.
"""

from __future__ import annotations

from typing import Literal

import torch

LossAggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def expand_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """`mask` (shape a prefix of `like.shape`, or None = all valid) as a bool tensor of `like`'s shape."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if tuple(mask.shape) != tuple(like.shape[: mask.ndim]):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match data of shape {tuple(like.shape)}: the mask's "
            "shape must be the leading dimensions of the data's shape (e.g. [B, C] for [B, C, A])"
        )
    mask = mask.to(device=like.device, dtype=torch.bool)
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim)).expand(like.shape)


def masked_sum(
    x: torch.Tensor, mask: torch.Tensor | None, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Sum of the valid entries of `x` (over `dim`, or over everything)."""
    m = expand_mask(mask, x)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    kept = torch.where(m, x, zero)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_count(
    like: torch.Tensor, mask: torch.Tensor | None, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Number of valid entries of a tensor shaped like `like` (over `dim`, or in all), as `like`'s dtype."""
    m = expand_mask(mask, like).to(like.dtype if like.is_floating_point() else torch.float32)
    return m.sum() if dim is None else m.sum(dim=dim)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor | None, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Mean of the valid entries; 0 where there are none (so an empty micro-batch adds nothing)."""
    return masked_sum(x, mask, dim) / masked_count(x, mask, dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries (Bessel-corrected when `unbiased` and there are at least 2)."""
    count = masked_count(x, mask)
    mean = masked_sum(x, mask) / count.clamp(min=1.0)
    sq = masked_sum((x - mean) ** 2, mask)
    denom = (count - 1.0).clamp(min=1.0) if unbiased else count.clamp(min=1.0)
    return sq / denom


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-8, shift_mean: bool = True
) -> torch.Tensor:
    """(x - mean) / (std + eps) over the valid entries; invalid entries come back as 0."""
    mean = masked_mean(x, mask)
    std = masked_var(x, mask).sqrt()
    out = (x - mean) / (std + eps) if shift_mean else x / (std + eps)
    return torch.where(expand_mask(mask, x), out, torch.zeros((), dtype=x.dtype, device=x.device))


def explained_variance(
    predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """1 - Var[target - predicted] / Var[target] over valid entries; NaN when the target has no variance.

    1 means the critic predicts the returns perfectly, 0 means it does no better than their mean.
    """
    var_target = masked_var(target, mask)
    ev = 1.0 - masked_var(target - predicted, mask) / var_target
    return torch.where(var_target > 0, ev, torch.full_like(ev, float("nan")))


def _per_sequence(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence (first dimension) masked sums of `x` and valid counts, both [B]."""
    m = expand_mask(mask, x).reshape(x.shape[0], -1)
    flat = x.reshape(x.shape[0], -1)
    sums = torch.where(m, flat, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1)
    return sums, m.to(sums.dtype if sums.is_floating_point() else torch.float32).sum(dim=1)


def aggregation_count(like: torch.Tensor, mask: torch.Tensor | None, mode: LossAggMode) -> torch.Tensor:
    """What `aggregate_loss` divides by for this batch: the valid-entry count (token-mean) or the number of
    sequences with a valid entry (seq-mean modes). Sum it over the micro-batches of a mini-batch and pass the
    total as `denominator` so that the micro-batch losses add up to the mini-batch loss."""
    if mode == "token-mean":
        return masked_count(like, mask)
    _, counts = _per_sequence(like, mask)
    return (counts > 0).to(counts.dtype).sum()


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor | None,
    mode: LossAggMode,
    denominator: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-entry loss [B, ...] to a scalar with one of `LOSS_AGG_MODES` (see the module docstring).

    `mask`: bool, shape a prefix of `loss.shape`, or None (all valid).
    `denominator`: replaces this batch's own count (see `aggregation_count`); None: use this batch's count.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; choose one of {', '.join(LOSS_AGG_MODES)}")
    if mode == "token-mean":
        total = masked_sum(loss, mask)
    else:
        per_seq, counts = _per_sequence(loss, mask)
        if mode == "seq-mean-token-mean":
            per_seq = per_seq / counts.clamp(min=1.0)
        total = per_seq.sum()  # sequences with no valid token contribute 0 here and are not counted
    count = aggregation_count(loss, mask, mode) if denominator is None else denominator
    if isinstance(count, torch.Tensor):
        return total / count.to(total.dtype).clamp(min=1.0)
    return total / max(float(count), 1.0)
