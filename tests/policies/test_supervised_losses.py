"""Supervised losses of every policy against values computed by hand on tiny cases (policies/supervised.py)."""

from __future__ import annotations

import math

import pytest
import torch

from envs.base import EnvSpec
from policies import make_policy
from policies.base import PolicyConfig
from policies.openvla.processing_openvla import ActionBins
from policies.supervised import action_mse, token_cross_entropy
from tests.policies.openvla_common import env_spec, observations, tiny_policy


def test_action_mse_averages_the_valid_steps_only():
    mean = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[0.0, 0.0], [5.0, 5.0]]])  # [B=2, C=2, A=2]
    target = torch.tensor([[[0.0, 0.0], [9.0, 9.0]], [[1.0, 1.0], [5.0, 7.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    # valid squared errors: (1, 4), (1, 1), (0, 4) -> 11 / 6; the masked step's 81s count for nothing
    assert action_mse(mean, target, mask).item() == pytest.approx(11 / 6)


def test_token_cross_entropy_by_hand():
    logits = torch.tensor([[[[0.0, math.log(3.0)], [0.0, 0.0]]]])  # [B=1, C=1, A=2, K=2]
    targets = torch.tensor([[[1, 0]]])
    # p(token 1) = 3/4 in dim 0, p(token 0) = 1/2 in dim 1
    expected = -(math.log(0.75) + math.log(0.5)) / 2
    loss = token_cross_entropy(logits.log_softmax(-1), targets, torch.tensor([[True]]))
    assert loss.item() == pytest.approx(expected)


def test_action_tokens_follow_openvla_digitize_and_decode_to_within_half_a_bin():
    bins = ActionBins(5, q01=[-1.0, 0.0], q99=[1.0, 4.0], mask=[True, True])  # edges -1, -.5, 0, .5, 1
    # dim 0: 0.1 lies in [0, 0.5): np.digitize gives 3, token 5 - 3 = 2; -1 gives 1 -> 4; 2 clips to 1: 5 -> 0
    # dim 1: 3.2 normalises to 0.6 -> digitize 4 -> token 1; 9 clips to 1 -> token 0
    tokens = bins.token_index(torch.tensor([[0.1, 3.2], [-1.0, 3.2], [2.0, 9.0]]))
    assert tokens.tolist() == [[2, 1], [4, 1], [0, 0]]
    actions = torch.rand(200, 2) * torch.tensor([2.0, 4.0]) + torch.tensor([-1.0, 0.0])
    decoded = bins.to_env_units(bins.token_index(actions))
    half_bin = torch.tensor([0.25, 0.5])  # half of 0.5 normalised, in env units
    assert ((decoded - actions).abs() <= half_bin + 1e-9).all()


def _batch(obs: dict, actions: torch.Tensor, mask: torch.Tensor) -> dict:
    return {**obs, "actions": actions, "action_mask": mask}


def test_gaussian_behaviour_cloning_is_the_squared_error_of_the_mean():
    spec = EnvSpec(2, (-1.0, -1.0), (1.0, 1.0), 3, None, False, 50, None)
    policy = make_policy(PolicyConfig.from_dict({"name": "mlp", "action_chunk": 2}, path="policy"), spec)
    last = policy.action_mean[-1]
    with torch.no_grad():  # mean = (0.5, -0.5) in every chunk step, whatever the state
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -0.5, 0.5, -0.5]))
    actions = torch.tensor([[[0.5, 0.5], [1.0, -0.5]]])  # errors (0, 1) and (0.5, 0)
    loss, _ = policy.supervised_loss(
        _batch({"states": torch.randn(1, 3)}, actions, torch.ones(1, 2, dtype=bool))
    )
    assert loss.item() == pytest.approx((0 + 1 + 0.25 + 0) / 4)
    loss, _ = policy.supervised_loss(
        _batch({"states": torch.randn(1, 3)}, actions, torch.tensor([[True, False]]))
    )
    assert loss.item() == pytest.approx(0.5)
    assert policy.action_horizon == 2
    loss.backward()
    assert policy.log_std.grad is None  # behaviour cloning leaves the RL exploration noise alone
    assert policy.value_head[0].weight.grad is None


@pytest.mark.parametrize("name", ["openvla", "openvla_oft"])
def test_vla_token_cross_entropy_is_uniform_for_flat_logits_and_matches_evaluate(name):
    spec = env_spec(action_dim=3, image=28)
    policy = tiny_policy(name, spec=spec, action_bins=8)
    obs = observations(2, image=28)
    actions = torch.tensor(spec.action_low) + torch.rand(2, 2, 3) * (
        torch.tensor(spec.action_high) - torch.tensor(spec.action_low)
    )
    mask = torch.tensor([[True, True], [True, False]])
    loss, metrics = policy.supervised_loss(_batch(obs, actions, mask))
    # the value the rollout distribution gives the demo's tokens (temperature 1, all bins)
    tokens = policy.processor.bins.token_index(actions)
    inputs = policy.processor(obs, policy.device, torch.float32)
    logprobs = policy.evaluate({**inputs, "action_tokens": tokens}).logprobs  # [B, C, A]
    expected = -(logprobs[0].sum() + logprobs[1, 0].sum()) / 9
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0.0 <= metrics["token_accuracy"] <= 1.0
    # flat logits: every one of the 8 bins has probability 1/8
    policy.model.logits = lambda hidden: torch.zeros(*hidden.shape[:-1], policy.action_end)
    flat, _ = policy.supervised_loss(_batch(obs, actions, mask))
    assert flat.item() == pytest.approx(math.log(8))


def test_vla_refuses_demo_chunks_of_another_length():
    policy = tiny_policy("openvla_oft", spec=env_spec(image=28))
    batch = _batch(observations(2, image=28), torch.zeros(2, 3, 3), torch.ones(2, 3, dtype=bool))
    with pytest.raises(ValueError, match="num_action_chunks"):
        policy.supervised_loss(batch)


def test_pi0_flow_matching_loss_by_hand():
    from envs.base import make_env
    from envs.colour_targets import ColourTargetsConfig
    from policies.pi0 import Pi0Config

    env = make_env(ColourTargetsConfig(num_envs=2))
    obs = env.reset(seed=0)
    env.close()
    torch.manual_seed(0)
    policy = make_policy(Pi0Config(chunk_size=2, max_action_dim=3, action_chunk=2), env.spec)  # A_env = 2
    seen = {}

    def velocity(inputs, x_t, time):
        seen["x_t"], seen["time"] = x_t, time
        return torch.zeros_like(x_t)

    policy.model.joint_velocity = velocity
    actions = torch.tensor([[[0.5, -1.0], [0.0, 2.0]], [[1.0, 1.0], [3.0, 3.0]]])  # [B, C=2, A=2]
    noise = torch.ones(2, 2, 3)
    time = torch.tensor([0.25, 1.0])
    mask = torch.tensor([[True, True], [True, False]])
    loss = policy.flow_matching_loss(_batch(obs, actions, mask), noise, time)
    # no norm stats: model actions = env actions padded with a zero dim; target u = noise - actions, v = 0
    # valid entries (1 - a)^2: row 0 -> 0.25, 4, 1 | 1, 1, 1; row 1 step 0 -> 0, 0, 1
    assert loss.item() == pytest.approx((0.25 + 4 + 1 + 1 + 1 + 1 + 0 + 0 + 1) / 9)
    padded = torch.nn.functional.pad(actions, (0, 1))
    torch.testing.assert_close(seen["x_t"][0], 0.25 * noise[0] + 0.75 * padded[0])
    torch.testing.assert_close(seen["x_t"][1], noise[1])
    assert policy.action_horizon == 2


def test_pi0_times_follow_openpi_beta():
    from policies.pi0.modeling_pi0 import Pi0FlowModel

    t = Pi0FlowModel.sample_time(200_000, torch.Generator().manual_seed(0))
    # Beta(1.5, 1) has mean 0.6 and P(t < 0.5) = 0.5^1.5; scaled to [0.001, 1]
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=3e-3)
    assert (t < 0.5 * 0.999 + 0.001).float().mean().item() == pytest.approx(0.5**1.5, abs=3e-3)
