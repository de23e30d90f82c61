"""Dynamic sampling's batch on the embodied GRPO path, in one process: two generation rounds of multi-step episodes
(T chunk steps of C env steps, groups of envs that share an initial state, image inputs), the rollout worker's
`retain` between the rounds and `send_batch` after them, and each actor rank's `_receive_batch`. The pieces the
actors receive are the chosen groups' data, in batch order, and every group of the batch has something to learn
from (non-zero GRPO advantages)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from algorithms.config import AlgorithmConfig
from algorithms.dapo import assemble_groups
from embodied.config import ActorConfig
from embodied.routing import plan_rollout
from embodied.trajectory import Trajectory, build_train_batch
from embodied.worker import WorkerInfo
from embodied.workers.actor_worker import ActorWorker
from embodied.workers.rollout_worker import HeldRound, RolloutWorker
from policies.base import PolicyConfig

T, N, C, GROUP = 3, 8, 2, 2  # 4 groups of 2 envs


class Mailboxes:
    """A channel stand-in: what `put` sends to consumer rank r under key k, and `inbox(r).get(k)`."""

    def __init__(self) -> None:
        self.items: dict[tuple[int, int], list] = defaultdict(list)

    def put(self, item, key: int, rank: int) -> None:
        self.items[(rank, key)].append(item)

    def inbox(self, rank: int):
        mailboxes = self

        class Inbox:
            def get(self, key: int):
                return mailboxes.items[(rank, key)].pop(0)

        return Inbox()


def episode_round(successes: list[int], seed: int) -> Trajectory:
    """One round: each env's one episode ends at chunk step 1 (reward 1 at its end when it succeeded)."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.zeros(T, N, C)
    rewards[1, :, 1] = torch.tensor(successes, dtype=torch.float32)
    terminations = torch.zeros(T, N, C, dtype=torch.bool)
    terminations[1, :, 1] = True
    valid = torch.ones(T, N, C, dtype=torch.bool)
    valid[2] = False  # after the episode's end
    return Trajectory(
        rewards=rewards,
        terminations=terminations,
        truncations=torch.zeros(T, N, C, dtype=torch.bool),
        valid=valid,
        logprobs=torch.randn(T, N, C, 4, generator=g),
        forward_inputs={
            "main_images": torch.randint(0, 255, (T, N, 8, 8, 3), generator=g, dtype=torch.uint8)
        },
        version=3,
    )


@pytest.fixture(autouse=True)
def keep_threads():
    """Workers built in this process set torch's thread count (to WorkerInfo.num_threads): restore it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def info(group: str, rank: int, world: int) -> WorkerInfo:
    return WorkerInfo(group, rank, world, slot=rank, cores=None, device="cpu", num_threads=1)


def test_chosen_groups_of_two_rounds_reach_the_actor_ranks_in_batch_order():
    plan = plan_rollout(N, GROUP, env_workers=1, stages=1, rollout_workers=1, actor_workers=2)
    rounds = [
        episode_round([1, 0, 1, 1, 0, 1, 0, 0], seed=0),  # groups: mixed, uniform, mixed, uniform
        episode_round([0, 0, 1, 0, 1, 1, 0, 1], seed=1),  # uniform, mixed, uniform, mixed
    ]
    rollout = RolloutWorker(
        info("rollout", 0, 1), PolicyConfig(name="mlp"), plan, seed=0, offload_when_idle=False
    )
    channel = Mailboxes()
    rollout.to_actor = channel
    rollout.held = {0: HeldRound(torch.arange(N), rounds[0])}
    first = assemble_groups([rounds[0].outcome_scores()], GROUP, target_groups=4, max_rounds=0)
    assert not first.complete and first.groups == ((0, 0), (0, 2))
    rollout.retain([(r, g * GROUP, (g + 1) * GROUP) for r, g in first.groups])
    assert rollout.held[0].envs.tolist() == [0, 1, 4, 5]  # round 0's uniform groups are released
    rollout.held[1] = HeldRound(torch.arange(N), rounds[1])
    batch = assemble_groups([r.outcome_scores() for r in rounds], GROUP, target_groups=4, max_rounds=0)
    assert batch.complete and batch.groups == ((0, 0), (0, 2), (1, 1), (1, 3))
    rollout.send_batch(plan.route_groups(batch.groups, GROUP))
    assert rollout.held == {}

    algorithm = AlgorithmConfig(advantage="grpo", dynamic_sampling=True)
    for rank, chosen in enumerate([batch.groups[:2], batch.groups[2:]]):
        actor = ActorWorker(
            info("actor", rank, 2), PolicyConfig(name="mlp"), ActorConfig(), algorithm, plan, GROUP, 0, False
        )
        actor.from_rollout, actor.version = channel.inbox(rank), 3
        received = actor._receive_batch()
        assert (received.env_start, received.num_envs) == (rank * N // 2, N // 2)
        expected = Trajectory.concat(
            [
                rounds[r].select_envs(torch.arange(g * GROUP, (g + 1) * GROUP), rank * N // 2 + slot * GROUP)
                for slot, (r, g) in enumerate(chosen)
            ]
        )
        for name in ("rewards", "valid", "logprobs"):
            torch.testing.assert_close(getattr(received, name), getattr(expected, name))
        torch.testing.assert_close(
            received.forward_inputs["main_images"], expected.forward_inputs["main_images"]
        )
        advantages = build_train_batch(received, algorithm, GROUP).advantages.reshape(T, N // 2)  # per chunk
        assert (advantages[:2].abs().amin(dim=0) > 0).all()  # every chunk of every env's episode learns
        assert not advantages[2].any()  # after the episodes' end
