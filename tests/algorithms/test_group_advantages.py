"""GRPO, RLOO and Reinforce++: hand-computed cases and properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.advantages import AdvantageInputs
from algorithms.config import AlgorithmConfig
from algorithms.group_advantages import first_episode_mask, grpo, outcome_scores, reinforce_pp, rloo

D = torch.float64


def outcome_inputs(scores, group_size):
    """LLM-style rollout: one step per response (T = 1), each response ends there."""
    rewards = torch.tensor([scores], dtype=D)
    ones = torch.ones_like(rewards, dtype=torch.bool)
    return AdvantageInputs(rewards, ones, torch.zeros_like(ones), group_size=group_size)


def test_grpo_hand_computed():
    # Group [1, 0, 0]: mean 1/3, deviations 2/3, -1/3, -1/3; unbiased variance (4/9 + 1/9 + 1/9) / 2 = 1/3,
    # std 1/sqrt(3) = 0.57735 -> A = (2/3)*sqrt(3) = 1.1547, -(1/3)*sqrt(3) = -0.57735 (twice).
    # Group [2, 2, 2]: all equal -> 0.
    inputs = outcome_inputs([1.0, 0.0, 0.0, 2.0, 2.0, 2.0], 3)
    adv, ret = grpo(inputs, AlgorithmConfig(advantage="grpo", grpo_epsilon=1e-12))
    s3 = math.sqrt(3)
    torch.testing.assert_close(adv[0], torch.tensor([2 / 3 * s3, -s3 / 3, -s3 / 3, 0, 0, 0], dtype=D))
    torch.testing.assert_close(ret[0], inputs.rewards[0])
    # Without std normalisation (Dr. GRPO): just the deviations from the group mean.
    adv, _ = grpo(inputs, AlgorithmConfig(advantage="grpo", grpo_normalize_std=False))
    torch.testing.assert_close(adv[0], torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], dtype=D))


def test_grpo_embodied_scores_sum_valid_rewards():
    # 2 envs in one group over T=3 chunks. Env 0 earns 1 at t=1 and terminates; t=2 did not run (reward 5
    # there is garbage). Env 1 earns nothing and is truncated at t=2. Scores 1 and 0: mean 0.5, unbiased std
    # sqrt(0.5) -> A = +-0.5/sqrt(0.5) = +-0.70711 on every valid entry, 0 on the invalid one.
    rewards = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=D)
    term = torch.tensor([[False, False], [True, False], [False, False]])
    trunc = torch.tensor([[False, False], [False, False], [False, True]])
    valid = first_episode_mask(term | trunc)
    assert valid.tolist() == [[True, True], [True, True], [False, True]]
    adv, _ = grpo(AdvantageInputs(rewards, term, trunc, valid=valid, group_size=2), AlgorithmConfig())
    a = 0.5 / math.sqrt(0.5)
    torch.testing.assert_close(
        adv, torch.tensor([[a, -a], [a, -a], [0.0, -a]], dtype=D), atol=1e-5, rtol=1e-5
    )


def test_rloo_hand_computed():
    # Group [1, 0, 0]: A_0 = 1 - (0+0)/2 = 1, A_1 = 0 - (1+0)/2 = -0.5, A_2 = -0.5; group [3, 1]: +2, -2.
    adv, _ = rloo(outcome_inputs([1.0, 0.0, 0.0], 3), AlgorithmConfig())
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -0.5, -0.5], dtype=D))
    adv, _ = rloo(outcome_inputs([3.0, 1.0], 2), AlgorithmConfig())
    torch.testing.assert_close(adv[0], torch.tensor([2.0, -2.0], dtype=D))


def test_reinforce_pp_hand_computed():
    # T=2, N=2, gamma 1. Env 0 earns 1 at t=1, env 1 nothing; both terminate at t=1.
    # Returns: env 0 [1, 1], env 1 [0, 0]. Whitened over the 4 entries: mean 0.5, unbiased std
    # sqrt(4 * 0.25 / 3) = 0.57735 -> A = +-0.5/0.57735 = +-0.86603.
    rewards = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=D)
    term = torch.tensor([[False, False], [True, True]])
    inputs = AdvantageInputs(rewards, term, torch.zeros_like(term), group_size=2)
    adv, ret = reinforce_pp(inputs, AlgorithmConfig(gamma=1.0))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D))
    a = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(adv, torch.tensor([[a, -a], [a, -a]], dtype=D), atol=1e-6, rtol=1e-6)
    # Group baseline: scores 1, 0 -> mean 0.5 subtracted; whitening gives the same numbers here.
    adv_b, _ = reinforce_pp(inputs, AlgorithmConfig(gamma=1.0, group_baseline=True))
    torch.testing.assert_close(adv_b, adv)
    # KL in the reward, coefficient 0.5, log pi - log pi_ref = [[0.2, 0], [0.4, 0]]:
    # env 0 rewards become [0 - 0.1, 1 - 0.2] = [-0.1, 0.8] -> returns [0.7, 0.8]; env 1 unchanged.
    logprobs = torch.tensor([[0.2, 0.0], [0.4, 0.0]], dtype=D)
    kl_inputs = AdvantageInputs(
        rewards, term, torch.zeros_like(term), logprobs=logprobs, ref_logprobs=torch.zeros_like(logprobs)
    )
    _, ret = reinforce_pp(kl_inputs, AlgorithmConfig(gamma=1.0, kl_in_reward_coef=0.5))
    torch.testing.assert_close(ret, torch.tensor([[0.7, 0.0], [0.8, 0.0]], dtype=D))


def test_group_estimators_refuse_several_episodes_per_env_and_singleton_groups():
    rewards = torch.ones(3, 2, dtype=D)
    term = torch.tensor([[True, False], [False, False], [False, True]])
    inputs = AdvantageInputs(rewards, term, torch.zeros_like(term), group_size=2)  # env 0 runs on after t=0
    for fn in (grpo, rloo):
        with pytest.raises(ValueError, match="first_episode_mask"):
            fn(inputs, AlgorithmConfig())
    with pytest.raises(ValueError, match="group_size"):
        grpo(outcome_inputs([1.0, 0.0], 1), AlgorithmConfig())
    with pytest.raises(ValueError, match="ref_logprobs"):
        reinforce_pp(inputs, AlgorithmConfig(kl_in_reward_coef=0.1))


def test_outcome_scores_per_step_layout():
    # [T=2, N=2, C=2]: env 0 rewards 1+2+3+4 = 10, env 1: 1 (its last step invalid: 100 ignored).
    rewards = torch.tensor([[[1.0, 2.0], [1.0, 0.0]], [[3.0, 4.0], [0.0, 100.0]]])
    valid = torch.ones_like(rewards, dtype=torch.bool)
    valid[1, 1, 1] = False
    torch.testing.assert_close(outcome_scores(rewards, valid), torch.tensor([10.0, 1.0]))


groups = st.tuples(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2**31 - 1), st.booleans())


@settings(max_examples=50, deadline=None)
@given(groups)
def test_group_advantages_have_zero_mean_per_group(case):
    size, count, seed, binary = case
    g = torch.Generator().manual_seed(seed)
    scores = (
        torch.randint(0, 2, (size * count,), generator=g).to(D)
        if binary
        else torch.randn(size * count, generator=g, dtype=D)
    )
    inputs = outcome_inputs(scores.tolist(), size)
    for fn, config in (
        (grpo, AlgorithmConfig()),
        (grpo, AlgorithmConfig(grpo_normalize_std=False)),
        (rloo, AlgorithmConfig()),
    ):
        adv, _ = fn(inputs, config)
        per_group = adv[0].view(count, size)
        torch.testing.assert_close(per_group.mean(dim=1), torch.zeros(count, dtype=D), atol=1e-9, rtol=0)
    adv, _ = grpo(inputs, AlgorithmConfig(grpo_epsilon=1e-12))
    for row, raw in zip(adv[0].view(count, size), scores.view(count, size)):
        if raw.std() > 1e-6:  # normalised groups have unit (unbiased) std
            assert abs(row.std().item() - 1.0) < 1e-6


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_reinforce_pp_advantages_are_whitened(steps, envs, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(steps, envs, generator=g, dtype=D)
    term = torch.rand(steps, envs, generator=g) < 0.3
    adv, _ = reinforce_pp(AdvantageInputs(rewards, term, torch.zeros_like(term)), AlgorithmConfig())
    if adv.numel() > 1:
        assert abs(adv.mean().item()) < 1e-9
        spread = rewards.numel() > 1 and adv.abs().max() > 0
        assert not spread or abs(adv.std().item() - 1.0) < 1e-4
