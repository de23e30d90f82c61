"""Every registered advantage estimator and policy loss, on a shared random rollout / batch."""

import pytest
import torch

from algorithms.advantages import AdvantageInputs, advantage_registry, compute_advantages
from algorithms.config import AlgorithmConfig
from algorithms.group_advantages import first_episode_mask
from algorithms.losses import loss_registry
from algorithms.objective import LossInputs, compute_loss
from algorithms.registry import UnknownNameError


def rollout(per_step: bool) -> AdvantageInputs:
    """T=5 chunks, N=4 envs in 2 groups of 2, C=3 steps per chunk when per_step; one episode per env."""
    g = torch.Generator().manual_seed(0)
    shape = (5, 4, 3) if per_step else (5, 4)
    term = torch.rand(shape, generator=g) < 0.15
    trunc = torch.zeros(shape, dtype=torch.bool)
    trunc[-1] = True  # time limit at the end of the rollout
    trunc &= ~term
    valid = first_episode_mask(term | trunc)
    values_shape = (6,) + shape[1:]
    return AdvantageInputs(
        rewards=torch.rand(shape, generator=g),
        terminations=term,
        truncations=trunc,
        values=torch.randn(values_shape, generator=g),
        final_values=torch.randn(shape, generator=g),
        valid=valid,
        group_size=2,
        logprobs=-torch.rand(shape, generator=g),
        ref_logprobs=-torch.rand(shape, generator=g),
    )


@pytest.mark.parametrize("name", advantage_registry.names())
@pytest.mark.parametrize("reward_level", ["step", "chunk"])
def test_every_advantage(name, reward_level):
    inputs = rollout(per_step=True)
    config = AlgorithmConfig(advantage=name, reward_level=reward_level, kl_in_reward_coef=0.01)
    adv, ret = compute_advantages(inputs, config)
    expected_shape = (5, 4, 3) if reward_level == "step" else (5, 4)
    valid = inputs.mask if reward_level == "step" else inputs.to_chunk_level().mask
    assert adv.shape == ret.shape == expected_shape
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[~valid] == 0).all() and (ret[~valid] == 0).all()
    assert adv[valid].abs().sum() > 0
    # the registered function is what compute_advantages runs
    direct = advantage_registry.get(name)(
        inputs.to_chunk_level() if reward_level == "chunk" else inputs, config
    )
    torch.testing.assert_close(direct[0], adv)


@pytest.mark.parametrize("name", loss_registry.names())
@pytest.mark.parametrize("granularity", ["token", "action", "chunk"])
def test_every_loss(name, granularity):
    g = torch.Generator().manual_seed(1)
    lp = (torch.randn(8, 2, 3, generator=g) * 0.2).requires_grad_()
    mask = torch.ones(8, 2, dtype=torch.bool)
    mask[0, 1] = False
    inputs = LossInputs(
        lp, lp.detach() + 0.3 * torch.randn(8, 2, 3, generator=g), torch.randn(8, generator=g), mask
    )
    config = AlgorithmConfig(loss=name, logprob_granularity=granularity)
    loss, metrics = compute_loss(inputs, config)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(lp.grad).all() and lp.grad.abs().sum() > 0
    assert (lp.grad[0, 1] == 0).all()  # the masked step gets no gradient
    for key in (
        "approx_kl",
        "clip_fraction_low",
        "clip_fraction_high",
        "dual_clip_fraction",
        "ratio_mean",
        "ratio_max",
    ):
        assert torch.isfinite(metrics[key])
    # on-policy (ratio 1) every loss is -mean(A) at chunk granularity with token-mean
    on_policy = LossInputs(lp.detach(), lp.detach(), inputs.advantages, mask)
    value, _ = compute_loss(on_policy, AlgorithmConfig(loss=name, logprob_granularity="chunk"))
    assert value.item() == pytest.approx(-inputs.advantages.mean().item(), abs=1e-6)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownNameError, match="gae, grpo, mc_return, reinforce_pp, rloo"):
        advantage_registry.get("gea")
    with pytest.raises(UnknownNameError, match="Registered policy loss functions: pg, ppo"):
        loss_registry.get("trpo")
