"""The whole advantage -> loss path gives the same numbers on every device (CUDA runs under the `gpu` marker)."""

import pytest
import torch

from algorithms.advantages import AdvantageInputs, compute_advantages
from algorithms.config import AlgorithmConfig
from algorithms.group_advantages import first_episode_mask
from algorithms.objective import LossInputs, compute_loss

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def advantage_then_loss(config: AlgorithmConfig, device: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A per-step rollout (T=4, N=4, C=2) through compute_advantages, then a loss on [B, C, A=3] log-probs."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 4, 2)
    term = torch.rand(shape, generator=g) < 0.2
    trunc = torch.zeros(shape, dtype=torch.bool)
    trunc[-1] = True
    trunc &= ~term
    cpu = {
        "rewards": torch.rand(shape, generator=g),
        "terminations": term,
        "truncations": trunc,
        "values": torch.randn((5, 4, 2), generator=g),
        "final_values": torch.randn(shape, generator=g),
        "valid": first_episode_mask(term | trunc),
        "logprobs": -torch.rand(shape, generator=g),
        "ref_logprobs": -torch.rand(shape, generator=g),
    }
    inputs = AdvantageInputs(**{k: v.to(device) for k, v in cpu.items()}, group_size=2)
    adv, ret = compute_advantages(inputs, config)
    batch = adv.shape[0] * adv.shape[1]
    lp = torch.randn(batch, 2, 3, generator=g).to(device).requires_grad_()
    values = torch.randn(batch, 2, generator=g).to(device).requires_grad_()
    loss_inputs = LossInputs(
        logprobs=lp,
        old_logprobs=lp.detach() + 0.1,
        advantages=adv.reshape(batch, -1).squeeze(-1),
        mask=inputs.valid.reshape(batch, 2) if adv.ndim == 3 else None,
        entropy=lp.detach().abs(),
        ref_logprobs=lp.detach() - 0.1,
        values=values,
        old_values=values.detach(),
        returns=ret.reshape(batch, -1).expand(batch, 2),
    )
    loss, metrics = compute_loss(loss_inputs, config)
    loss.backward()
    return loss.detach().cpu(), lp.grad.cpu(), {k: v.cpu() for k, v in metrics.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("advantage", ["gae", "grpo", "reinforce_pp"])
def test_same_numbers_on_every_device(device, advantage):
    config = AlgorithmConfig(
        advantage=advantage,
        reward_level="step",
        kl_coef=0.01,
        entropy_coef=0.01,
        kl_in_reward_coef=0.01,
        clip_ratio_c=3.0,
        logprob_granularity="action",
    )
    loss, grad, metrics = advantage_then_loss(config, device)
    ref_loss, ref_grad, ref_metrics = advantage_then_loss(config, "cpu")
    assert torch.isfinite(loss) and grad.abs().sum() > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert metrics.keys() == ref_metrics.keys()
