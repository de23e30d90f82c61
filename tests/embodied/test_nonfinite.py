"""NaN and inf, injected where they appear (an env observation, the loss, the gradients, the weights): found
there, named with the component and the tensor, never stepped on or checkpointed; run.on_nonfinite=skip
drops exactly the spoiled mini-batches. In one process (the actor's update loop and the workers' checks)."""

from __future__ import annotations

import pytest
import torch

from algorithms.config import AlgorithmConfig
from embodied import faults
from embodied.config import ActorConfig
from embodied.nonfinite import NonFiniteError, NonFiniteGuard, check_env_step, check_weights
from embodied.training import build_optimizer, ppo_update
from embodied.trajectory import EnvStep, TrainBatch
from embodied.worker import Failure, GroupCall, Worker, WorkerError, WorkerInfo
from envs.base import EnvSpec
from policies.base import PolicyConfig, make_policy

SPEC = EnvSpec(2, (-1.0, -1.0), (1.0, 1.0), 3, None, False, 50, None)
ACTOR = ActorConfig(num_minibatches=4, update_epochs=2, target_kl=None)
WHERE = "actor worker rank 0"


def batch(n: int = 32) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
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


def update(train_batch: TrainBatch, mode: str, hook=None):
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": [16]}), SPEC)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    if hook is not None:
        next(policy.parameters()).register_hook(hook)
    optimizer = build_optimizer(policy, ACTOR)
    guard = NonFiniteGuard(mode, WHERE)
    metrics = ppo_update(
        policy, optimizer, train_batch, ACTOR, AlgorithmConfig(), torch.Generator(), None, guard
    )
    return metrics, before, policy.state_dict()


@pytest.mark.parametrize(
    ("tensor", "named"),
    [
        ("advantages", "'advantages': 8 NaN, 0 inf of 8 values"),
        ("states", "'forward_inputs.states': 24 NaN, 0 inf of 24 values"),
    ],
)
def test_non_finite_training_data_stops_the_update_naming_the_tensor(tensor, named):
    bad = batch()
    values = bad.forward_inputs["states"] if tensor == "states" else bad.advantages
    values.fill_(float("nan"))
    with pytest.raises(NonFiniteError) as caught:
        update(bad, "stop")
    message = str(caught.value)
    assert message.startswith(
        f"{WHERE}, update epoch 1, mini-batch 1, micro-batch 0: non-finite training data"
    )
    assert named in message and "its last checkpoint is intact" in message


def test_a_nan_loss_from_finite_data_names_the_policy_output_or_the_loss_terms(monkeypatch):
    monkeypatch.setenv(faults.ENV, "actor.loss@1")
    faults._plan.cache_clear()
    faults._passes.clear()
    try:
        with pytest.raises(
            NonFiniteError, match=r"micro-batch 0: the loss is nan, from finite data and policy .*pg_loss"
        ):
            update(batch(), "stop")
    finally:
        monkeypatch.delenv(faults.ENV)
        faults._plan.cache_clear()
        faults._passes.clear()


def test_a_nan_gradient_stops_before_the_step_naming_the_parameter():
    with pytest.raises(
        NonFiniteError, match=rf"{WHERE}, update epoch 1, mini-batch 1: non-finite 'gradient of "
    ):
        update(batch(), "stop", hook=lambda grad: grad * float("nan"))


def test_skip_drops_exactly_the_spoiled_mini_batches(capsys):
    bad = batch()
    bad.advantages[:3] = float("inf")  # in some mini-batches of each epoch, not in others
    metrics, before, after = update(bad, "skip")
    skipped, applied = metrics["train/actor/nonfinite_skipped"], metrics["train/actor/minibatch_steps"]
    assert 0 < skipped < 8 and skipped + applied == 8
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the clean mini-batches trained
    assert "mini-batch skipped" in capsys.readouterr().out
    clean, _, _ = update(batch(), "skip")
    assert clean["train/actor/nonfinite_skipped"] == 0 and clean["train/actor/minibatch_steps"] == 8


def test_skip_of_every_mini_batch_leaves_the_weights_bitwise_unchanged():
    metrics, before, after = update(batch(), "skip", hook=lambda grad: grad * float("nan"))
    assert metrics["train/actor/nonfinite_skipped"] == 8 and metrics["train/actor/minibatch_steps"] == 0
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_non_finite_weights_are_never_checkpointed_or_synced():
    policy = make_policy(PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": [16]}), SPEC)
    check_weights(policy, WHERE, "checkpointed")
    with torch.no_grad():
        dict(policy.named_parameters())["log_std"].view(-1)[1] = float("nan")
    with pytest.raises(
        NonFiniteError, match=rf"{WHERE}: .*parameter 'log_std': 1 NaN, 0 inf .*not checkpointed"
    ):
        check_weights(policy, WHERE, "checkpointed")


def test_an_env_observation_is_checked_where_it_appears(capsys):
    obs = {
        "states": torch.zeros(4, 3),
        "main_images": torch.zeros(4, 8, 8, 3, dtype=torch.uint8),
        "text": ["a"],
    }
    assert check_env_step("env worker rank 1, unit 2", EnvStep(obs, torch.zeros(4, 2)), "stop").obs is obs
    obs["states"][2, 1] = float("-inf")
    with pytest.raises(
        NonFiniteError, match=r"env worker rank 1, unit 2: .*'observation.states': 0 NaN, 1 inf .*\(2, 1\)"
    ):
        check_env_step("env worker rank 1, unit 2", EnvStep(obs, torch.zeros(4, 2)), "stop")
    cleaned = check_env_step("env worker rank 1, unit 2", EnvStep(obs), "skip")
    assert torch.equal(cleaned.obs["states"], torch.zeros(4, 3)) and cleaned.obs["text"] == ["a"]
    assert (
        "warning: env worker rank 1, unit 2: non-finite env output 'observation.states'"
        in capsys.readouterr().out
    )


def test_rewards_and_final_observations_are_checked_too():
    rewards = torch.zeros(4, 2)
    rewards[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="'rewards': 1 NaN"):
        check_env_step("env worker rank 0, unit 0", EnvStep({"states": torch.zeros(4, 3)}, rewards), "stop")
    final = {"states": torch.full((1, 3), float("nan"))}
    with pytest.raises(NonFiniteError, match="'final_observation.states': 3 NaN"):
        check_env_step("env worker rank 0, unit 0", EnvStep({}, final_obs=final), "stop")


def test_faults_are_injected_at_the_nth_pass(monkeypatch):
    monkeypatch.setenv(faults.ENV, "actor.loss@3,env.obs@1")
    faults._plan.cache_clear()
    faults._passes.clear()
    try:
        assert [faults.due("actor.loss") for _ in range(4)] == [False, False, True, False]
        assert faults.due("env.obs") and not faults.due("actor.grad")
        monkeypatch.setenv(faults.ENV, "actor.los@3")
        faults._plan.cache_clear()
        with pytest.raises(ValueError, match="each fault is <site>@<n>"):
            faults.due("actor.loss")
    finally:
        monkeypatch.delenv(faults.ENV)
        faults._plan.cache_clear()
        faults._passes.clear()


class RaisingWorker(Worker):
    def fail(self) -> None:
        raise NonFiniteError("actor worker rank 0, update epoch 1, mini-batch 1: non-finite 'gradient of w'")

    def crash(self) -> None:
        raise ValueError("a bug")


def test_a_diagnosed_error_reaches_the_driver_without_the_worker_traceback():
    worker = RaisingWorker(WorkerInfo("actor", 0, 1, 0, None, "cpu", 1))
    status, _ = worker._invoke("fail", (), {})
    assert isinstance(status, Failure) and status.traceback == ""
    with pytest.raises(WorkerError) as caught:
        GroupCall._raise_for(status)
    assert "non-finite 'gradient of w'" in str(caught.value) and "traceback" not in str(caught.value)
    status, _ = worker._invoke("crash", (), {})
    with pytest.raises(WorkerError, match="Worker traceback"):  # an unexpected error keeps its traceback
        GroupCall._raise_for(status)
