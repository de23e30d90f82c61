"""The typed configuration of a supervised fine-tuning (SFT) run: a training run's config plus an `sft:` section.

An SFT config composes the RL config whose policy it prepares (e.g. `defaults: [maniskill_ppo_pickcube]`), so
the env (evaluation, action space), the policy (its processing and normalisation), the actor (optimizer, FSDP2,
precision), cluster, eval, checkpoint and logger sections are those of the RL run, and its checkpoints load
there as they are (`policy.pretrained=<checkpoint>/policy`). The RL-only sections (algorithm, rollout's
num_steps) are not used. An SFT iteration is `sft.steps_per_iteration` optimizer steps; `eval.every_n_iterations`,
`checkpoint.every_n_iterations` and `run.log_every` count these iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from algorithms.schema import Config, param
from embodied.config import TrainConfig


@dataclass(frozen=True)
class SupervisedSection(Config):
    """sft: the demonstrations and the supervised schedule."""

    demos: str = param(
        help="demonstrations: a LeRobot-format dataset folder or a ManiSkill .h5 trajectory file (relative paths: "
        "to the repository root); scripts/collect_demos.py makes them"
    )
    num_episodes: int | None = param(
        None, help="use only the first N episodes of the dataset; null: all", ge=1
    )
    steps: int | None = param(None, help="optimizer steps in all; null: from epochs", ge=1)
    epochs: float = param(10.0, help="passes over the training frames, when steps is null", gt=0.0)
    batch_size: int = param(256, help="samples per optimizer step, all actor ranks together", ge=1)
    steps_per_iteration: int = param(
        100,
        help="optimizer steps per iteration (one progress line; eval/checkpoint every_n_iterations count these)",
        ge=1,
    )
    val_fraction: float = param(
        0.1, help="share of the episodes held out for the validation loss (whole episodes)", ge=0.0, lt=1.0
    )
    val_every_n_iterations: int = param(
        1, help="compute the validation loss every this many iterations; 0: only at the end", ge=0
    )

    def total_steps(self, train_frames: int) -> int:
        """Optimizer steps of the run: `steps`, or `epochs` passes over `train_frames` frames."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * train_frames / self.batch_size))


@dataclass(frozen=True, kw_only=True)
class SFTConfig(TrainConfig):
    """A supervised fine-tuning run (embodied/sft.py): a training config plus the `sft` section."""

    sft: SupervisedSection = param(help="demonstrations and the supervised schedule")
