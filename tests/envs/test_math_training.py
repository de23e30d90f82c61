"""Math rollouts through the runtime's trajectory and update code, in one process: the log-probs recorded at
rollout equal the trainer's (ratio 1, KL 0 on the first mini-batch), the response mask reaches the loss, and
DAPO's over-long shaping and dynamic sampling act on responses."""

from __future__ import annotations

import json

import pytest
import torch

from algorithms.config import AlgorithmConfig
from embodied.config import ActorConfig
from embodied.training import Collectives, build_optimizer, minibatch_step
from embodied.trajectory import EnvStep, TrajectoryBuilder, build_train_batch, token_metrics
from envs import EnvConfig, make_env
from policies import PolicyConfig, make_policy
from policies.causal_lm import build_char_tokenizer

GROUP = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("math_training")
    build_char_tokenizer().save_pretrained(folder)
    data = folder / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(20))
    )
    env_config = {"name": "math", "num_envs": 8, "group_size": GROUP, "tokenizer": str(folder)}
    env = make_env(EnvConfig.from_dict({**env_config, "data_file": str(data), "max_response_tokens": 6}))
    torch.manual_seed(0)
    policy_config = {"name": "causal_lm", "max_prompt_tokens": 8, "scratch": {"hidden_size": 32}}
    policy = make_policy(PolicyConfig.from_dict(policy_config), env.spec)
    yield env, policy
    env.close()


def rollout(env, policy, seed=0):
    """One epoch of one response per env, recorded as the rollout worker does it."""
    obs = env.reset(seed=seed)
    builder = TrajectoryBuilder(env_start=0, version=0)
    output = policy.predict(obs, mode="train")
    builder.add_output(output)
    _, rewards, terms, truncs, _ = env.chunk_step(output.actions)
    builder.add_outcome(EnvStep(obs, rewards, terms, truncs, torch.ones_like(terms)), None)
    builder.add_bootstrap(None)
    return builder.build()


def test_first_minibatch_has_ratio_one_and_the_mask_is_the_response(setup):
    env, policy = setup
    trajectory = rollout(env, policy)
    assert trajectory.logprobs.shape == trajectory.logprob_mask.shape == (1, 8, 1, 6)
    algorithm = AlgorithmConfig(
        advantage="grpo", logprob_granularity="token", loss_agg_mode="seq-mean-token-mean"
    )
    batch = build_train_batch(trajectory, algorithm, GROUP)
    assert torch.equal(batch.mask, trajectory.logprob_mask[0])  # [B, 1, L]: the response tokens
    actor = ActorConfig(update_epochs=1, num_minibatches=1, target_kl=None)
    optimizer = build_optimizer(policy, actor)
    metrics, applied = minibatch_step(
        policy, optimizer, batch, actor, algorithm, comm=Collectives()
    )  # one process
    assert applied
    assert abs(metrics["approx_kl"]) < 1e-6 and abs(metrics["ratio_mean"] - 1) < 1e-5
    assert metrics["clip_fraction_low"] == metrics["clip_fraction_high"] == 0
    lengths = trajectory.logprob_mask.sum(-1).float()
    assert token_metrics(trajectory)["rollout/response_length"] == pytest.approx(float(lengths.mean()))


def test_overlong_shaping_penalises_long_responses(setup):
    from embodied.trajectory import overlong_shaped_rewards

    env, policy = setup
    trajectory = rollout(env, policy, seed=1)
    lengths = torch.tensor([1, 3, 4, 6, 2, 5, 6, 6])  # tokens per response, set by hand
    trajectory.logprob_mask = (torch.arange(6) < lengths[:, None]).reshape(1, 8, 1, 6)
    trajectory.rewards = torch.zeros(1, 8, 1)
    plain = AlgorithmConfig(advantage="grpo", logprob_granularity="token")
    shaped = plain.replace(overlong_max_length=5, overlong_buffer=2, overlong_penalty=1.0)
    penalty = overlong_shaped_rewards(trajectory, shaped).flatten()
    # 0 up to 5 - 2 = 3 tokens, then a ramp to -1 at 5 tokens, -1 past 5
    assert penalty.tolist() == [0.0, 0.0, -0.5, -1.0, 0.0, -1.0, -1.0, -1.0]
    assert not build_train_batch(trajectory, plain, GROUP).advantages.any()  # equal rewards: nothing to learn
    advantages = build_train_batch(trajectory, shaped, GROUP).advantages.flatten()
    assert advantages[0] > advantages[2] > advantages[3] and advantages[4] > advantages[5]


def test_dynamic_sampling_batch_of_two_rounds_has_only_groups_to_learn_from(setup):
    """The groups `assemble_groups` picks from two rounds, cut out with `select_envs` and joined as the actor
    joins its pieces: every group of the batch has mixed rewards, so every response has a non-zero advantage."""
    from algorithms.dapo import assemble_groups
    from embodied.trajectory import Trajectory

    env, policy = setup
    rounds = [rollout(env, policy, seed=2), rollout(env, policy, seed=3)]
    rounds[0].rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]).reshape(1, 8, 1)  # U, M
    rounds[1].rewards = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]).reshape(1, 8, 1)  # M, U
    chosen = assemble_groups([r.outcome_scores() for r in rounds], GROUP, target_groups=2, max_rounds=2)
    assert chosen.complete and chosen.groups == ((0, 1), (1, 0))
    pieces = [
        rounds[r].select_envs(torch.arange(g * GROUP, (g + 1) * GROUP), env_start=slot * GROUP)
        for slot, (r, g) in enumerate(chosen.groups)
    ]
    batch_trajectory = Trajectory.concat(pieces)
    torch.testing.assert_close(
        batch_trajectory.forward_inputs["input_ids"][0, GROUP:],
        rounds[1].forward_inputs["input_ids"][0, :GROUP],
    )
    algorithm = AlgorithmConfig(advantage="grpo", logprob_granularity="token", dynamic_sampling=True)
    batch = build_train_batch(batch_trajectory, algorithm, GROUP)
    assert len(batch) == 8 and (batch.advantages.abs() > 0).all()  # one advantage per response
