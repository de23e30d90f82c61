"""Supervised actor workers: the RL actor workers (FSDP2 ranks, optimizer, weight sync, checkpoints) trained on
demonstrations instead of rollouts.

Each rank opens the dataset itself (`open_demos`) and draws its share of every epoch (`embodied.sft_data`);
`supervised_train` runs optimizer steps on `Policy.supervised_loss` (the policy's own loss: behaviour cloning,
action-token cross-entropy or flow matching), with micro-batches and gradient accumulation, gradient clipping
and the learning-rate schedule of the `actor` section; FSDP2 averages the gradients over the ranks.
`validation_loss` evaluates the held-out episodes with a fixed seed (the flow-matching loss draws noise), so the
curve is comparable between iterations. Trainable modules that the supervised loss never reaches (the value
head; pi0's noise head; the Gaussian policies' log_std) are reported by `untrained_modules` and recorded in the
checkpoint's policy folder, so that an RL run starting from it says that they start untrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from embodied.sft_config import SupervisedSection
from embodied.sft_data import DemoBatches
from embodied.training import build_optimizer, clip_grad_norm, schedule_lr
from embodied.workers.actor_worker import ActorWorker
from policies.base import record_supervised

SAMPLER_FILE = "sft_sampler_{rank}.json"
VALIDATION_SEED = 12345  # noise and times of the flow-matching validation loss: the same at every evaluation


def split_batch(batch: dict, size: int) -> list[dict]:
    """`batch` (tensors and lists, batch-first) in consecutive parts of at most `size` samples."""
    n = len(batch["task_descriptions"])
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


class SupervisedActorWorker(ActorWorker):
    """An actor rank trained by supervised fine-tuning (see the module docstring)."""

    demos: DemoBatches | None = None
    untrained: tuple[str, ...] = ()
    steps_done = 0
    state_normalization = False  # the policy standardises its states with the training demos' statistics

    def open_demos(self, sft: SupervisedSection, path: str) -> dict[str, int]:
        """Open the dataset at `path`, split it by episode; returns the split's sizes (all ranks together)."""
        from envs.demos import open_demos

        self.sft = sft
        rank, world = self.info.rank, self.info.world_size
        self.demos = DemoBatches(
            open_demos(path),
            self.policy.action_horizon,
            sft.val_fraction,
            self.seed,
            rank,
            world,
            sft.num_episodes,
        )
        self._onload()
        # a policy that standardises its states takes the training frames' statistics (not when it starts from a
        # pretrained checkpoint, whose weights were trained with that checkpoint's statistics)
        if not self.policy_config.pretrained:
            states = torch.from_numpy(self.demos.dataset.states[self.demos.train_frames])
            self.state_normalization = self.policy.fit_state_normalization(states)
        self.untrained = self._modules_without_gradients()
        self.optimizer = build_optimizer(self.policy, self.actor, skip=self.untrained)
        self._offload()
        return {
            "train_episodes": len(self.demos.train_episodes),
            "val_episodes": len(self.demos.val_episodes),
            "train_frames": len(self.demos.train_frames),
            "val_frames": len(self.demos.val_frames) * world,
        }

    def supervised_train(self, steps: int, done: int, total_steps: int) -> dict[str, float]:
        """`steps` optimizer steps on this rank's next batches, `done` of `total_steps` being done before (the
        learning rate follows the share). Returns the mean loss, gradient norm and policy metrics over the steps."""
        self._onload()
        self.policy.train()
        local = self.sft.batch_size // self.info.world_size
        sums: dict[str, float] = {}
        for i in range(steps):
            lr = schedule_lr(self.optimizer, self.actor, (done + i) / total_steps)
            metrics = self._step(self.demos.train_batch(local))
            for name, value in (metrics | {"lr": lr}).items():
                sums[name] = sums.get(name, 0.0) + value / steps
        self.steps_done = done + steps
        self.version += 1  # the weights changed: the next sync carries a new version
        self._offload()
        return {f"train/sft/{k}": v for k, v in sums.items()} | {"train/lr": sums["lr"]}

    def _step(self, batch: dict) -> dict[str, float]:
        """One optimizer step over `batch` in micro-batches (gradients accumulate, reduced on the last one)."""
        size = len(batch["task_descriptions"])
        parts = split_batch(batch, self.actor.micro_batch_size or size)
        totals: dict[str, float] = {}
        for k, part in enumerate(parts):
            self.comm.gradient_sync(self.policy, k == len(parts) - 1)
            loss, metrics = self.policy.supervised_loss(part)
            weight = len(part["task_descriptions"]) / size
            (loss * weight).backward()
            for name, value in ({"loss": float(loss.detach())} | metrics).items():
                totals[name] = totals.get(name, 0.0) + value * weight
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        totals["grad_norm"] = clip_grad_norm(params, self.actor.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {name: self.comm.mean(value) for name, value in totals.items()}

    def _modules_without_gradients(self) -> tuple[str, ...]:
        """Top-level modules (or parameters) whose trainable parameters all get no gradient from the supervised
        loss, found with a backward pass on two training samples: they stay out of the optimizer (no state, no
        weight decay) and are recorded in the checkpoint."""
        probe = self.demos.batch(self.demos.train_frames[:2], self.demos.train_ends[:2])
        self.policy.supervised_loss(probe)[0].backward()
        reached: dict[str, bool] = {}
        for name, param in self.policy.named_parameters():
            if param.requires_grad:
                top = name.split(".")[0]
                reached[top] = reached.get(top, False) or param.grad is not None
            param.grad = None
        return tuple(sorted(name for name, got in reached.items() if not got))

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        """Mean loss (and policy metrics) over this rank's held-out samples, averaged over the ranks."""
        self._onload()
        self.policy.eval()
        sums, count = {}, 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(VALIDATION_SEED + self.info.rank)
            for batch in self.demos.val_batches(self.sft.batch_size // self.info.world_size):
                n = len(batch["task_descriptions"])
                loss, metrics = self.policy.supervised_loss(batch)
                for name, value in ({"loss": float(loss)} | metrics).items():
                    sums[name] = sums.get(name, 0.0) + value * n
                count += n
        self.policy.train()
        self._offload()
        if not count:
            return {}
        return {f"val/{name}": self.comm.mean(value / count) for name, value in sums.items()}

    def untrained_modules(self) -> list[str]:
        return list(self.untrained)

    # -- checkpoints: the sampler's place and what SFT did not train ----------------------------------------
    def save_checkpoint(self, directory: str) -> None:
        super().save_checkpoint(directory)
        folder = Path(directory)
        (folder / SAMPLER_FILE.format(rank=self.info.rank)).write_text(json.dumps(self.demos.state()))
        if self.info.rank == 0:
            record_supervised(
                folder / "policy",
                {
                    "demos": self.sft.demos,
                    "steps": self.steps_done,
                    "untrained": self.untrained_modules(),
                    "state_normalization": self.state_normalization,
                },
            )

    def load_checkpoint(self, directory: str) -> int:
        version = super().load_checkpoint(directory)
        path = Path(directory) / SAMPLER_FILE.format(rank=self.info.rank)
        if (
            path.is_file()
        ):  # absent when the checkpoint had fewer actor ranks: this rank starts its epoch anew
            self.demos.load_state(json.loads(path.read_text()))
        return version
