"""The small Gaussian policies (`mlp`, `cnn`): shapes, log-prob consistency, determinism, bounds, save/load."""

from __future__ import annotations

import pytest
import torch

from envs.base import EnvSpec
from policies.base import PolicyConfig, make_policy, read_saved_config


def state_spec(action_dim: int = 3) -> EnvSpec:
    return EnvSpec(action_dim, (-1.0,) * action_dim, (1.0,) * action_dim, 5, None, False, 50, None)


def image_spec(wrist: bool = False) -> EnvSpec:
    return EnvSpec(4, (-1.0,) * 4, (1.0,) * 4, 6, (64, 64), wrist, 50, None)


def image_obs(n: int, wrist: bool = False) -> dict:
    obs = {
        "main_images": torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8),
        "states": torch.randn(n, 6),
        "task_descriptions": ["push"] * n,
    }
    if wrist:
        obs["wrist_images"] = torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8)
    return obs


def build(name: str, spec: EnvSpec, **keys):
    torch.manual_seed(0)
    return make_policy(PolicyConfig.from_dict({"name": name, **keys}, path="policy"), spec)


@pytest.mark.parametrize("chunk", [1, 3])
def test_mlp_shapes_and_logprobs_match_evaluate(chunk):
    policy = build("mlp", state_spec(), action_chunk=chunk)
    out = policy.predict({"states": torch.randn(6, 5)})
    assert out.actions.shape == out.logprobs.shape == (6, chunk, 3)
    assert out.values.shape == (6,)
    again = policy.evaluate(out.forward_inputs)
    torch.testing.assert_close(again.logprobs, out.logprobs)
    torch.testing.assert_close(again.values, out.values)
    assert again.entropy.shape == (6, chunk, 3)
    assert again.logprobs.requires_grad


def test_cnn_shapes_and_logprobs_match_evaluate():
    for wrist in (False, True):
        policy = build("cnn", image_spec(wrist), channels=[8, 8, 8], feature_dim=16, head_hidden=16)
        out = policy.predict(image_obs(5, wrist))
        assert out.actions.shape == (5, 1, 4) and out.values.shape == (5,)
        assert out.forward_inputs["images"].dtype == torch.uint8  # kept small in the trajectory
        assert out.forward_inputs["images"].shape[-1] == (6 if wrist else 3)
        torch.testing.assert_close(policy.evaluate(out.forward_inputs).logprobs, out.logprobs)


def test_eval_mode_is_deterministic_and_train_mode_samples():
    policy = build("mlp", state_spec())
    obs = {"states": torch.randn(4, 5)}
    a, b = policy.predict(obs, mode="eval"), policy.predict(obs, mode="eval")
    torch.testing.assert_close(a.actions, b.actions)
    c, d = policy.predict(obs), policy.predict(obs)
    assert not torch.equal(c.forward_inputs["actions"], d.forward_inputs["actions"])


def test_actions_are_clipped_but_logprobs_are_of_the_raw_sample():
    spec = EnvSpec(2, (-0.1, -0.1), (0.1, 0.1), 5, None, False, 50, None)
    policy = build("mlp", spec, init_log_std=1.0)
    out = policy.predict({"states": torch.randn(64, 5)})
    assert out.actions.abs().max() <= 0.1 + 1e-6
    raw = out.forward_inputs["actions"]
    assert raw.abs().max() > 0.1  # the sample itself went outside the bounds
    torch.testing.assert_close(policy.evaluate(out.forward_inputs).logprobs, out.logprobs)


def test_value_head_is_its_own_parameter_group():
    policy = build("mlp", state_spec())
    groups = policy.trainable_parameter_groups()
    value_ids = {id(p) for p in policy.value_head.parameters()}
    assert {id(p) for p in groups["value"]} == value_ids
    assert not value_ids & {id(p) for p in groups["policy"]}
    assert any(p is policy.log_std for p in groups["policy"])


def test_save_and_load_roundtrip(tmp_path):
    policy = build("mlp", state_spec(), hidden_sizes=[16, 16])
    policy.save_pretrained(tmp_path)
    saved, spec = read_saved_config(tmp_path)
    assert saved["hidden_sizes"] == [16, 16] and spec == state_spec()
    torch.manual_seed(1)
    other = make_policy(PolicyConfig.from_dict({**saved, "pretrained": str(tmp_path)}, path="policy"), spec)
    obs = {"states": torch.randn(3, 5)}
    torch.testing.assert_close(other.predict(obs, "eval").actions, policy.predict(obs, "eval").actions)


def test_state_normalization_takes_the_demos_statistics_and_travels_with_the_weights(tmp_path):
    from policies.gaussian import MIN_STATE_STD, STATE_CLIP

    g = torch.Generator().manual_seed(0)
    demos = torch.randn(500, 5, generator=g) * torch.tensor([1.0, 0.1, 5.0, 0.0, 2.0]) + 3.0  # dim 3 constant
    policy = build("mlp", state_spec(), hidden_sizes=[16, 16], normalize_states=True)
    obs = {"states": torch.randn(4, 5, generator=g)}
    torch.testing.assert_close(policy.features(obs), obs["states"])  # the identity before SFT fits it
    assert policy.fit_state_normalization(demos)
    torch.testing.assert_close(policy.state_mean, demos.mean(0))
    expected_std = demos.std(0, unbiased=False).clamp_min(MIN_STATE_STD)
    torch.testing.assert_close(policy.state_std, expected_std)
    assert policy.state_std[3] == pytest.approx(MIN_STATE_STD)
    standardised = policy.features({"states": demos})
    torch.testing.assert_close(standardised[:, [0, 1, 2, 4]].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardised[:, [0, 1, 2, 4]].std(0, unbiased=False), torch.ones(4))
    far = policy.features({"states": torch.full((1, 5), 1e4)})
    assert far.max() == STATE_CLIP  # far outside the demos: clipped
    # the statistics are buffers of the weights: a policy loaded from them (an RL run's policy.pretrained) acts
    # the same; one without them does not
    policy.save_pretrained(tmp_path)
    saved, spec = read_saved_config(tmp_path)
    loaded = make_policy(PolicyConfig.from_dict({**saved, "pretrained": str(tmp_path)}, path="policy"), spec)
    torch.testing.assert_close(loaded.state_std, policy.state_std)
    torch.testing.assert_close(loaded.predict(obs, "eval").actions, policy.predict(obs, "eval").actions)
    plain = build("mlp", state_spec(), hidden_sizes=[16, 16])
    plain.load_state_dict({k: v for k, v in policy.state_dict().items() if not k.startswith("state_")})
    assert not torch.allclose(plain.predict(obs, "eval").actions, policy.predict(obs, "eval").actions)


def test_without_normalize_states_the_states_are_read_as_they_are():
    policy = build("mlp", state_spec())
    assert not policy.fit_state_normalization(torch.randn(10, 5) * 3 + 1)
    assert not any(k.startswith("state_") for k in policy.state_dict())
    states = torch.randn(3, 5)
    torch.testing.assert_close(policy.features({"states": states}), states)
    cnn = build("cnn", image_spec(), channels=[8, 8, 8], feature_dim=16, head_hidden=16, normalize_states=True)
    assert cnn.fit_state_normalization(torch.randn(10, 6) * 3 + 1) and cnn.state_std.shape == (6,)


def test_cnn_refuses_an_env_without_images():
    with pytest.raises(ValueError, match="needs image observations"):
        build("cnn", state_spec())


def test_config_errors_name_the_key():
    from algorithms.schema import ConfigError

    with pytest.raises(ConfigError, match="policy.hidden_size.*Did you mean 'policy.hidden_sizes'"):
        PolicyConfig.from_dict({"name": "mlp", "hidden_size": [3]}, path="policy")
    with pytest.raises(ConfigError, match="policy.activation='gelu' is not allowed"):
        PolicyConfig.from_dict({"name": "mlp", "activation": "gelu"}, path="policy")
