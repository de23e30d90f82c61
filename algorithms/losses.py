"""Policy losses (registered by name, `algorithm.loss`) and the value loss.

The runtime calls `algorithms.objective.compute_loss`, which reduces log-probs to the configured granularity
and adds these terms up. The pieces, usable on their own (tensors batch-first; `mask` bool with a shape that
is a prefix of the data's, or None; each returns `(loss, metrics)`, metrics a dict of detached 0-d tensors):

    ppo_actor_loss(logprobs, old_logprobs, advantages, mask, *, clip_ratio_low, clip_ratio_high,
                   clip_ratio_c=None, loss_agg_mode="token-mean", denominator=None)
    pg_actor_loss(logprobs, old_logprobs, advantages, mask, *, loss_agg_mode="token-mean", denominator=None)
    value_loss(values, returns, mask, *, old_values=None, loss_type="plain", value_clip=0.2, huber_delta=1.0,
               loss_agg_mode="token-mean", denominator=None)

A registered policy loss is `fn(logprobs, old_logprobs, advantages, mask, config, denominator) ->
(loss, metrics)` on tensors already reduced to the configured granularity, `advantages` broadcast to their
shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from algorithms.config import AlgorithmConfig, ValueLossType
from algorithms.masked import (
    LossAggMode,
    aggregate_loss,
    expand_mask,
    explained_variance,
    masked_mean,
)
from algorithms.registry import Registry

Metrics = dict[str, torch.Tensor]
PolicyLossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AlgorithmConfig, "float | torch.Tensor | None"],
    tuple[torch.Tensor, Metrics],
]

loss_registry: Registry[PolicyLossFn] = Registry("policy loss function")
_MAX_LOG_RATIO = 20.0


def register_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register `fn(logprobs, old_logprobs, advantages, mask, config, denominator) -> (loss, metrics)`."""
    return loss_registry.register(name)


def _importance_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ratio, log_ratio), with masked entries set to ratio 1 before exp so their garbage cannot reach the
    gradient, and log-ratios clamped to +-20 (far beyond any clip range)."""
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(log_ratio), log_ratio


def _ratio_metrics(ratio: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor) -> Metrics:
    ratio, log_ratio = ratio.detach(), log_ratio.detach()
    valid_ratios = torch.where(mask, ratio, torch.zeros_like(ratio))  # ratios are > 0, so 0 never wins
    return {
        # KL(old || new) estimated from samples of the old policy with k3 (always >= 0)
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": valid_ratios.max() if ratio.numel() else valid_ratios.sum(),
    }


def ppo_actor_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None = None,
    loss_agg_mode: LossAggMode = "token-mean",
    denominator: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv:1707.06347) with DAPO's decoupled clip range
    (Yu et al. 2025, arXiv:2503.14476) and dual clip (Ye et al. 2020, arXiv:1912.09729).

    r = exp(logprobs - old_logprobs);  l = max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high));
    where A < 0 and clip_ratio_c is set: l = min(l, -A clip_ratio_c).

    Args: logprobs (with grad), old_logprobs, advantages: the same shape [B, ...]; mask: bool, a prefix of it.
    Returns: aggregated loss; metrics pg_loss, approx_kl, ratio_mean, ratio_max, clip_fraction_low (share of
    valid entries with A < 0 and r < 1 - low: gradient clipped), clip_fraction_high (A > 0 and r > 1 + high),
    dual_clip_fraction (A < 0 and the dual clip bound active).
    """
    mask = expand_mask(mask, logprobs)
    advantages = advantages.detach()
    ratio, log_ratio = _importance_ratio(logprobs, old_logprobs, mask)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    per_entry = torch.maximum(unclipped, clipped)
    negative = advantages < 0
    dual_active = torch.zeros_like(mask)
    if clip_ratio_c is not None:
        dual_bound = -advantages * clip_ratio_c
        dual_active = negative & (dual_bound < per_entry)
        per_entry = torch.where(dual_active, dual_bound, per_entry)
    loss = aggregate_loss(per_entry, mask, loss_agg_mode, denominator)
    r = ratio.detach()
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics.update(
        pg_loss=loss.detach(),
        clip_fraction_low=masked_mean((negative & (r < 1.0 - clip_ratio_low)).float(), mask),
        clip_fraction_high=masked_mean(((advantages > 0) & (r > 1.0 + clip_ratio_high)).float(), mask),
        dual_clip_fraction=masked_mean(dual_active.float(), mask),
    )
    return loss, metrics


def pg_actor_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    loss_agg_mode: LossAggMode = "token-mean",
    denominator: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Unclipped importance-weighted policy gradient, l = -A r (Williams 1992 REINFORCE; on-policy, r = 1 and
    the gradient is -A grad log pi). Same arguments and metrics as `ppo_actor_loss` (clip fractions are 0)."""
    mask = expand_mask(mask, logprobs)
    ratio, log_ratio = _importance_ratio(logprobs, old_logprobs, mask)
    loss = aggregate_loss(-advantages.detach() * ratio, mask, loss_agg_mode, denominator)
    zero = torch.zeros((), device=logprobs.device)
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    metrics.update(
        pg_loss=loss.detach(), clip_fraction_low=zero, clip_fraction_high=zero, dual_clip_fraction=zero
    )
    return loss, metrics


@register_loss("ppo")
def _ppo(logprobs, old_logprobs, advantages, mask, config: AlgorithmConfig, denominator=None):
    return ppo_actor_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_ratio_low=config.clip_ratio_low,
        clip_ratio_high=config.clip_ratio_high,
        clip_ratio_c=config.clip_ratio_c,
        loss_agg_mode=config.loss_agg_mode,
        denominator=denominator,
    )


@register_loss("pg")
def _pg(logprobs, old_logprobs, advantages, mask, config: AlgorithmConfig, denominator=None):
    return pg_actor_loss(
        logprobs, old_logprobs, advantages, mask, loss_agg_mode=config.loss_agg_mode, denominator=denominator
    )


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    old_values: torch.Tensor | None = None,
    loss_type: ValueLossType = "plain",
    value_clip: float = 0.2,
    huber_delta: float = 1.0,
    loss_agg_mode: LossAggMode = "token-mean",
    denominator: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Critic loss on values [B] / [B, C] / [B, L] (with grad) against returns of the same shape.

    plain:   (V - R)^2 / 2
    clipped: max((V - R)^2, (V_old + clip(V - V_old, -value_clip, value_clip) - R)^2) / 2   (needs old_values;
             the PPO2 baselines variant, Engstrom et al. 2020 arXiv:2005.12729 discuss it)
    huber:   (V - R)^2 / 2 where |V - R| <= huber_delta, else huber_delta * (|V - R| - huber_delta / 2)

    Metrics: value_loss, explained_variance (of R by V), value_mean, return_mean, value_clip_fraction (clipped:
    share of entries where the clipped term is the larger one; else 0).
    """
    mask = expand_mask(mask, values)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    returns = torch.where(mask, returns.detach().to(values.dtype), zero)
    v = torch.where(mask, values, returns)  # masked entries: error 0 in value and gradient
    clip_fraction = torch.zeros((), device=values.device)
    if loss_type == "plain":
        per_entry = 0.5 * (v - returns).square()
    elif loss_type == "huber":
        per_entry = F.huber_loss(v, returns, reduction="none", delta=huber_delta)
    elif loss_type == "clipped":
        if old_values is None:
            raise ValueError("value_loss_type=clipped needs old_values (the critic's values at rollout time)")
        old = torch.where(mask, old_values.detach().to(values.dtype), returns)
        v_clipped = old + (v - old).clamp(-value_clip, value_clip)
        unclipped_sq, clipped_sq = (v - returns).square(), (v_clipped - returns).square()
        per_entry = 0.5 * torch.maximum(unclipped_sq, clipped_sq)
        clip_fraction = masked_mean((clipped_sq > unclipped_sq).float(), mask)
    else:
        raise ValueError(f"unknown value_loss_type {loss_type!r}; choose one of plain, clipped, huber")
    loss = aggregate_loss(torch.where(mask, per_entry, zero), mask, loss_agg_mode, denominator)
    detached = values.detach()
    metrics = {
        "value_loss": loss.detach(),
        "explained_variance": explained_variance(detached, returns, mask),
        "value_mean": masked_mean(detached, mask),
        "return_mean": masked_mean(returns, mask),
        "value_clip_fraction": clip_fraction,
    }
    return loss, metrics
