"""Critic-free estimators from outcome rewards: grpo, rloo and reinforce_pp (registered by name).

Same call shape and layouts as `algorithms.advantages` (read its docstring): `fn(inputs, config) ->
(advantages, returns)` shaped like `inputs.rewards`, 0 where invalid.

The outcome score of env n is the sum of its valid rewards over the rollout. grpo and rloo compare the scores
of a group (`inputs.group_size` consecutive envs that started from the same initial state), so each env
must play exactly one episode per rollout: entries after its first done must be invalid. For an env that
auto-resets, `first_episode_mask(dones)` builds that `valid` mask.
"""

from __future__ import annotations

import torch

from algorithms.advantages import (
    AdvantageInputs,
    check_invalid_follow_dones,
    flatten_steps,
    register_advantage,
    unflatten_steps,
)
from algorithms.config import AlgorithmConfig
from algorithms.masked import masked_whiten


def first_episode_mask(dones: torch.Tensor) -> torch.Tensor:
    """bool [T, N] or [T, N, C]: True up to and including each env's first done (in flattened time order)."""
    flat = flatten_steps(dones.bool()).long()
    before = torch.cumsum(flat, dim=0) - flat  # dones strictly before each entry
    return unflatten_steps(before == 0, dones)


def outcome_scores(rewards: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """[N]: the sum of each env's valid rewards (rewards [T, N] or [T, N, C]; valid the same, or None)."""
    kept = rewards if valid is None else torch.where(valid, rewards, torch.zeros_like(rewards))
    flat = flatten_steps(kept)
    return flat.sum(dim=0)


def check_one_episode(inputs: AdvantageInputs, name: str) -> None:
    """Refuse rollouts where an env has valid entries after its first done (its groupmates' scores would be
    compared with the sum of several episodes)."""
    valid = flatten_steps(inputs.mask)
    after_done = ~flatten_steps(first_episode_mask(inputs.dones & inputs.mask))
    if (valid & after_done).any():
        s, n = (int(i) for i in (valid & after_done).nonzero()[0])
        raise ValueError(
            f"{name} compares one episode per env within its group, but env {n} has a valid entry at flattened "
            f"step {s} after its episode ended; pass valid=first_episode_mask(dones) (or run without auto-reset)"
        )


def _group_view(scores: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(
            f"{name} needs groups of at least 2 envs with the same initial state; set env.group_size"
        )
    return scores.view(-1, group_size)


def _broadcast(per_env: torch.Tensor, inputs: AdvantageInputs) -> torch.Tensor:
    """[N] -> rewards' shape, 0 where invalid."""
    shape = (1, -1) + (1,) * (inputs.rewards.ndim - 2)
    full = per_env.to(inputs.rewards.dtype).view(shape).expand(inputs.rewards.shape)
    return torch.where(inputs.mask, full, torch.zeros_like(full))


@register_advantage("grpo")
def grpo(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300):
    A_n = (s_n - mean_group(s)) / (std_group(s) + grpo_epsilon), std unbiased; without std when
    config.grpo_normalize_std is false (Liu et al. 2025, Dr. GRPO). Every valid entry of env n gets A_n.
    Returns: the outcome score s_n on each valid entry.
    """
    check_one_episode(inputs, "grpo")
    scores = outcome_scores(inputs.rewards, inputs.valid)
    groups = _group_view(scores, inputs.group_size, "grpo")
    centred = groups - groups.mean(dim=1, keepdim=True)
    if config.grpo_normalize_std:
        centred = centred / (groups.std(dim=1, keepdim=True) + config.grpo_epsilon)
    return _broadcast(centred.reshape(-1), inputs), _broadcast(scores, inputs)


@register_advantage("rloo")
def rloo(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740):
    A_n = s_n - mean of the other G-1 scores of its group = G/(G-1) * (s_n - mean_group(s)).
    Returns: the outcome score s_n on each valid entry.
    """
    check_one_episode(inputs, "rloo")
    scores = outcome_scores(inputs.rewards, inputs.valid)
    groups = _group_view(scores, inputs.group_size, "rloo")
    g = groups.shape[1]
    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (g - 1)
    return _broadcast((groups - others_mean).reshape(-1), inputs), _broadcast(scores, inputs)


@register_advantage("reinforce_pp")
def reinforce_pp(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262).

    r'_t = r_t - kl_in_reward_coef * (logprobs_t - ref_logprobs_t)            (k1 KL in the reward)
    G_t = r'_t + gamma * (1 - done_t) * G_{t+1}                                (no bootstrap: critic-free)
    with config.group_baseline: G_t -= mean over the env's group of the outcome scores (REINFORCE++-baseline)
    A = whiten(G) over all valid entries of the batch.
    Returns: G_t before the baseline and whitening.
    """
    check_invalid_follow_dones(inputs)
    mask = inputs.mask
    rewards = inputs.rewards
    if config.kl_in_reward_coef > 0:
        if inputs.logprobs is None or inputs.ref_logprobs is None:
            raise ValueError(
                "reinforce_pp with kl_in_reward_coef > 0 needs logprobs and ref_logprobs (the "
                "sampling and reference policies' log-probs of the taken actions)"
            )
        rewards = rewards - config.kl_in_reward_coef * (inputs.logprobs - inputs.ref_logprobs)
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    flat, dones = flatten_steps(rewards), flatten_steps(inputs.dones)
    returns = torch.zeros_like(flat)
    last = torch.zeros_like(flat[0])
    for t in range(flat.shape[0] - 1, -1, -1):
        last = flat[t] + config.gamma * (~dones[t]).to(flat.dtype) * last
        returns[t] = last
    returns = unflatten_steps(returns, inputs.rewards)
    centred = returns
    if config.group_baseline:
        check_one_episode(inputs, "reinforce_pp with group_baseline")
        groups = _group_view(
            outcome_scores(inputs.rewards, inputs.valid), inputs.group_size, "group_baseline"
        )
        baseline = groups.mean(dim=1, keepdim=True).expand_as(groups).reshape(-1)
        centred = returns - _broadcast(baseline, inputs)
    return masked_whiten(centred, mask), torch.where(mask, returns, torch.zeros_like(returns))
