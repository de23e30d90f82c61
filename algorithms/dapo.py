"""DAPO's data-side pieces (Yu et al. 2025, arXiv:2503.14476): dynamic sampling and over-long reward shaping.

    kept = filter_groups(scores, group_size)          # algorithm.dynamic_sampling
    rewards = rewards[:, kept.keep]                   # keep those envs along the N axis; log kept.metrics()

    scores = shape_overlong_rewards(scores, response_lengths, config)   # algorithm.overlong_*

(The clip-higher and token-mean parts of DAPO are `clip_ratio_high` and `loss_agg_mode: token-mean`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.config import AlgorithmConfig


@dataclass(frozen=True)
class GroupFilter:
    """Which envs (or responses) survive dynamic sampling, and how many groups were dropped.

    keep: bool [N], True for every member of a kept group.
    """

    keep: torch.Tensor
    group_size: int
    num_groups: int
    num_dropped: int

    @property
    def num_kept(self) -> int:
        return self.num_groups - self.num_dropped

    def metrics(self) -> dict[str, float]:
        """dynamic_sampling/groups_dropped, /groups_kept, /fraction_dropped (plain floats, for logging)."""
        return {
            "dynamic_sampling/groups_dropped": float(self.num_dropped),
            "dynamic_sampling/groups_kept": float(self.num_kept),
            "dynamic_sampling/fraction_dropped": self.num_dropped / max(self.num_groups, 1),
        }


def filter_groups(scores: torch.Tensor, group_size: int, tolerance: float = 0.0) -> GroupFilter:
    """Drop the groups whose outcome scores are all equal (all solved or all failed): their group-relative
    advantages are 0, so they only dilute the batch.

    Args:
        scores: [N] outcome score per env or response (`group_advantages.outcome_scores` for a rollout);
            `group_size` consecutive entries form a group.
        group_size: members per group (>= 2).
        tolerance: scores within this of each other count as equal.
    """
    if scores.ndim != 1 or group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(
            f"filter_groups needs scores [N] with N a multiple of group_size >= 2; got shape "
            f"{tuple(scores.shape)} and group_size={group_size}"
        )
    groups = scores.view(-1, group_size)
    spread = groups.max(dim=1).values - groups.min(dim=1).values
    kept_groups = spread > tolerance
    keep = kept_groups.repeat_interleave(group_size)
    num_groups = groups.shape[0]
    return GroupFilter(keep, group_size, num_groups, num_groups - int(kept_groups.sum()))


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft over-long punishment (§3.4), scaled by `penalty`, as a float tensor of `lengths`' shape:

        0                                         if |y| <= max_length - buffer
        penalty * ((max_length - buffer) - |y|) / buffer   if max_length - buffer < |y| <= max_length
        -penalty                                  if |y| > max_length

    With buffer = 0 it is a hard step: -penalty past max_length.
    """
    lengths = lengths.to(torch.float32)
    start = float(max_length - buffer)
    if buffer > 0:
        ramp = (start - lengths) / float(buffer)
    else:
        ramp = torch.zeros_like(lengths)
    out = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    out = torch.where(lengths > max_length, torch.full_like(lengths, -1.0), out)
    return penalty * out


def shape_overlong_rewards(
    scores: torch.Tensor, lengths: torch.Tensor, config: AlgorithmConfig
) -> torch.Tensor:
    """`scores` [B] plus the over-long penalty of each response length [B]; unchanged when
    config.overlong_max_length is null."""
    if config.overlong_max_length is None:
        return scores
    pen = overlong_penalty(
        lengths, config.overlong_max_length, config.overlong_buffer, config.overlong_penalty
    )
    return scores + pen.to(device=scores.device, dtype=scores.dtype)
