"""Advantage estimators, registered by name (`algorithm.advantage`), with one call shape for all of them.

    advantages, returns = compute_advantages(inputs, config)        # what the runtime calls
    advantages, returns = advantage_registry.get("gae")(inputs, config)

Every registered estimator is `fn(inputs: AdvantageInputs, config: AlgorithmConfig) -> (advantages, returns)`,
both shaped like `inputs.rewards`, 0 where `inputs.valid` is False.

Layout of `AdvantageInputs` (time first; T = chunk steps of the rollout, N = envs, C = steps per chunk):
- per chunk: rewards [T, N], values [T+1, N];
- per step inside chunks: rewards [T, N, C], values [T+1, N, C]. The C steps of chunk t come between chunk t
  and chunk t+1, so the time axis is flattened to T*C steps; the value after the last step of chunk t is
  values[t+1, :, 0], and only values[T, :, 0] of the last row is read.
- LLM: T = 1 (one response per "env") for outcome rewards [1, N]; or T = L tokens, rewards [L, N] with the
  score at the last token and terminations there, for token-level PPO with a critic.
terminations / truncations / valid / logprobs / ref_logprobs have the rewards' shape; final_values too, or
[T, N] with per-step rewards (one per chunk: an episode ends at most once per chunk). With per-step rewards
and a per-chunk critic (values [T+1, N]) use algorithm.reward_level=chunk.

Episode ends: a termination does not bootstrap; a truncation bootstraps with `final_values`, the value of the
observation the episode was cut in (`infos["final_observation"]`). After a done the next entry starts a new
episode (auto-reset). Invalid entries (valid=False: an env idle after its episode ended, steps after a done
inside a chunk, padding) must follow a done of the same env; they are ignored and get 0.

Groups (grpo, rloo, group baselines): `group_size` consecutive envs along N started from the same initial
state (`env.group_size`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from algorithms.config import AlgorithmConfig
from algorithms.masked import masked_whiten
from algorithms.registry import Registry

AdvantageFn = Callable[["AdvantageInputs", AlgorithmConfig], tuple[torch.Tensor, torch.Tensor]]

advantage_registry: Registry[AdvantageFn] = Registry("advantage estimator")


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register `fn(inputs: AdvantageInputs, config: AlgorithmConfig) -> (advantages, returns)`."""
    return advantage_registry.register(name)


@dataclass
class AdvantageInputs:
    """One rollout, time first. See the module docstring for the layouts.

    rewards:       float [T, N] (per chunk) or [T, N, C] (per step inside chunks).
    terminations:  bool, rewards' shape: the episode ended for good here (success/failure): no bootstrap.
    truncations:   bool, rewards' shape: the episode was cut here (time limit): bootstrap with final_values.
    values:        float [T+1, N] or [T+1, N, C]: critic values of each entry's observation plus the one after
                   the rollout; None for critic-free estimators.
    final_values:  float, rewards' shape: value of the final observation, read where truncated; None when the
                   rollout has no truncation or no critic.
    valid:         bool, rewards' shape: False where no env step happened; None: all valid.
    group_size:    envs per group of identical initial states (grpo, rloo, group baselines).
    logprobs:      float, rewards' shape: log-prob of the taken action under the sampling policy (summed over
                   action dims); reinforce_pp's KL-in-reward only.
    ref_logprobs:  float, rewards' shape: the same under the reference policy; reinforce_pp only.
    """

    rewards: torch.Tensor
    terminations: torch.Tensor
    truncations: torch.Tensor
    values: torch.Tensor | None = None
    final_values: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    group_size: int = 1
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.rewards.shape)
        if self.rewards.ndim not in (2, 3):
            raise ValueError(f"rewards must be [T, N] or [T, N, C]; got shape {shape}")
        if self.final_values is not None and self.rewards.ndim == 3 and self.final_values.ndim == 2:
            # one final value per chunk: an episode ends at most once per chunk, so it serves every step
            self.final_values = self.final_values.unsqueeze(-1).expand(shape)
        for name in ("terminations", "truncations", "final_values", "valid", "logprobs", "ref_logprobs"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but rewards have {shape}; they must match"
                )
        for name in ("terminations", "truncations", "valid"):
            t = getattr(self, name)
            if t is not None and t.dtype != torch.bool:
                setattr(self, name, t.bool())
        allowed = [(shape[0] + 1,) + shape[1:], (shape[0] + 1,) + shape[1:2]]
        if self.values is not None and tuple(self.values.shape) not in allowed:
            raise ValueError(
                f"values have shape {tuple(self.values.shape)}; with rewards {shape} they must be "
                f"{' or '.join(str(a) for a in dict.fromkeys(allowed))} (one more time row, for bootstrapping)"
            )
        if self.group_size < 1 or shape[1] % self.group_size:
            raise ValueError(f"N={shape[1]} envs cannot be split into groups of group_size={self.group_size}")

    @property
    def mask(self) -> torch.Tensor:
        """`valid`, or all True."""
        return self.valid if self.valid is not None else torch.ones_like(self.rewards, dtype=torch.bool)

    @property
    def dones(self) -> torch.Tensor:
        return self.terminations | self.truncations

    def to_chunk_level(self) -> AdvantageInputs:
        """Per-step inputs [T, N, C] as per-chunk inputs [T, N]: rewards summed over the chunk's valid steps, a
        chunk ends its episode if any of its steps did, the chunk's value is that of its first step, and the
        final value is the one at the step that truncated. Per-chunk inputs come back unchanged."""
        if self.rewards.ndim == 2:
            return self
        mask = self.mask
        term = (self.terminations & mask).any(-1)
        trunc = (self.truncations & mask).any(-1) & ~term
        final_values = None
        if self.final_values is not None:
            at_trunc = self.truncations & mask
            kept = torch.where(at_trunc, self.final_values, torch.zeros_like(self.final_values))
            final_values = kept.sum(-1)

        def chunk_sum(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.where(mask, x, torch.zeros_like(x)).sum(-1)

        return replace(
            self,
            rewards=chunk_sum(self.rewards),
            terminations=term,
            truncations=trunc,
            values=self.values if self.values is None or self.values.ndim == 2 else self.values[..., 0],
            final_values=final_values,
            valid=None if self.valid is None else mask.any(-1),
            logprobs=chunk_sum(self.logprobs),
            ref_logprobs=chunk_sum(self.ref_logprobs),
        )


def flatten_steps(x: torch.Tensor) -> torch.Tensor:
    """[T, N, C, ...] -> [T*C, N, ...] (chunk steps in time order); [T, N, ...] unchanged."""
    if x.ndim < 3:
        return x
    t, n, c = x.shape[:3]
    return x.transpose(1, 2).reshape((t * c, n) + tuple(x.shape[3:]))


def unflatten_steps(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `flatten_steps` for a tensor shaped like `like` ([T, N] or [T, N, C])."""
    if like.ndim < 3:
        return x
    t, n, c = like.shape[:3]
    return x.reshape((t, c, n) + tuple(x.shape[2:])).transpose(1, 2)


def flat_values(values: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """values [T+1, N] -> unchanged; [T+1, N, C] -> [T*C + 1, N] (the last row is values[T, :, 0])."""
    if values.ndim < rewards.ndim:
        raise ValueError(
            f"per-step rewards {tuple(rewards.shape)} need per-step values [T+1, N, C], got {tuple(values.shape)}; "
            "with a per-chunk critic set algorithm.reward_level=chunk"
        )
    if values.ndim < 3:
        return values
    return torch.cat([flatten_steps(values[:-1]), values[-1:, :, 0]], dim=0)


def check_invalid_follow_dones(inputs: AdvantageInputs) -> None:
    """Raise if an env has an invalid entry right after a valid one that did not end its episode: that would
    cut an episode without saying how (bootstrap or not)."""
    if inputs.valid is None:
        return
    valid, dones = flatten_steps(inputs.valid), flatten_steps(inputs.dones)
    bad = valid[:-1] & ~dones[:-1] & ~valid[1:]
    if bad.any():
        s, n = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"env {n} has an invalid entry at flattened step {s + 1} right after a valid step that neither "
            "terminated nor truncated; mark the last valid step of an episode as terminated or truncated"
        )


def bootstrap_values(inputs: AdvantageInputs, values: torch.Tensor | None) -> torch.Tensor:
    """Flattened [S, N] value of each entry's next observation: values[s+1], or final_values where truncated
    (0 there without final_values is refused), 0 where terminated or with no critic."""
    rewards = flatten_steps(inputs.rewards)
    term, trunc = flatten_steps(inputs.terminations), flatten_steps(inputs.truncations)
    valid = flatten_steps(inputs.mask)
    nxt = torch.zeros_like(rewards) if values is None else values[1:].to(rewards.dtype)
    needs_final = trunc & ~term & valid
    if needs_final.any():
        if inputs.final_values is None:
            if values is not None:
                raise ValueError(
                    "the rollout has truncated episodes but no final_values: pass the critic's value of "
                    "infos['final_observation'] as AdvantageInputs.final_values so they can be bootstrapped"
                )
        else:
            nxt = torch.where(trunc, flatten_steps(inputs.final_values).to(rewards.dtype), nxt)
    return torch.where(term, torch.zeros_like(nxt), nxt)


@register_advantage("gae")
def gae(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - term_t) - V(s_t), with V(s_{t+1}) the final observation's value
    where truncated; A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}; returns R_t = A_t + V(s_t).
    Uses config.gamma, gae_lambda, normalize_advantages. Needs `values`. Shapes: those of rewards.
    """
    if inputs.values is None:
        raise ValueError(
            "gae needs values from a critic; for critic-free training use advantage grpo, rloo, "
            "reinforce_pp or mc_return"
        )
    check_invalid_follow_dones(inputs)
    values = flat_values(inputs.values, inputs.rewards)
    rewards, dones = flatten_steps(inputs.rewards), flatten_steps(inputs.dones)
    valid = flatten_steps(inputs.mask)
    deltas = rewards + config.gamma * bootstrap_values(inputs, values) - values[:-1].to(rewards.dtype)
    carry = config.gamma * config.gae_lambda * (~dones).to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = deltas[t] + carry[t] * last
        advantages[t] = last
    returns = advantages + values[:-1].to(rewards.dtype)
    return _finish(advantages, returns, valid, inputs, config.normalize_advantages)


@register_advantage("mc_return")
def mc_return(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Discounted Monte-Carlo returns R_t = r_t + gamma * (1 - done_t) * R_{t+1} (Sutton & Barto, ch. 5).

    Truncated episodes bootstrap with final_values (required when `values` are given; without a critic and
    without final_values they end there); the rollout's last entry bootstraps with values[T] when given.
    Advantages: R_t - V(s_t) with a critic, R_t without (critic-free PPO); whitened when
    config.normalize_advantages. Shapes: those of rewards.
    """
    check_invalid_follow_dones(inputs)
    values = None if inputs.values is None else flat_values(inputs.values, inputs.rewards)
    rewards, dones = flatten_steps(inputs.rewards), flatten_steps(inputs.dones)
    valid = flatten_steps(inputs.mask)
    nxt = bootstrap_values(inputs, values)
    trunc = flatten_steps(inputs.truncations & ~inputs.terminations)
    returns = torch.zeros_like(rewards)
    # R after the rollout's last entry: values[T] (0 without a critic; replaced below if that entry ended)
    last = nxt[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = torch.where(dones[t], torch.where(trunc[t], nxt[t], torch.zeros_like(last)), last)
        last = rewards[t] + config.gamma * last
        returns[t] = last
    advantages = returns if values is None else returns - values[:-1].to(rewards.dtype)
    return _finish(advantages, returns, valid, inputs, config.normalize_advantages)


def _finish(
    advantages: torch.Tensor,
    returns: torch.Tensor,
    valid: torch.Tensor,
    inputs: AdvantageInputs,
    whiten: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero invalid entries, optionally whiten, and restore the rewards' layout."""
    zero = torch.zeros((), dtype=advantages.dtype, device=advantages.device)
    advantages = masked_whiten(advantages, valid) if whiten else torch.where(valid, advantages, zero)
    returns = torch.where(valid, returns, zero)
    return unflatten_steps(advantages, inputs.rewards), unflatten_steps(returns, inputs.rewards)


def compute_advantages(inputs: AdvantageInputs, config: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The configured estimator on `inputs`: what the runtime calls after a rollout.

    With config.reward_level == "chunk", per-step inputs [T, N, C] are first summed per chunk
    (`AdvantageInputs.to_chunk_level`), so the results are [T, N]; otherwise they have the rewards' shape.
    Returns (advantages, returns), 0 where invalid. Advantages carry no gradient.
    """
    if config.reward_level == "chunk":
        inputs = inputs.to_chunk_level()
    with torch.no_grad():
        return advantage_registry.get(config.advantage)(inputs, config)


# Estimators defined in other modules; imported on first use.
for _name in ("grpo", "rloo", "reinforce_pp"):
    advantage_registry.register_lazy(_name, "algorithms.group_advantages")
