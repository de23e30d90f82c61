"""`AlgorithmConfig`: the `algorithm:` section of a run's YAML (advantage, loss and their coefficients).

Optimiser settings (learning rate, epochs, mini-batches) belong to the runtime's section, not here.
Presets (see docs/algorithms.md for each formula):

    PPO:        advantage: gae,          loss: ppo, value_coef: 0.5, normalize_advantages: true
    GRPO:       advantage: grpo,         loss: ppo, kl_coef: 0.001, kl_estimator: k3, loss_agg_mode: seq-mean-token-mean
    DAPO:       advantage: grpo,         loss: ppo, clip_ratio_high: 0.28, loss_agg_mode: token-mean,
                dynamic_sampling: true, max_num_gen_batches, overlong_max_length / overlong_buffer /
                overlong_penalty
    Reinforce++: advantage: reinforce_pp, loss: ppo, kl_in_reward_coef: 0.001
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.masked import LossAggMode
from algorithms.registry import did_you_mean
from algorithms.schema import Config, ConfigError, param

KlEstimator = Literal["k1", "k2", "k3"]
LogprobGranularity = Literal["token", "action", "chunk"]
ValueLossType = Literal["plain", "clipped", "huber"]
RewardLevel = Literal["step", "chunk"]


@dataclass(frozen=True)
class AlgorithmConfig(Config):
    """Which advantage estimator and policy loss to use, and their coefficients."""

    advantage: str = param("gae", help="advantage estimator: gae | grpo | reinforce_pp | rloo | mc_return")
    loss: str = param(
        "ppo", help="policy loss: ppo (clipped surrogate, dual clip) | pg (unclipped ratio * advantage)"
    )
    reward_level: RewardLevel = param(
        "chunk", help="step: advantages per env step inside action chunks; chunk: rewards summed per chunk"
    )
    gamma: float = param(0.99, help="discount factor per step of the advantage's time axis", ge=0.0, le=1.0)
    gae_lambda: float = param(0.95, help="GAE lambda (1: Monte-Carlo returns minus values)", ge=0.0, le=1.0)
    normalize_advantages: bool = param(
        True, help="whiten gae / mc_return advantages over the batch's valid entries"
    )
    grpo_normalize_std: bool = param(
        True, help="grpo: divide by the group's reward std (false: Dr. GRPO, mean only)"
    )
    grpo_epsilon: float = param(1e-6, help="grpo: added to the group std before dividing", gt=0.0)
    group_baseline: bool = param(False, help="reinforce_pp: subtract the group mean outcome before whitening")
    kl_in_reward_coef: float = param(
        0.0, help="reinforce_pp: per-step KL(policy || reference) penalty in the reward", ge=0.0
    )
    clip_ratio_low: float = param(0.2, help="PPO lower clip: ratio >= 1 - clip_ratio_low", gt=0.0, lt=1.0)
    clip_ratio_high: float = param(
        0.2, help="PPO upper clip: ratio <= 1 + clip_ratio_high (DAPO clip-higher: 0.28)", gt=0.0
    )
    clip_ratio_c: float | None = param(
        None, help="dual clip for negative advantages (e.g. 3.0); null: off", gt=1.0
    )
    value_loss_type: ValueLossType = param(
        "clipped", help="value loss: plain (squared error) | clipped | huber"
    )
    value_clip: float = param(
        0.2, help="clipped value loss: max change of the value from its rollout value", gt=0.0
    )
    huber_delta: float = param(1.0, help="huber value loss: error size where the loss turns linear", gt=0.0)
    value_coef: float = param(0.5, help="weight of the value loss in the total loss", ge=0.0)
    entropy_coef: float = param(0.0, help="weight of the entropy bonus (subtracted from the loss)", ge=0.0)
    kl_coef: float = param(0.0, help="weight of the KL(policy || reference) loss term (GRPO); 0: off", ge=0.0)
    kl_estimator: KlEstimator = param(
        "k3", help="KL estimator for the loss term: k1 | k2 | k3 (Schulman 2020)"
    )
    loss_agg_mode: LossAggMode = param(
        "token-mean",
        help="how per-token losses become a scalar: token-mean | seq-mean-token-sum | seq-mean-token-mean",
    )
    logprob_granularity: LogprobGranularity = param(
        "token",
        help="embodied ratio unit: token (per action dim) | action (sum over dims) | chunk (sum over chunk)",
    )
    dynamic_sampling: bool = param(
        False,
        help="DAPO: drop groups whose rewards are all equal and generate more rounds (same weights) until the "
        "batch holds env.num_envs / env.group_size groups with mixed rewards",
    )
    max_num_gen_batches: int = param(
        10,
        help="dynamic sampling: most generation rounds per training step (0: unbounded); when they are spent "
        "the batch is topped up with all-equal groups (advantage 0) and rollout/groups_padded counts them",
        ge=0,
    )
    overlong_max_length: int | None = param(
        None, help="LLM over-long shaping: max response length; null: off", ge=1
    )
    overlong_buffer: int = param(
        0, help="LLM over-long shaping: penalty ramps over the last this many tokens", ge=0
    )
    overlong_penalty: float = param(
        1.0, help="LLM over-long shaping: penalty at and past the max length", ge=0.0
    )

    def check(self) -> None:
        from algorithms.advantages import advantage_registry
        from algorithms.losses import loss_registry

        for key, value, known in (
            ("advantage", self.advantage, advantage_registry.names()),
            ("loss", self.loss, loss_registry.names()),
        ):
            if value not in known:
                raise ConfigError(
                    f"{{key}}={value!r} is not known.{did_you_mean(value, known)} Known: {', '.join(known)}",
                    key,
                )
        if self.overlong_max_length is not None and self.overlong_buffer >= self.overlong_max_length:
            raise ConfigError(
                f"{{section}}overlong_buffer={self.overlong_buffer} must be smaller than "
                f"overlong_max_length={self.overlong_max_length}: the penalty ramps over the last buffer tokens"
            )
