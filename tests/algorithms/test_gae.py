"""GAE and Monte-Carlo returns: hand-computed cases and properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.advantages import AdvantageInputs, compute_advantages, gae, mc_return
from algorithms.config import AlgorithmConfig

D = torch.float64


def cfg(**kw) -> AlgorithmConfig:
    return AlgorithmConfig(normalize_advantages=False, **kw)


def no_dones(shape) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.bool)


def test_gae_hand_computed_per_chunk():
    # gamma = lambda = 0.5, rewards 1, 2, 3, values 0.5, 1, 1.5 and 2 after the rollout; no episode ends.
    # delta_2 = 3 + 0.5*2 - 1.5 = 2.5, delta_1 = 2 + 0.5*1.5 - 1 = 1.75, delta_0 = 1 + 0.5*1 - 0.5 = 1.0
    # A_2 = 2.5, A_1 = 1.75 + 0.25*2.5 = 2.375, A_0 = 1.0 + 0.25*2.375 = 1.59375; R = A + V.
    rewards = torch.tensor([[1.0], [2.0], [3.0]], dtype=D)
    values = torch.tensor([[0.5], [1.0], [1.5], [2.0]], dtype=D)
    adv, ret = gae(
        AdvantageInputs(rewards, no_dones((3, 1)), no_dones((3, 1)), values=values),
        cfg(gamma=0.5, gae_lambda=0.5),
    )
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.59375, 2.375, 2.5], dtype=D))
    torch.testing.assert_close(ret[:, 0], torch.tensor([2.09375, 3.375, 4.0], dtype=D))


def test_gae_termination_does_not_bootstrap_truncation_does():
    # gamma 0.5, lambda 1, rewards 1, all values 1. Env 0 terminates at t=1, env 1 is truncated at t=1 and its
    # final observation is worth 4. t=2 (new episode): delta = 1 + 0.5*1 - 1 = 0.5 for both.
    # env 0, t=1: delta = 1 + 0 - 1 = 0, no carry -> 0; t=0: delta 0.5 + 0.5*0 -> 0.5
    # env 1, t=1: delta = 1 + 0.5*4 - 1 = 2, no carry -> 2; t=0: 0.5 + 0.5*2 -> 1.5
    rewards = torch.ones(3, 2, dtype=D)
    term, trunc = no_dones((3, 2)), no_dones((3, 2))
    term[1, 0] = True
    trunc[1, 1] = True
    final_values = torch.zeros(3, 2, dtype=D)
    final_values[1, 1] = 4.0
    final_values[1, 0] = 100.0  # read only where truncated: env 0 terminated, so this must be ignored
    inputs = AdvantageInputs(
        rewards, term, trunc, values=torch.ones(4, 2, dtype=D), final_values=final_values
    )
    adv, _ = gae(inputs, cfg(gamma=0.5, gae_lambda=1.0))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 1.5], [0.0, 2.0], [0.5, 0.5]], dtype=D))


def test_gae_per_step_inside_chunks():
    # T=2 chunks of C=2 steps: flattened rewards 1, 0, 0, 1; values per step 1, 2, 3, 4 and 5 after the rollout
    # (values[T, :, 0]; values[T, :, 1] = 99 is never read). gamma = lambda = 1:
    # A_s = (rewards to go) + 5 - V_s = [2+5-1, 1+5-2, 1+5-3, 1+5-4] = [6, 4, 3, 2].
    rewards = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=D)
    values = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 99.0]]], dtype=D)
    inputs = AdvantageInputs(rewards, no_dones((2, 1, 2)), no_dones((2, 1, 2)), values=values)
    adv, ret = gae(inputs, cfg(gamma=1.0, gae_lambda=1.0))
    torch.testing.assert_close(adv, torch.tensor([[[6.0, 4.0]], [[3.0, 2.0]]], dtype=D))
    torch.testing.assert_close(ret, adv + values[:-1])


def test_gae_done_inside_chunk_masks_the_rest():
    # One chunk of 3 steps; the env terminates at step 0, steps 1-2 did not run (garbage rewards 5, 7).
    # A_0 = r_0 - V_0 = 1 - 2 = -1; the invalid steps get 0.
    rewards = torch.tensor([[[1.0, 5.0, 7.0]]], dtype=D)
    term = torch.tensor([[[True, False, False]]])
    valid = torch.tensor([[[True, False, False]]])
    values = torch.tensor([[[2.0, 9.0, 9.0]], [[9.0, 9.0, 9.0]]], dtype=D)
    adv, ret = gae(AdvantageInputs(rewards, term, no_dones((1, 1, 3)), values=values, valid=valid), cfg())
    torch.testing.assert_close(adv, torch.tensor([[[-1.0, 0.0, 0.0]]], dtype=D))
    torch.testing.assert_close(ret, torch.tensor([[[1.0, 0.0, 0.0]]], dtype=D))


def test_reward_level_chunk_sums_rewards_and_uses_first_step_value():
    # Per-step rewards [[1, 2], [3, 4]] become chunk rewards 3 and 7; chunk values are values[..., 0] = 1, 2, 3.
    # gamma = lambda = 1: A_0 = 3 + 7 + 3 - 1 = 12, A_1 = 7 + 3 - 2 = 8.
    rewards = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]], dtype=D)
    values = torch.tensor([[[1.0, 50.0]], [[2.0, 50.0]], [[3.0, 50.0]]], dtype=D)
    inputs = AdvantageInputs(rewards, no_dones((2, 1, 2)), no_dones((2, 1, 2)), values=values)
    adv, _ = compute_advantages(inputs, cfg(gamma=1.0, gae_lambda=1.0, reward_level="chunk"))
    torch.testing.assert_close(adv, torch.tensor([[12.0], [8.0]], dtype=D))


def test_per_step_rewards_with_per_chunk_critic_and_final_values():
    # Per-step rewards [T=2, N=1, C=2], per-chunk values 1, 2, 3, a truncation at step 0 of chunk 1 with one
    # final value per chunk (8). reward_level=chunk: chunk rewards 1+1 = 2 and 1 (step 1 of chunk 1 did not
    # run); gamma = lambda = 1: A_1 = 1 + 8 - 2 = 7, A_0 = 2 + 2 - 1 + A_1 = 10.
    rewards = torch.ones(2, 1, 2, dtype=D)
    trunc = torch.tensor([[[False, False]], [[True, False]]])
    valid = torch.tensor([[[True, True]], [[True, False]]])
    inputs = AdvantageInputs(
        rewards,
        no_dones((2, 1, 2)),
        trunc,
        values=torch.tensor([[1.0], [2.0], [3.0]], dtype=D),
        final_values=torch.tensor([[0.0], [8.0]], dtype=D),
        valid=valid,
    )
    adv, _ = compute_advantages(inputs, cfg(gamma=1.0, gae_lambda=1.0, reward_level="chunk"))
    torch.testing.assert_close(adv, torch.tensor([[10.0], [7.0]], dtype=D))


def test_normalize_advantages_whitens_valid_entries():
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=D)
    valid = torch.tensor([[True, True], [True, False]])
    term = torch.tensor([[False, True], [True, False]])
    inputs = AdvantageInputs(rewards, term, no_dones((2, 2)), values=torch.zeros(3, 2, dtype=D), valid=valid)
    adv, _ = gae(inputs, AlgorithmConfig(normalize_advantages=True))
    kept = adv[valid]
    assert abs(kept.mean().item()) < 1e-9 and abs(kept.std().item() - 1.0) < 1e-6
    assert adv[1, 1] == 0


def test_mc_return_hand_computed():
    # gamma 0.5, rewards 1, 2, 4, termination at t=1, no critic: R_1 = 2, R_0 = 1 + 0.5*2 = 2, R_2 = 4
    # (the rollout's last entry is not bootstrapped without values).
    rewards = torch.tensor([[1.0], [2.0], [4.0]], dtype=D)
    term = torch.tensor([[False], [True], [False]])
    adv, ret = mc_return(AdvantageInputs(rewards, term, no_dones((3, 1))), cfg(gamma=0.5))
    torch.testing.assert_close(ret[:, 0], torch.tensor([2.0, 2.0, 4.0], dtype=D))
    torch.testing.assert_close(adv, ret)


def test_errors_name_the_fix():
    rewards = torch.ones(2, 1)
    trunc = torch.tensor([[True], [False]])
    with pytest.raises(ValueError, match="final_values"):
        gae(AdvantageInputs(rewards, no_dones((2, 1)), trunc, values=torch.zeros(3, 1)), cfg())
    with pytest.raises(ValueError, match="needs values"):
        gae(AdvantageInputs(rewards, no_dones((2, 1)), no_dones((2, 1))), cfg())
    per_step = AdvantageInputs(
        torch.ones(2, 1, 3), no_dones((2, 1, 3)), no_dones((2, 1, 3)), values=torch.zeros(3, 1)
    )
    with pytest.raises(ValueError, match="reward_level=chunk"):
        gae(per_step, cfg())
    with pytest.raises(ValueError, match="one more time row"):
        AdvantageInputs(rewards, no_dones((2, 1)), no_dones((2, 1)), values=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="terminated or truncated"):
        valid = torch.tensor([[True], [False]])
        gae(
            AdvantageInputs(
                rewards, no_dones((2, 1)), no_dones((2, 1)), values=torch.zeros(3, 1), valid=valid
            ),
            cfg(),
        )


def reference_discounted_return(rewards, term, trunc, final_values, last_value, gamma):
    """Plain loops, one env at a time: sum of discounted rewards to the episode's end, plus the bootstrap."""
    steps, envs = rewards.shape
    out = torch.zeros_like(rewards)
    for n in range(envs):
        for t in range(steps):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * rewards[k, n].item()
                if term[k, n]:
                    break
                if trunc[k, n]:
                    total += gamma ** (k - t + 1) * final_values[k, n].item()
                    break
                if k == steps - 1:
                    total += gamma ** (k - t + 1) * last_value[n].item()
                    break
                k += 1
            out[t, n] = total
    return out


rollouts = st.tuples(
    st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0), st.floats(0.0, 1.0)
)


@settings(max_examples=40, deadline=None)
@given(rollouts)
def test_gae_lambda_one_is_discounted_return_minus_value(case):
    steps, envs, seed, gamma, lam = case
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(steps, envs, generator=g, dtype=D)
    values = torch.randn(steps + 1, envs, generator=g, dtype=D)
    final_values = torch.randn(steps, envs, generator=g, dtype=D)
    term = torch.rand(steps, envs, generator=g) < 0.2
    trunc = (torch.rand(steps, envs, generator=g) < 0.2) & ~term
    inputs = AdvantageInputs(rewards, term, trunc, values=values, final_values=final_values)
    adv, ret = gae(inputs, cfg(gamma=gamma, gae_lambda=1.0))
    expected = reference_discounted_return(rewards, term, trunc, final_values, values[-1], gamma)
    torch.testing.assert_close(ret, expected)
    torch.testing.assert_close(adv, expected - values[:-1])
    # lambda = 0 gives the one-step TD error; MC returns with a critic equal GAE(lambda=1).
    adv0, _ = gae(inputs, cfg(gamma=gamma, gae_lambda=0.0))
    nxt = torch.where(trunc, final_values, values[1:]) * (~term)
    torch.testing.assert_close(adv0, rewards + gamma * nxt - values[:-1])
    mc_adv, mc_ret = mc_return(inputs, cfg(gamma=gamma))
    torch.testing.assert_close(mc_ret, expected)
    # any lambda: returns - values = advantages
    adv_l, ret_l = gae(inputs, cfg(gamma=gamma, gae_lambda=lam))
    torch.testing.assert_close(ret_l - values[:-1], adv_l)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_per_step_layout_equals_flat_time_axis(steps, envs, chunk, seed):
    # GAE over [T, N, C] is GAE over the flattened [T*C, N] time axis.
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(steps, envs, chunk, generator=g, dtype=D)
    values = torch.randn(steps + 1, envs, chunk, generator=g, dtype=D)
    term = torch.rand(steps, envs, chunk, generator=g) < 0.2
    flat_r = rewards.transpose(1, 2).reshape(steps * chunk, envs)
    flat_t = term.transpose(1, 2).reshape(steps * chunk, envs)
    flat_v = torch.cat([values[:-1].transpose(1, 2).reshape(steps * chunk, envs), values[-1:, :, 0]])
    c = cfg(gamma=0.9, gae_lambda=0.8)
    adv, _ = gae(AdvantageInputs(rewards, term, no_dones(term.shape), values=values), c)
    flat_adv, _ = gae(AdvantageInputs(flat_r, flat_t, no_dones(flat_t.shape), values=flat_v), c)
    torch.testing.assert_close(adv.transpose(1, 2).reshape(steps * chunk, envs), flat_adv)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5), st.integers(0, 4), st.integers(0, 2**31 - 1))
def test_invalid_entries_after_done_change_nothing(steps, extra, seed):
    # Appending idle (invalid) entries with garbage after an episode's termination leaves the valid outputs
    # unchanged and gives 0 on the idle ones.
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(steps, 1, generator=g, dtype=D)
    values = torch.randn(steps + 1, 1, generator=g, dtype=D)
    term = no_dones((steps, 1))
    term[-1] = True
    c = cfg(gamma=0.9, gae_lambda=0.7)
    adv, ret = gae(AdvantageInputs(rewards, term, no_dones(term.shape), values=values), c)
    garbage = torch.randn(extra, 1, generator=g, dtype=D) * 1e6
    long_r = torch.cat([rewards, garbage])
    long_v = torch.cat([values[:-1], garbage, torch.randn(1, 1, generator=g, dtype=D)])
    long_t = torch.cat([term, torch.rand(extra, 1, generator=g) < 0.5])
    valid = torch.cat([torch.ones(steps, 1, dtype=torch.bool), torch.zeros(extra, 1, dtype=torch.bool)])
    inputs = AdvantageInputs(long_r, long_t, no_dones(long_t.shape), values=long_v, valid=valid)
    for fn in (gae, mc_return):
        long_adv, long_ret = fn(inputs, c)
        short_adv, short_ret = (
            (adv, ret)
            if fn is gae
            else fn(AdvantageInputs(rewards, term, no_dones(term.shape), values=values), c)
        )
        torch.testing.assert_close(long_adv[:steps], short_adv)
        torch.testing.assert_close(long_ret[:steps], short_ret)
        assert (long_adv[steps:] == 0).all() and (long_ret[steps:] == 0).all()
