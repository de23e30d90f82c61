"""RL with demonstrations: a behaviour-cloning term in every RL mini-batch step (`actor.demos`).

    loss = RL loss (algorithms.objective) + w_k * Policy.supervised_loss(demo batch),  w_k = demo_coef * demo_coef_decay**k

for the k-th update of the run (DAPG's schedule, Rajeswaran et al. 2018: the demonstrations hold the policy near
what they show while the RL signal is weak, and fade as it takes over). The supervised loss is the policy's own,
the one SFT trains (Gaussian policies: squared error of the action mean; OpenVLA(-OFT): action-token cross
entropy; pi0: flow matching), so the term works for every policy with an SFT loss and keeps an SFT checkpoint's
behaviour from being lost while a fresh value head is still wrong (docs/learning_results.md).

Each actor rank draws its own share of the demonstrations' frames (`embodied.sft_data.DemoBatches`, all of them
for training); the term's backward runs before the mini-batch's RL micro-batches, so FSDP2 reduces both
gradients together with the last micro-batch. Under online scaling only the actor rank adds it (the members'
gradients are summed, so it counts once). Critic warm-up updates skip it (the policy does not move then).
"""

from __future__ import annotations

from embodied.config import ActorConfig
from embodied.sft_data import DemoBatches
from policies.base import Policy


class DemoTerm:
    """The demonstrations of one actor rank and the term's weight schedule."""

    def __init__(self, actor: ActorConfig, horizon: int, seed: int, rank: int, world_size: int) -> None:
        from embodied.sft import demos_location
        from envs.demos import open_demos

        self.coef, self.decay, self.batch_size = actor.demo_coef, actor.demo_coef_decay, actor.demo_batch_size
        dataset = open_demos(demos_location(actor.demos))
        self.batches = DemoBatches(dataset, horizon, 0.0, seed, rank, world_size)

    def weight(self, update: int) -> float:
        """w_k of the run's `update`-th update (0-based)."""
        return self.coef * self.decay**update

    def backward(self, policy: Policy, weight: float) -> float:
        """Add weight * the supervised loss of this rank's next demo batch to the gradients; returns the loss."""
        loss, _ = policy.supervised_loss(self.batches.train_batch(self.batch_size))
        (weight * loss).backward()
        return float(loss.detach())

    def state(self) -> dict:
        return self.batches.state()

    def load_state(self, state: dict) -> None:
        self.batches.load_state(state)


def check_demo_config(config) -> None:
    """`actor.demos` of a train config can be read and was recorded in the run's env (ConfigError otherwise);
    nothing to check without it."""
    if config.actor.demos is None:
        return
    from embodied.sft import check_demos_for_env, read_demo_info

    path, info = read_demo_info(config.actor.demos, "actor.demos")
    check_demos_for_env(info, config.env, path, key="actor.demos")
