"""DAPO's dynamic sampling through the runtime (in-process Ray, the math_dapo config cut down): the runner rolls
out again until the batch is full of groups with mixed rewards, the rollout workers route the chosen groups of
several rounds to two actor ranks, and every round counts in the env-step budget.

Groups of 2 responses with 0/1 rewards: a group is mixed only when one answer is right and one wrong, so a batch
made only of mixed groups has a reward mean of exactly 0.5 on every actor rank, and with the warm-started model
(accuracy ~0.45) about half the groups of a round are uniform, so most steps need more than one round."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from embodied.compose import load_config
from embodied.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

NUM_ENVS, GROUP = 8, 2


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    """{env steps: value} of one logged metric."""
    return {e.step: e.value for e in events.Scalars(tag)}


def test_rounds_refill_the_batch_and_count_in_the_budget(tmp_path):
    config, tree = load_config(
        "math_dapo",
        [
            f"env.num_envs={NUM_ENVS}",
            f"env.group_size={GROUP}",
            "cluster=collocated",  # 2 env, 2 rollout and 2 actor workers: groups cross ranks
            "algorithm.max_num_gen_batches=0",
            "actor.num_minibatches=1",
            "run.total_env_steps=48",
            "eval.every_n_iterations=0",
            "eval.at_end=false",
            "checkpoint.every_n_iterations=0",
            "checkpoint.at_end=false",
            "logger.wandb.mode=disabled",
            f"run.output_dir={tmp_path}",
        ],
    )
    train(config, tree)
    (run_dir,) = (tmp_path / "math_dapo").iterdir()
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rounds = scalars(events, "rollout/gen_rounds")
    steps = sorted(rounds)
    # the logged env-step counter advances by every round's responses, not one round's
    assert [b - a for a, b in zip([0, *steps], steps)] == [NUM_ENVS * rounds[s] for s in steps]
    assert max(rounds.values()) > 1, f"no step needed a second round: {rounds}"
    target = NUM_ENVS // GROUP
    assert all(v == target for v in scalars(events, "rollout/groups_kept").values())
    assert not any(scalars(events, "rollout/groups_padded").values())
    filtered = scalars(events, "rollout/groups_filtered")
    surplus = scalars(events, "rollout/groups_surplus")
    assert all(target + filtered[s] + surplus[s] == target * rounds[s] for s in steps)  # every group counted
    assert all(v == 0.5 for v in scalars(events, "rollout/reward_mean").values())  # only mixed groups
