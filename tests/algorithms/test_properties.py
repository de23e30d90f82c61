"""Properties of the algorithms on generated rollouts (hypothesis, derandomized): random rewards, values and
termination/truncation patterns, checked against what the formulas imply rather than hand-picked cases.

- GAE with lambda = 1 gives the Monte-Carlo returns (the two estimators agree), with lambda = 0 one-step TD
  errors; returns - advantages = values; everything finite.
- GRPO advantages do not change when a group's scores shift; RLOO advantages sum to 0 per group.
- The PPO loss is never below the unclipped importance-weighted loss (without dual clip), equals -mean(A) at
  ratio 1, and the dual clip bounds it by -c A for negative advantages.
- Log-prob granularity: a chunk's log-prob is the sum of its valid actions', an action's of its tokens'.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.advantages import AdvantageInputs, compute_advantages
from algorithms.config import AlgorithmConfig
from algorithms.granularity import reduce_logprobs
from algorithms.losses import pg_actor_loss, ppo_actor_loss

PROPERTY = settings(max_examples=80, derandomize=True, deadline=None, database=None)


@st.composite
def rollouts(draw):
    """Per-chunk rewards [T, N] with random episode ends, values [T+1, N], final values where truncated."""
    t, n = draw(st.integers(1, 7)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(t, n, generator=g) * draw(st.sampled_from([0.1, 1.0, 10.0]))
    terminations = torch.rand(t, n, generator=g) < draw(st.floats(0.0, 0.6))
    truncations = (torch.rand(t, n, generator=g) < draw(st.floats(0.0, 0.4))) & ~terminations
    values = torch.randn(t + 1, n, generator=g)
    final_values = torch.randn(t, n, generator=g)
    return AdvantageInputs(rewards, terminations, truncations, values=values, final_values=final_values)


def config(**changes) -> AlgorithmConfig:
    return AlgorithmConfig(normalize_advantages=False, **changes)


@PROPERTY
@given(rollouts(), st.floats(0.0, 1.0))
def test_gae_with_lambda_1_gives_the_monte_carlo_returns(inputs, gamma):
    advantages, returns = compute_advantages(inputs, config(advantage="gae", gamma=gamma, gae_lambda=1.0))
    _, mc_returns = compute_advantages(inputs, config(advantage="mc_return", gamma=gamma))
    torch.testing.assert_close(returns, mc_returns, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(returns - advantages, inputs.values[:-1])
    assert torch.isfinite(advantages).all() and torch.isfinite(returns).all()


@PROPERTY
@given(rollouts(), st.floats(0.0, 1.0))
def test_gae_with_lambda_0_gives_one_step_td_errors(inputs, gamma):
    advantages, _ = compute_advantages(inputs, config(advantage="gae", gamma=gamma, gae_lambda=0.0))
    nxt = torch.where(inputs.truncations, inputs.final_values, inputs.values[1:])
    nxt = torch.where(inputs.terminations, torch.zeros_like(nxt), nxt)
    torch.testing.assert_close(advantages, inputs.rewards + gamma * nxt - inputs.values[:-1])


@st.composite
def group_outcomes(draw):
    """One-step episodes (LLM-style, [1, N]) in groups of G sharing an initial state."""
    group, groups = draw(st.integers(2, 5)), draw(st.integers(1, 4))
    scores = draw(st.lists(st.floats(-5, 5), min_size=group * groups, max_size=group * groups))
    rewards = torch.tensor([scores], dtype=torch.float32)
    done = torch.ones_like(rewards, dtype=torch.bool)
    return AdvantageInputs(rewards, done, torch.zeros_like(done), group_size=group)


@PROPERTY
@given(group_outcomes(), st.floats(-100, 100))
def test_grpo_advantages_do_not_change_when_a_group_shifts(inputs, shift):
    shifted = AdvantageInputs(
        inputs.rewards + shift, inputs.terminations, inputs.truncations, group_size=inputs.group_size
    )
    for normalize in (True, False):
        cfg = config(advantage="grpo", grpo_normalize_std=normalize)
        a, _ = compute_advantages(inputs, cfg)
        b, _ = compute_advantages(shifted, cfg)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@PROPERTY
@given(group_outcomes())
def test_rloo_advantages_sum_to_zero_in_every_group(inputs):
    advantages, _ = compute_advantages(inputs, config(advantage="rloo"))
    sums = advantages.reshape(-1, inputs.group_size).sum(dim=1)
    torch.testing.assert_close(sums, torch.zeros_like(sums), atol=1e-4, rtol=0)


@st.composite
def loss_inputs(draw):
    b, c, a = draw(st.integers(1, 6)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    old = torch.randn(b, c, a, generator=g) - 1.0
    new = old + torch.randn(b, c, a, generator=g) * draw(st.sampled_from([0.0, 0.1, 1.0]))
    advantages = torch.randn(b, generator=g)
    steps = torch.randint(1, c + 1, (b,), generator=g)
    mask = torch.arange(c)[None, :] < steps[:, None]  # a prefix of each chunk ran
    return new, old, advantages[:, None, None].expand(b, c, a), mask


@PROPERTY
@given(loss_inputs(), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_the_clipped_loss_is_never_below_the_unclipped_one(inputs, low, high):
    new, old, advantages, mask = inputs
    clipped, metrics = ppo_actor_loss(new, old, advantages, mask, clip_ratio_low=low, clip_ratio_high=high)
    unclipped, _ = pg_actor_loss(new, old, advantages, mask)
    assert clipped >= unclipped - 1e-5
    assert 0.0 <= float(metrics["clip_fraction_low"]) + float(metrics["clip_fraction_high"]) <= 1.0


@PROPERTY
@given(loss_inputs())
def test_at_ratio_1_the_loss_is_minus_the_mean_advantage(inputs):
    _, old, advantages, mask = inputs
    loss, metrics = ppo_actor_loss(old, old, advantages, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    expected = -advantages[mask].mean()
    torch.testing.assert_close(loss, expected)
    assert float(metrics["approx_kl"]) == 0.0 and float(metrics["clip_fraction_high"]) == 0.0


@PROPERTY
@given(loss_inputs(), st.floats(1.5, 10.0))
def test_the_dual_clip_only_lowers_the_loss_of_negative_advantages(inputs, c):
    new, old, advantages, mask = inputs
    clip = dict(clip_ratio_low=0.2, clip_ratio_high=0.2)
    plain, _ = ppo_actor_loss(new, old, advantages, mask, **clip)
    dual, metrics = ppo_actor_loss(new, old, advantages, mask, clip_ratio_c=c, **clip)
    assert dual <= plain + 1e-6
    positive = advantages.abs()
    same, _ = ppo_actor_loss(new, old, positive, mask, clip_ratio_c=c, **clip)
    torch.testing.assert_close(same, ppo_actor_loss(new, old, positive, mask, **clip)[0])
    if float(metrics["dual_clip_fraction"]) == 0.0:  # the bound was never active: nothing changed
        torch.testing.assert_close(dual, plain)


@PROPERTY
@given(loss_inputs())
def test_granularities_sum_the_valid_log_probs(inputs):
    logprobs, _, _, mask = inputs
    token, token_mask = reduce_logprobs(logprobs, mask, "token")
    action, action_mask = reduce_logprobs(logprobs, mask, "action")
    chunk, chunk_mask = reduce_logprobs(logprobs, mask, "chunk")
    torch.testing.assert_close(action, token.sum(-1))
    torch.testing.assert_close(chunk, (action * mask).sum(-1))
    assert torch.equal(action_mask, mask) and torch.equal(chunk_mask, mask.any(-1))
    assert (token[~mask] == 0).all()
