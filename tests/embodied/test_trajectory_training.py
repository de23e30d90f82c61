"""Trajectories (building, slicing, advantages) and the actor's update loop, in one process."""

from __future__ import annotations

import copy

import pytest
import torch

from algorithms.config import AlgorithmConfig
from embodied.config import ActorConfig
from embodied.training import Collectives, build_optimizer, minibatch_step, ppo_update, schedule_lr
from embodied.trajectory import EnvStep, TrainBatch, Trajectory, TrajectoryBuilder, build_train_batch
from envs.base import EnvSpec
from policies.base import PolicyConfig, PolicyOutput, make_policy

SPEC = EnvSpec(2, (-1.0, -1.0), (1.0, 1.0), 3, None, False, 50, None)


def fake_output(n: int, value: float) -> PolicyOutput:
    return PolicyOutput(
        actions=torch.zeros(n, 1, 2),
        logprobs=torch.full((n, 1, 2), -1.0),
        values=torch.full((n,), value),
        forward_inputs={"states": torch.zeros(n, 3), "actions": torch.zeros(n, 1, 2)},
    )


def outcome(rewards, term=None, trunc=None) -> EnvStep:
    n = len(rewards)
    term = torch.tensor(term or [False] * n)[:, None]
    trunc = torch.tensor(trunc or [False] * n)[:, None]
    return EnvStep(
        {},
        torch.tensor(rewards, dtype=torch.float32)[:, None],
        term,
        trunc,
        torch.ones(n, 1, dtype=torch.bool),
    )


def small_trajectory() -> Trajectory:
    """2 envs, 3 chunk steps; env 1 is truncated at step 1 with a final value of 2."""
    builder = TrajectoryBuilder(env_start=4, version=7)
    for t in range(3):
        builder.add_output(fake_output(2, value=0.0))
        trunc = [False, t == 1]
        builder.add_outcome(outcome([1.0, 1.0], trunc=trunc), torch.tensor([0.0, 2.0 if t == 1 else 0.0]))
    builder.add_bootstrap(torch.zeros(2))
    return builder.build()


def test_builder_layout():
    traj = small_trajectory()
    assert (
        traj.rewards.shape == (3, 2, 1) and traj.values.shape == (4, 2) and traj.final_values.shape == (3, 2)
    )
    assert traj.logprobs.shape == (3, 2, 1, 2) and traj.forward_inputs["states"].shape == (3, 2, 3)
    assert traj.env_start == 4 and traj.version == 7 and traj.num_envs == 2 and traj.num_steps == 3


def test_slice_and_concat_round_trip():
    traj = small_trajectory()
    parts = [traj.slice_envs(5, 6), traj.slice_envs(4, 5)]
    again = Trajectory.concat(parts)
    assert again.env_start == 4
    for name in ("rewards", "values", "final_values", "logprobs"):
        torch.testing.assert_close(getattr(again, name), getattr(traj, name))
    with pytest.raises(ValueError, match="not inside"):
        traj.slice_envs(3, 5)
    with pytest.raises(ValueError, match="not adjacent"):
        Trajectory.concat(
            [
                traj.slice_envs(4, 5),
                traj.slice_envs(4, 5).__class__(**{**vars(traj.slice_envs(5, 6)), "env_start": 7}),
            ]
        )


def test_advantages_bootstrap_truncations_by_hand():
    """gamma 0.5, lambda 1, values 0: env 0 (no end) R = 1 + .5 + .25 = 1.75, 1.5, 1; env 1 is cut after
    step 1 with final value 2: R_1 = 1 + .5 * 2 = 2, R_0 = 1 + .5 * 2 = 2, then a new episode R_2 = 1."""
    algorithm = AlgorithmConfig(gamma=0.5, gae_lambda=1.0, normalize_advantages=False)
    batch = build_train_batch(small_trajectory(), algorithm, group_size=1)
    returns = batch.returns.reshape(3, 2)
    torch.testing.assert_close(returns, torch.tensor([[1.75, 2.0], [1.5, 2.0], [1.0, 1.0]]))
    torch.testing.assert_close(batch.advantages, batch.returns)  # values are 0
    assert batch.old_logprobs.shape == (6, 1, 2) and batch.mask.shape == (6, 1)


def test_logprob_mask_joins_the_step_mask():
    traj = small_trajectory()
    traj.logprob_mask = torch.ones(3, 2, 1, 2, dtype=torch.bool)
    traj.logprob_mask[0, 0, 0, 1] = False
    traj.valid[2, 1, 0] = False
    traj.terminations[1, 1, 0] = True  # an invalid entry must follow an episode end
    batch = build_train_batch(traj, AlgorithmConfig(), group_size=1)
    assert batch.mask.shape == (6, 1, 2)
    assert not batch.mask[0, 0, 1] and batch.mask[0, 0, 0] and not batch.mask[5].any()


def random_batch(n: int = 32, seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    return TrainBatch(
        forward_inputs={
            "states": torch.randn(n, 3, generator=g),
            "actions": torch.randn(n, 1, 2, generator=g),
        },
        old_logprobs=torch.randn(n, 1, 2, generator=g) - 1.0,
        advantages=torch.randn(n, generator=g),
        mask=torch.ones(n, 1, dtype=torch.bool),
        returns=torch.randn(n, generator=g),
        old_values=torch.randn(n, generator=g),
    )


def policy_and_optimizer(actor: ActorConfig):
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": [16, 16]}), SPEC)
    return policy, build_optimizer(policy, actor)


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    algorithm = AlgorithmConfig(logprob_granularity="action")
    whole = ActorConfig(target_kl=None, max_grad_norm=None)
    micro = whole.replace(micro_batch_size=5)  # 32 samples: micro-batches of 5, 5, ..., 2
    p1, o1 = policy_and_optimizer(whole)
    p2 = copy.deepcopy(p1)
    o2 = build_optimizer(p2, micro)
    batch = random_batch()
    m1, ok1 = minibatch_step(p1, o1, batch, whole, algorithm, Collectives())
    m2, ok2 = minibatch_step(p2, o2, batch, micro, algorithm, Collectives())
    assert ok1 and ok2
    for a, b in zip(p1.parameters(), p2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-4)


def test_target_kl_stops_the_update_before_the_step():
    actor = ActorConfig(target_kl=0.01)
    policy, optimizer = policy_and_optimizer(actor)
    batch = random_batch()
    batch.old_logprobs = batch.old_logprobs - 5.0  # the data came from a very different policy
    before = [p.detach().clone() for p in policy.parameters()]
    metrics = ppo_update(policy, optimizer, batch, actor, AlgorithmConfig(), torch.Generator().manual_seed(0))
    assert metrics["train/actor/early_stopped"] == 1.0 and metrics["train/actor/minibatch_steps"] == 0.0
    assert metrics["train/actor/approx_kl_at_stop"] > 0.01
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_update_makes_positive_advantage_actions_likelier_and_reports_metrics():
    actor = ActorConfig(target_kl=None, update_epochs=4, num_minibatches=2, lr=1e-2, value_lr=1e-3)
    policy, optimizer = policy_and_optimizer(actor)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-3]
    batch = random_batch(64)
    with torch.no_grad():
        batch.old_logprobs = policy.evaluate(batch.forward_inputs).logprobs
    metrics = ppo_update(policy, optimizer, batch, actor, AlgorithmConfig(), torch.Generator().manual_seed(0))
    with torch.no_grad():
        change = (policy.evaluate(batch.forward_inputs).logprobs - batch.old_logprobs).sum((1, 2))
    assert (change * batch.advantages).mean() > 0
    for key in (
        "train/actor/pg_loss",
        "train/actor/approx_kl",
        "train/actor/grad_norm",
        "train/critic/value_loss",
        "train/critic/explained_variance",
        "train/actor/lr",
        "train/critic/lr",
    ):
        assert key in metrics
    assert metrics["train/actor/minibatch_steps"] == 8.0 and metrics["train/critic/lr"] == 1e-3


def test_critic_warmup_moves_the_value_head_only():
    """actor.critic_warmup_iterations: an update with critic_only trains the value head to the returns while the
    action mean and log_std stay bit for bit (their gradients never reach the optimizer, so it keeps no state
    for them); the next, normal update moves the policy."""
    actor = ActorConfig(target_kl=None, update_epochs=4, num_minibatches=2, lr=1e-2, value_lr=1e-2)
    policy, optimizer = policy_and_optimizer(actor)
    batch = random_batch(64)
    batch.returns = batch.forward_inputs["states"][:, 0]  # returns the critic can fit
    with torch.no_grad():
        batch.old_logprobs = policy.evaluate(batch.forward_inputs).logprobs
        value_error = (policy.evaluate(batch.forward_inputs).values - batch.returns).pow(2).mean()
    others = {n: p.detach().clone() for n, p in policy.named_parameters() if not n.startswith("value_head.")}
    metrics = ppo_update(
        policy, optimizer, batch, actor, AlgorithmConfig(), torch.Generator().manual_seed(0), critic_only=True
    )
    assert metrics["train/critic/warmup"] == 1.0 and metrics["train/actor/minibatch_steps"] == 8.0
    assert all(torch.equal(p, others[n]) for n, p in policy.named_parameters() if n in others)
    assert not any(p in optimizer.state for n, p in policy.named_parameters() if n in others)
    assert all(optimizer.state[p] for p in policy.value_head.parameters())
    with torch.no_grad():
        assert (policy.evaluate(batch.forward_inputs).values - batch.returns).pow(2).mean() < 0.8 * value_error
    metrics = ppo_update(policy, optimizer, batch, actor, AlgorithmConfig(), torch.Generator().manual_seed(1))
    assert metrics["train/critic/warmup"] == 0.0
    assert not torch.equal(policy.log_std, others["log_std"])


def test_critic_warmup_without_a_critic_names_the_key():
    actor = ActorConfig(critic_warmup_iterations=2)
    policy, optimizer = policy_and_optimizer(actor)
    batch = random_batch(32)
    batch.returns = batch.old_values = None  # a critic-free advantage
    with pytest.raises(ValueError, match="actor.critic_warmup_iterations=0"):
        ppo_update(policy, optimizer, batch, actor, AlgorithmConfig(), torch.Generator(), critic_only=True)


def test_too_few_samples_for_the_minibatches():
    actor = ActorConfig(num_minibatches=64)
    policy, optimizer = policy_and_optimizer(actor)
    with pytest.raises(ValueError, match="cannot be split into actor.num_minibatches=64"):
        ppo_update(policy, optimizer, random_batch(32), actor, AlgorithmConfig(), torch.Generator())


def test_bootstrap_on_termination_uses_the_final_value():
    """env 1 terminates (instead of being truncated) at step 1: by default the return there is 1 (no
    bootstrap); with bootstrap_on_termination it is 1 + 0.5 * 2, as for a truncation."""
    traj = small_trajectory()
    traj.terminations, traj.truncations = traj.truncations.clone(), torch.zeros_like(traj.truncations)
    algorithm = AlgorithmConfig(gamma=0.5, gae_lambda=1.0, normalize_advantages=False)
    ends = build_train_batch(traj, algorithm, group_size=1).returns.reshape(3, 2)
    boots = build_train_batch(traj, algorithm, group_size=1, bootstrap_on_termination=True).returns.reshape(
        3, 2
    )
    assert ends[1, 1] == pytest.approx(1.0) and ends[0, 1] == pytest.approx(1.5)
    assert boots[1, 1] == pytest.approx(2.0) and boots[0, 1] == pytest.approx(2.0)


def test_step_validity_inside_chunks_and_for_idle_envs():
    import numpy as np

    from embodied.workers.env_worker import step_validity

    terms = torch.tensor([[False, True, False, False], [False, False, False, False], [False] * 4])
    truncs = torch.tensor([[False] * 4, [False, False, False, True], [False] * 4])
    running = np.array([True, True, False])  # env 2 finished earlier and waits for a reset (auto_reset=false)
    valid = step_validity(terms, truncs, running)
    assert valid.tolist() == [[True, True, False, False], [True, True, True, True], [False] * 4]


@pytest.mark.parametrize("schedule, scale", [("constant", [1.0, 1.0, 1.0]), ("linear", [1.0, 0.75, 0.0])])
def test_learning_rate_schedule_scales_policy_and_value_rates(schedule, scale):
    actor = ActorConfig(lr=2e-3, value_lr=1e-2, lr_schedule=schedule)
    _, optimizer = policy_and_optimizer(actor)
    for progress, expected in zip([0.0, 0.25, 1.0], scale):
        assert schedule_lr(optimizer, actor, progress) == pytest.approx(2e-3 * expected)
        rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
        assert rates == pytest.approx({"policy": 2e-3 * expected, "value": 1e-2 * expected})
    assert schedule_lr(optimizer, actor, 1.2) == pytest.approx(0.0 if schedule == "linear" else 2e-3)
