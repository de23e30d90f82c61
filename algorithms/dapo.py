"""DAPO's data-side pieces (Yu et al. 2025, arXiv:2503.14476): dynamic sampling and over-long reward shaping.

    kept = filter_groups(scores, group_size)          # which groups of one round have mixed outcomes

    batch = assemble_groups(round_scores, group_size, target_groups, max_rounds)   # algorithm.dynamic_sampling
    while not batch.complete: generate another round, append its scores, assemble again
    train on batch.groups ((round, group) pairs); log batch.metrics()

    scores = shape_overlong_rewards(scores, response_lengths, config)   # algorithm.overlong_*

(The clip-higher and token-mean parts of DAPO are `clip_ratio_high` and `loss_agg_mode: token-mean`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from algorithms.config import AlgorithmConfig


@dataclass(frozen=True)
class GroupFilter:
    """Which envs (or responses) of one round survive dynamic sampling.

    keep: bool [N], True for every member of a kept group (one whose outcomes are not all equal).
    """

    keep: torch.Tensor
    group_size: int
    num_groups: int
    num_dropped: int

    @property
    def num_kept(self) -> int:
        return self.num_groups - self.num_dropped

    @property
    def kept_groups(self) -> list[int]:
        """Indices of the kept groups, ascending."""
        return self.keep[:: self.group_size].nonzero().flatten().tolist()


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


@dataclass(frozen=True)
class GroupBatch:
    """One training step's batch under dynamic sampling: the groups chosen from the generation rounds so far.

    groups:    (round, group) of each batch slot, in slot order. Complete: exactly `target` of them, the mixed
               groups in the order they were generated, then (only when the round bound was hit) uniform groups
               of the last round as padding. Incomplete: the mixed groups found so far (keep them, drop the rest).
    target:    groups the batch holds (env.num_envs / env.group_size: one round's worth).
    rounds:    generation rounds so far.
    generated: groups generated in all rounds; mixed: those whose outcomes differ (the rest were filtered).
    padded:    uniform groups in the batch (0 unless the bound was hit).
    complete:  the batch is final: full of mixed groups, or `max_rounds` rounds were generated.
    """

    groups: tuple[tuple[int, int], ...]
    target: int
    rounds: int
    generated: int
    mixed: int
    padded: int
    complete: bool

    def metrics(self) -> dict[str, float]:
        """gen_rounds, groups_kept (mixed groups trained on), groups_filtered (uniform groups generated),
        groups_surplus (mixed groups past the target, dropped), groups_padded (plain floats, for logging)."""
        kept = len(self.groups) - self.padded
        return {
            "gen_rounds": float(self.rounds),
            "groups_kept": float(kept),
            "groups_filtered": float(self.generated - self.mixed),
            "groups_surplus": float(self.mixed - kept),
            "groups_padded": float(self.padded),
        }


def assemble_groups(
    round_scores: Sequence[torch.Tensor],
    group_size: int,
    target_groups: int,
    max_rounds: int,
    tolerance: float = 0.0,
) -> GroupBatch:
    """DAPO's dynamic sampling (Algorithm 1): keep the groups with mixed outcomes of every round, in the order
    they were generated, until `target_groups` of them fill the batch; the mixed groups past the target are
    dropped (they are as on-policy as the rest, only surplus), as verl keeps the first ones.

    The bound: after `max_rounds` rounds (0: unbounded) the batch is complete even when short of mixed groups.
    It then trains on the mixed groups it has, topped up with uniform groups of the last round, so every step
    keeps the configured batch shape (every actor rank gets as many groups, as FSDP needs): the padding has
    advantage 0 and adds no policy gradient; the step is plain GRPO's for those groups. (verl stops the run
    with an error there instead.)

    Args:
        round_scores: one [N_r] tensor of outcome scores per round generated so far (N_r a multiple of
            group_size; `group_size` consecutive entries form a group).
        group_size: members per group (>= 2).
        target_groups: groups the training batch holds (>= 1).
        max_rounds: bound on the rounds of one step (>= 0; 0: unbounded).
        tolerance: scores within this of each other count as equal.
    """
    if target_groups < 1 or max_rounds < 0 or not round_scores:
        raise ValueError(
            f"assemble_groups needs at least one round, target_groups >= 1 and max_rounds >= 0; got "
            f"{len(round_scores)} rounds, target_groups={target_groups}, max_rounds={max_rounds}"
        )
    filters = [filter_groups(scores, group_size, tolerance) for scores in round_scores]
    mixed = [(r, g) for r, f in enumerate(filters) for g in f.kept_groups]
    rounds, generated = len(filters), sum(f.num_groups for f in filters)

    def batch(groups: list[tuple[int, int]], padded: int, complete: bool) -> GroupBatch:
        return GroupBatch(tuple(groups), target_groups, rounds, generated, len(mixed), padded, complete)

    if len(mixed) >= target_groups:
        return batch(mixed[:target_groups], 0, True)
    if max_rounds == 0 or rounds < max_rounds:
        return batch(mixed, 0, False)
    last = filters[-1]
    uniform = [(rounds - 1, g) for g in range(last.num_groups) if not last.keep[g * group_size]]
    missing = target_groups - len(mixed)
    if len(uniform) < missing:
        raise ValueError(
            f"the last round has {len(uniform)} uniform groups, too few to fill the batch's {missing} missing "
            f"slots: each round must generate at least target_groups={target_groups} groups"
        )
    return batch(mixed + uniform[:missing], missing, True)


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
