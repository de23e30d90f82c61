"""Log-probability granularity: the unit whose probability ratio PPO clips (`algorithm.logprob_granularity`).

Embodied policies return log-probs (and entropies) per token, [B, C, A]: one entry per action dimension of
each of the C steps of an action chunk. A step mask [B, C] marks the steps that ran (an env that finished
inside a chunk ran only the first few). The granularity decides what one ratio covers:

- `token`:  [B, C, A] unchanged; one ratio per action dimension.
- `action`: [B, C], the sum over the A dimensions (the log-prob of a whole action).
- `chunk`:  [B], the sum over the valid steps of the chunk (the log-prob of the whole chunk).

LLM log-probs are [B, L] with a response mask [B, L]: `token` and `action` leave them unchanged, `chunk`
sums each response into one sequence log-prob [B].

Entropies of factorised distributions add up the same way, so `reduce_logprobs` serves them too.
"""

from __future__ import annotations

import torch

from algorithms.config import LogprobGranularity
from algorithms.masked import expand_mask

GRANULARITY_KEEP_DIMS = {"token": None, "action": 2, "chunk": 1}  # leading dims kept; None = all


def reduce_logprobs(
    logprobs: torch.Tensor, mask: torch.Tensor | None, granularity: LogprobGranularity
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum per-token log-probs to the configured granularity, dropping masked entries from the sums.

    Args:
        logprobs: [B, C, A] (embodied, per token) or [B, L] (LLM).
        mask: bool, a prefix of logprobs' shape ([B, C] step mask, [B, L] response mask), or None (all valid).
        granularity: token | action | chunk.

    Returns:
        (reduced, reduced_mask): token -> [B, C, A] / [B, L]; action -> [B, C] / [B, L]; chunk -> [B].
        `reduced_mask` has the reduced shape and is True where any summed entry was valid. Masked entries
        are replaced by 0 (also with token granularity), so NaN or garbage there cannot leak into a loss or
        its gradient.
    """
    if granularity not in GRANULARITY_KEEP_DIMS:
        raise ValueError(f"unknown logprob_granularity {granularity!r}; choose one of token, action, chunk")
    full_mask = expand_mask(mask, logprobs)
    kept = torch.where(full_mask, logprobs, torch.zeros((), dtype=logprobs.dtype, device=logprobs.device))
    keep = GRANULARITY_KEEP_DIMS[granularity]
    if keep is None or keep >= logprobs.ndim:
        return kept, full_mask
    summed = tuple(range(keep, logprobs.ndim))
    return kept.sum(dim=summed), full_mask.any(dim=summed)


def align_to(x: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """Broadcast `x` (per sequence [B], per step [B, C], or `like`'s shape) over the trailing dims of `like`.

    Raises when `x` has more dimensions than `like`, e.g. per-step advantages [B, C] with chunk granularity:
    one chunk log-prob cannot take C different advantages.
    """
    if tuple(x.shape) != tuple(like.shape[: x.ndim]):
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} cannot be matched to log-probs of shape {tuple(like.shape)}: "
            f"its shape must be the leading dimensions of theirs. Per-step {name} [B, C] need "
            "logprob_granularity token or action; per-chunk ones are [B]"
        )
    return x.reshape(x.shape + (1,) * (like.ndim - x.ndim)).expand(like.shape)
