"""RL with demonstrations (`actor.demos`, embodied/demo_term.py): the behaviour-cloning term's gradient, its
weight schedule, its absence in critic warm-up, and the config errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from algorithms.config import AlgorithmConfig
from algorithms.schema import ConfigError
from embodied.compose import load_config
from embodied.config import ActorConfig
from embodied.demo_term import DemoTerm, check_demo_config
from embodied.training import Collectives, minibatch_step, ppo_update
from envs.base import EnvSpec
from envs.demos import DemoInfo, DemoWriter
from policies.base import PolicyConfig, make_policy
from tests.embodied.test_trajectory_training import random_batch

SPEC = EnvSpec(2, (-1.0, -1.0), (1.0, 1.0), 3, None, False, 50, None)


def write_demos(path, env_id: str = "PushCube-v1", episodes: int = 4) -> str:
    """State demonstrations of a made-up env with SPEC's sizes: action = tanh of the first two state dims."""
    info = DemoInfo(env_id, "state", "pd_joint_delta_pos", 10, state_dim=3, action_dim=2)
    rng = np.random.default_rng(0)
    with DemoWriter(path, info) as writer:
        for seed in range(episodes):
            states = rng.normal(size=(6, 3)).astype(np.float32)
            writer.add_episode(states, np.tanh(states[:, :2]), None, "push", seed, True)
    return str(path)


def policy_and_sgd():
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": [16, 16]}), SPEC)
    return policy, torch.optim.SGD(policy.parameters(), lr=1.0)


def test_the_term_adds_its_weighted_supervised_gradient_to_the_step(tmp_path):
    demos = write_demos(tmp_path / "demos")
    actor = ActorConfig(target_kl=None, max_grad_norm=None, demos=demos, demo_batch_size=8)
    algorithm = AlgorithmConfig(logprob_granularity="action")
    batch = random_batch()
    plain, plain_sgd = policy_and_sgd()
    with_demos = copy.deepcopy(plain)
    start = copy.deepcopy(plain)
    minibatch_step(plain, plain_sgd, batch, actor, algorithm, Collectives())
    term = DemoTerm(actor, horizon=1, seed=0, rank=0, world_size=1)
    metrics, ok = minibatch_step(
        with_demos,
        torch.optim.SGD(with_demos.parameters(), lr=1.0),
        batch,
        actor,
        algorithm,
        Collectives(),
        demo=(term, 3.0),
    )
    # the same demo batch (a fresh term with the same seed draws it again), its gradient by hand
    again = DemoTerm(actor, horizon=1, seed=0, rank=0, world_size=1).batches.train_batch(8)
    loss, _ = start.supervised_loss(again)
    grads = torch.autograd.grad(loss, list(start.parameters()), allow_unused=True)
    assert ok and metrics["demo_loss"] == pytest.approx(float(loss.detach()))
    moved = 0
    for p, q, g in zip(plain.parameters(), with_demos.parameters(), grads):
        expected = p.detach() - (3.0 * g if g is not None else 0.0)  # SGD at lr 1: w -= 3 * grad
        torch.testing.assert_close(q.detach(), expected, rtol=1e-5, atol=1e-6)
        moved += g is not None and bool(g.abs().sum() > 0)
    assert moved >= 2  # the action mean's layers; the value head and log_std get no demo gradient


def test_weight_schedule_and_warmup_skip(tmp_path):
    demos = write_demos(tmp_path / "demos")
    actor = ActorConfig(target_kl=None, demos=demos, demo_coef=2.0, demo_coef_decay=0.5, demo_batch_size=4)
    term = DemoTerm(actor, horizon=1, seed=0, rank=0, world_size=1)
    assert [term.weight(k) for k in range(3)] == [2.0, 1.0, 0.5]
    policy, _ = policy_and_sgd()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    batch = random_batch(16)
    generator = torch.Generator().manual_seed(0)
    args = (policy, optimizer, batch, actor, AlgorithmConfig(), generator)
    warm = ppo_update(*args, critic_only=True, demo=(term, 2.0))
    assert "train/actor/demo_loss" not in warm and term.state() == {"epoch": 0, "cursor": 0}
    metrics = ppo_update(*args, demo=(term, 2.0))
    steps = actor.update_epochs * actor.num_minibatches
    assert metrics["train/actor/demo_loss"] > 0 and term.state()["cursor"] == steps * 4 % 24


def test_demo_config_errors_name_the_key(tmp_path):
    missing = tmp_path / "none"
    config, _ = load_config("maniskill_ppo_pushcube", [f"actor.demos={missing}"])
    with pytest.raises(ConfigError, match=r"actor\.demos=.*does not exist"):
        check_demo_config(config)
    other_task = write_demos(tmp_path / "pick", env_id="PickCube-v1")
    config, _ = load_config("maniskill_ppo_pushcube", [f"actor.demos={other_task}"])
    with pytest.raises(ConfigError, match=r"actor\.demos=.*env_id='PickCube-v1'.*env\.task='PushCube-v1'"):
        check_demo_config(config)
    check_demo_config(
        load_config("maniskill_ppo_pushcube", [f"actor.demos={write_demos(tmp_path / 'ok')}"])[0]
    )
    with pytest.raises(ConfigError, match="demo_coef_decay"):
        load_config("maniskill_ppo_pushcube", ["actor.demo_coef_decay=1.5"])
