"""The pi0.5 policy: Flow-Noise / Flow-SDE log-probs recomputed exactly, the state reaching the policy through the
prompt, adaRMS trained, checkpoints (its own and refused pi0 ones), gradient checkpointing, quantile statistics and
the discretisation of the state (pi0's shared machinery is tested in test_pi0_policy.py)."""

import json

import numpy as np
import pytest
import torch

from envs.base import make_env
from envs.colour_targets import ColourTargetsConfig
from policies import make_policy, policy_registry
from policies.base import read_saved_config
from policies.lora import LoraConfig
from policies.pi0 import Pi0Config
from policies.pi0.processing_pi0 import Normalizer, read_norm_stats
from policies.pi05 import Pi05Config, Pi05Policy
from policies.pi05.processing_pi05 import discretize_state, pi05_prompt

METHODS = ("flow_noise", "flow_sde")


@pytest.fixture(scope="module")
def env_and_obs():
    env = make_env(ColourTargetsConfig(num_envs=5))
    obs = env.reset(seed=3)
    yield env.spec, obs
    env.close()


def _policy(spec, **kwargs) -> Pi05Policy:
    torch.manual_seed(0)
    return make_policy(Pi05Config(action_chunk=4, **kwargs), spec)


def _perturbed(policy: Pi05Policy) -> Pi05Policy:
    """Weights moved off their zero initialisation (adaRMS modulations, heads), as after training."""
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


def test_registered_under_pi05_with_pi05s_network():
    assert policy_registry.get("pi05") is Pi05Policy
    assert Pi05Config().normalization == "quantile" and Pi05Config().discrete_state_input


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value_head", ["expert", "vlm"])
def test_rollout_logprobs_equal_recomputed_ones(env_and_obs, method, value_head):
    spec, obs = env_and_obs
    policy = _perturbed(_policy(spec, rl_method=method, value_head=value_head))
    out = policy.predict(obs, mode="train")
    n, c, a = 5, 4, spec.action_dim
    assert out.actions.shape == out.logprobs.shape == (n, c, a) and out.values.shape == (n,)
    ev = policy.evaluate(out.forward_inputs)
    ratio = torch.exp(ev.logprobs - out.logprobs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(ev.values, out.values, atol=1e-6, rtol=0)
    rows = torch.tensor([3, 0, 4])  # another minibatch: the same log-probs up to float rounding
    sub = policy.evaluate({k: v[rows] for k, v in out.forward_inputs.items()})
    assert torch.allclose(
        torch.exp(sub.logprobs - out.logprobs[rows]), torch.ones(3, c, a), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("method", METHODS)
def test_logprobs_train_the_adarms_modulation_and_depend_on_it(env_and_obs, method):
    spec, obs = env_and_obs
    policy = _policy(spec, rl_method=method)
    out = policy.predict(obs)
    ev = policy.evaluate(out.forward_inputs)
    (ev.logprobs.sum() + ev.values.sum()).backward()
    expert = policy.model.paligemma_with_expert.gemma_expert.model
    assert expert.layers[0].input_layernorm.dense.weight.grad.abs().sum() > 0
    assert expert.norm.dense.weight.grad.abs().sum() > 0
    with torch.no_grad():
        expert.layers[1].post_attention_layernorm.dense.bias.add_(0.3)  # opens the MLP branch's gate
    moved = policy.evaluate(out.forward_inputs).logprobs
    assert (moved - out.logprobs).abs().max() > 1e-3


def _actions_with_flipped_images(policy: Pi05Policy, obs) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic actions from one shared noise for the observations and for their mirrored images."""
    fi = policy._forward_inputs(obs)
    flipped = {**fi, "main_images": fi["main_images"].flip(2)}
    shape = (len(obs["states"]), policy.config.chunk_size, policy.config.max_action_dim)
    noise = torch.randn(shape, generator=torch.Generator())
    steps = policy.config.num_steps
    return tuple(policy.model.sample_actions(policy._model_inputs(x), noise, steps) for x in (fi, flipped))


def test_openpis_zero_adarms_init_leaves_fresh_actions_blind_and_open_gates_do_not(env_and_obs):
    """With openpi's init every residual gate of the expert is 0: a fresh expert returns norm(action_in_proj(x_t)),
    so its actions ignore the images and the prompt, and PPO has no image dependence to reinforce (the tiny
    preset opens the gates; docs/policies.md, "pi0.5 on the grounded task")."""
    spec, obs = env_and_obs
    closed, opened = _policy(spec), _policy(spec, adarms_gate_init=1.0)
    expert = opened.model.paligemma_with_expert.gemma_expert.model
    gates = expert.layers[1].input_layernorm.dense.bias.chunk(3)
    assert torch.equal(gates[2], torch.ones_like(gates[2])) and not gates[0].any() and not gates[1].any()
    same, flipped = _actions_with_flipped_images(closed, obs)
    assert torch.equal(same, flipped)
    same, flipped = _actions_with_flipped_images(opened, obs)
    assert (same - flipped).abs().max() > 1e-3


def test_the_state_reaches_the_policy_through_the_prompt(env_and_obs):
    spec, obs = env_and_obs
    policy = _perturbed(_policy(spec))
    moved = {**obs, "states": obs["states"] + 0.5}
    fi, fi_moved = policy._forward_inputs(obs), policy._forward_inputs(moved)
    bins = discretize_state(fi["states"][:, : spec.state_dim])
    prompt = pi05_prompt(obs["task_descriptions"][0], bins[0].tolist())
    assert prompt.startswith("Task: ") and prompt.endswith(";\nAction: ")
    assert not torch.equal(fi["lang_tokens"], fi_moved["lang_tokens"])
    assert not torch.equal(policy.predict(obs, "eval").actions, policy.predict(moved, "eval").actions)
    blind = _policy(spec, discrete_state_input=False)
    assert torch.equal(blind._forward_inputs(obs)["lang_tokens"], blind._forward_inputs(moved)["lang_tokens"])


def test_state_bins_follow_numpys_digitize_at_the_edges():
    edges = np.linspace(-1, 1, 257)[:-1]
    values = np.array(
        [-3.0, -1.0, -1.0 + 1e-9, -0.5, 0.0, 0.5 - 1e-7, 0.99, 1 - 2 / 256, 1.0, 7.0], dtype=np.float32
    )
    expected = np.digitize(values, bins=edges) - 1
    got = discretize_state(torch.from_numpy(values)[None])[0]
    assert got.tolist() == expected.tolist()
    assert got[0] == -1 and got[-1] == 255 and got[4] == 128


def test_quantile_statistics_map_q01_and_q99_to_minus_one_and_one(env_and_obs, tmp_path):
    spec, _ = env_and_obs
    stats = {
        "state": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "q01": [0.0, -2.0], "q99": [1.0, 2.0]},
        "actions": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "q01": [-4.0, 0.0], "q99": [4.0, 0.5]},
    }
    (tmp_path / "norm_stats.json").write_text(json.dumps({"norm_stats": stats}))
    norm = Normalizer(Pi05Config(norm_stats=str(tmp_path / "norm_stats.json")), spec)
    states = norm.states(torch.tensor([[0.0, -2.0], [1.0, 2.0], [0.5, 0.0]]))[:, :2]
    torch.testing.assert_close(
        states, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]), atol=1e-5, rtol=0
    )
    actions = norm.actions(torch.tensor([[[1.0, -1.0] + [0.0] * 6]]), chunk=1)
    torch.testing.assert_close(actions, torch.tensor([[[4.0, 0.0]]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        norm.model_actions(actions)[..., :2], torch.tensor([[[1.0, -1.0]]]), atol=1e-5, rtol=0
    )
    del stats["state"]["q99"]
    (tmp_path / "mean_only.json").write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"lacks \['state.q99'\].*quantile"):
        read_norm_stats(tmp_path / "mean_only.json", "quantile")


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_save_load_round_trip_is_exact_and_a_pi05_checkpoint_is_not_a_pi0_one(
    env_and_obs, tmp_path, lora_rank
):
    spec, obs = env_and_obs
    config = Pi05Config(action_chunk=4, lora=LoraConfig(rank=lora_rank))
    policy = _perturbed(make_policy(config, spec))
    policy.save_pretrained(tmp_path)
    saved, saved_spec = read_saved_config(tmp_path)
    assert saved["name"] == "pi05" and saved_spec == spec
    loaded = make_policy(config.replace(pretrained=str(tmp_path)), spec)
    own, other = policy.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)
    assert torch.equal(policy.predict(obs, mode="eval").actions, loaded.predict(obs, mode="eval").actions)
    with pytest.raises(ValueError, match="holds a pi05 checkpoint.*set policy.name=pi05"):
        make_policy(Pi0Config(pretrained=str(tmp_path)), spec)


def test_gradient_checkpointing_gives_the_same_gradients(env_and_obs):
    spec, obs = env_and_obs
    grads = []
    for checkpointing in (False, True):
        policy = _perturbed(_policy(spec, gradient_checkpointing=checkpointing))
        torch.manual_seed(5)
        ev = policy.evaluate(policy.predict(obs).forward_inputs)
        (ev.logprobs.sum() + ev.values.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_bfloat16_weights_give_finite_actions_and_exact_ratios(env_and_obs):
    spec, obs = env_and_obs
    policy = _policy(spec, dtype="bfloat16")
    assert policy.model.time_mlp_in.weight.dtype == torch.bfloat16
    out = policy.predict(obs)
    assert out.logprobs.dtype == torch.float32 and torch.isfinite(out.actions).all()
    ratio = torch.exp(policy.evaluate(out.forward_inputs).logprobs - out.logprobs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)
