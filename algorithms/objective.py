"""The training loss of one (micro-)batch: policy loss + value loss + entropy bonus + KL penalty.

    loss, metrics = compute_loss(LossInputs(...), config)

    total = policy_loss(config.loss)                          # ppo / pg, on the configured granularity
          + config.value_coef   * value_loss                  # when inputs.values is given
          - config.entropy_coef * entropy                     # when inputs.entropy is given
          + config.kl_coef      * KL(pi || pi_ref)            # when config.kl_coef > 0 (needs ref_logprobs)

Every term is aggregated with config.loss_agg_mode over its valid entries. For gradient accumulation over
micro-batches, sum `loss_denominators(mb, config)` over the mini-batch's micro-batches and pass the total to
every `compute_loss` call: the micro-batch losses then add up to the mini-batch loss exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.config import AlgorithmConfig
from algorithms.granularity import align_to, reduce_logprobs
from algorithms.kl import kl_penalty
from algorithms.losses import Metrics, loss_registry, value_loss
from algorithms.masked import aggregate_loss, aggregation_count, masked_mean


@dataclass
class LossInputs:
    """One micro-batch of B samples (embodied: B = chunk steps x envs; LLM: B = responses).

    logprobs:      [B, C, A] per token (embodied, from `Policy.evaluate`) or [B, L] (LLM), with grad.
    old_logprobs:  same shape: the policy that collected the data.
    advantages:    [B] (per chunk / per response), [B, C] (per step; token or action granularity only) or
                   the logprobs' shape.
    mask:          bool [B, C] (steps that ran; envs that finished inside a chunk ran fewer) or [B, L]
                   (response tokens); any prefix of the logprobs' shape; None: all valid.
    entropy:       logprobs' shape, or None (no entropy bonus or metric).
    ref_logprobs:  logprobs' shape: the reference policy, for the KL term; None without it.
    values:        [B], [B, C] or [B, L]: the critic now, with grad; None: no value loss (critic-free).
    old_values:    values' shape: the critic at rollout time (value_loss_type=clipped).
    returns:       values' shape: the value targets.
    """

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.logprobs.shape)
        for name in ("old_logprobs", "entropy", "ref_logprobs"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but logprobs have {shape}; they must match"
                )
        if self.values is not None:
            if self.returns is None:
                raise ValueError("values are given but returns are not: the value loss needs both")
            for name in ("old_values", "returns"):
                t = getattr(self, name)
                if t is not None and tuple(t.shape) != tuple(self.values.shape):
                    raise ValueError(
                        f"{name} has shape {tuple(t.shape)} but values have {tuple(self.values.shape)}"
                    )

    def value_mask(self) -> torch.Tensor | None:
        """`mask` fitted to the values' shape: True where any of the value's entries is valid."""
        if self.mask is None or self.values is None:
            return None
        v, m = self.values, self.mask.bool()
        if m.ndim > v.ndim:
            return m.flatten(v.ndim).any(dim=-1)
        if tuple(m.shape) != tuple(v.shape[: m.ndim]):
            raise ValueError(f"mask of shape {tuple(m.shape)} does not fit values of shape {tuple(v.shape)}")
        return m


@dataclass
class LossDenominators:
    """What each aggregated term divides by; add them up over the micro-batches of a mini-batch."""

    policy: torch.Tensor
    value: torch.Tensor

    def __add__(self, other: LossDenominators) -> LossDenominators:
        return LossDenominators(self.policy + other.policy, self.value + other.value)


def loss_denominators(inputs: LossInputs, config: AlgorithmConfig) -> LossDenominators:
    """This micro-batch's counts under config.loss_agg_mode and config.logprob_granularity."""
    reduced, mask = reduce_logprobs(inputs.logprobs.detach(), inputs.mask, config.logprob_granularity)
    policy = aggregation_count(reduced, mask, config.loss_agg_mode)
    if inputs.values is None:
        return LossDenominators(policy, torch.zeros_like(policy))
    return LossDenominators(
        policy, aggregation_count(inputs.values.detach(), inputs.value_mask(), config.loss_agg_mode)
    )


def compute_loss(
    inputs: LossInputs, config: AlgorithmConfig, denominators: LossDenominators | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Total loss (scalar, with grad) and detached 0-d metrics: loss, pg_loss, approx_kl, clip_fraction_low,
    clip_fraction_high, dual_clip_fraction, ratio_mean, ratio_max, advantage_mean, and when their inputs
    are given entropy, kl_loss, value_loss, explained_variance, value_mean, return_mean, value_clip_fraction."""
    granularity, mode = config.logprob_granularity, config.loss_agg_mode
    logprobs, mask = reduce_logprobs(inputs.logprobs, inputs.mask, granularity)
    old_logprobs, _ = reduce_logprobs(inputs.old_logprobs, inputs.mask, granularity)
    advantages = align_to(inputs.advantages.to(logprobs.dtype), logprobs, "advantages")
    policy_denominator = None if denominators is None else denominators.policy
    total, metrics = loss_registry.get(config.loss)(
        logprobs, old_logprobs, advantages, mask, config, policy_denominator
    )
    metrics["advantage_mean"] = masked_mean(advantages.detach(), mask)
    if inputs.entropy is not None:
        entropy = aggregate_loss(
            reduce_logprobs(inputs.entropy, inputs.mask, granularity)[0], mask, mode, policy_denominator
        )
        total = total - config.entropy_coef * entropy
        metrics["entropy"] = entropy.detach()
    if config.kl_coef > 0 and inputs.ref_logprobs is None:
        raise ValueError(
            "kl_coef > 0 needs ref_logprobs (the reference policy's log-probs); set "
            "algorithm.kl_coef=0 or compute them"
        )
    if inputs.ref_logprobs is not None:
        ref, _ = reduce_logprobs(inputs.ref_logprobs.detach(), inputs.mask, granularity)
        ref = torch.where(mask, ref, logprobs.detach())  # masked entries: KL 0, no NaN from garbage
        kl = aggregate_loss(kl_penalty(logprobs, ref, config.kl_estimator), mask, mode, policy_denominator)
        if config.kl_coef > 0:
            total = total + config.kl_coef * kl
        metrics["kl_loss"] = kl.detach()
    if inputs.values is not None:
        vloss, vmetrics = value_loss(
            inputs.values,
            inputs.returns,
            inputs.value_mask(),
            old_values=inputs.old_values,
            loss_type=config.value_loss_type,
            value_clip=config.value_clip,
            huber_delta=config.huber_delta,
            loss_agg_mode=mode,
            denominator=None if denominators is None else denominators.value,
        )
        total = total + config.value_coef * vloss
        metrics.update(vmetrics)
    metrics["loss"] = total.detach()
    return total, metrics
