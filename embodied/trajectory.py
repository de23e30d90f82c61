"""What flows between the workers: env step messages, rollout trajectories and training batches.

- `EnvStep`: one message from an env worker to a rollout worker per chunk step of one pipeline stage: the
  observation to act on, and the outcome of the previous chunk (rewards, episode ends, which steps ran, the
  final observation of ended episodes for bootstrapping).
- `Trajectory`: one rollout epoch of n consecutive envs, time first ([T, n, ...], values [T+1, n]), as
  ../shared/DESIGN.md defines it; `TrajectoryBuilder` fills one as the messages come in.
- `TrainBatch`: the trajectory flattened to B = T * n samples with advantages and returns: what the actor's
  update loop slices into mini- and micro-batches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from algorithms.advantages import AdvantageInputs, compute_advantages
from algorithms.config import AlgorithmConfig
from algorithms.dapo import shape_overlong_rewards
from algorithms.group_advantages import outcome_scores
from envs.base import Obs
from policies.base import PolicyOutput


def to_cpu(tree):
    """Tensors of a nested dict/list to the CPU (what crosses process boundaries)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


@dataclass
class EnvStep:
    """Env worker -> rollout worker, once per chunk step of one unit (an env worker's pipeline stage).

    obs:            the observation to act on (after auto-reset), n envs.
    rewards, terminations, truncations, valid: [n, C] outcome of the previous chunk; None in the first
                    message of a rollout epoch. `valid` marks the env steps that ran.
    final_obs:      the observations the ended episodes ended in, one row per True entry of `ended` (in
                    order), or None when no episode ended in this chunk.
    ended:          bool [n]: the envs whose episode ended (terminated or truncated) in this chunk.
    last:           no action is wanted: the epoch (or the evaluation) is over for this unit.
    """

    obs: Obs
    rewards: torch.Tensor | None = None
    terminations: torch.Tensor | None = None
    truncations: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    final_obs: Obs | None = None
    ended: torch.Tensor | None = None
    last: bool = False


@dataclass
class Trajectory:
    """One rollout epoch of envs [env_start, env_start + n), time first. C: steps per chunk.

    rewards, terminations, truncations, valid: [T, n, C]; logprobs (per token) and logprob_mask: [T, n, C, ...];
    values: [T+1, n] (or [T+1, n, C]) with the value after the last chunk, None for critic-free policies;
    final_values: [T, n], the critic's value of the observation an episode ended in (0 elsewhere);
    forward_inputs: [T, n, ...] each; version: the weight version that collected it.
    """

    rewards: torch.Tensor
    terminations: torch.Tensor
    truncations: torch.Tensor
    valid: torch.Tensor
    logprobs: torch.Tensor
    forward_inputs: dict[str, torch.Tensor]
    values: torch.Tensor | None = None
    final_values: torch.Tensor | None = None
    logprob_mask: torch.Tensor | None = None
    env_start: int = 0
    version: int = 0

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    def _map_envs(self, fn) -> Trajectory:
        """Apply `fn(tensor)` along the env axis (dim 1) of every tensor field."""
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = fn(value)
            elif isinstance(value, dict):
                value = {k: fn(v) for k, v in value.items()}
            fields[f.name] = value
        return Trajectory(**fields)

    def slice_envs(self, start: int, stop: int) -> Trajectory:
        """The envs with global indices [start, stop) (which must lie inside this trajectory)."""
        lo, hi = start - self.env_start, stop - self.env_start
        if lo < 0 or hi > self.num_envs or lo >= hi:
            raise ValueError(
                f"envs [{start}, {stop}) are not inside this trajectory's [{self.env_start}, "
                f"{self.env_start + self.num_envs})"
            )
        sliced = self._map_envs(lambda t: t[:, lo:hi])
        sliced.env_start = start
        return sliced

    def select_envs(self, index: torch.Tensor, env_start: int) -> Trajectory:
        """A copy of the envs at local positions `index` (int64 [k]), numbered from `env_start`: a compact piece
        (a sliced view would carry its whole storage through Ray's serialisation)."""
        selected = self._map_envs(lambda t: t.index_select(1, index))
        selected.env_start = env_start
        return selected

    def outcome_scores(self) -> torch.Tensor:
        """[n]: each env's sum of valid rewards, what dynamic sampling compares within a group."""
        return outcome_scores(self.rewards, self.valid)

    @staticmethod
    def concat(parts: list[Trajectory]) -> Trajectory:
        """Trajectories of adjacent env ranges (any order) as one, along the env axis."""
        parts = sorted(parts, key=lambda p: p.env_start)
        for a, b in zip(parts, parts[1:]):
            if a.env_start + a.num_envs != b.env_start:
                raise ValueError(
                    f"trajectory pieces are not adjacent: envs [{a.env_start}, {a.env_start + a.num_envs}) "
                    f"then [{b.env_start}, ...)"
                )
        first = parts[0]
        out = {}
        for f in dataclasses.fields(first):
            values = [getattr(p, f.name) for p in parts]
            if isinstance(values[0], torch.Tensor):
                out[f.name] = torch.cat(values, dim=1)
            elif isinstance(values[0], dict):
                out[f.name] = {k: torch.cat([v[k] for v in values], dim=1) for k in values[0]}
            else:
                out[f.name] = values[0]
        return Trajectory(**out)

    def advantage_inputs(self, group_size: int, ref_logprobs: torch.Tensor | None = None) -> AdvantageInputs:
        """The inputs of `algorithms.advantages.compute_advantages` for this rollout.

        `ref_logprobs` [T, n, C, ...] (per token, from a reference policy) turn on reinforce_pp's KL in the
        reward: both log-probs are summed over the action dims to the rewards' shape.
        """
        summed = None
        if ref_logprobs is not None:
            dims = tuple(range(3, self.logprobs.ndim))
            summed = (self.logprobs.sum(dims), ref_logprobs.sum(dims))
        return AdvantageInputs(
            rewards=self.rewards,
            terminations=self.terminations,
            truncations=self.truncations,
            values=self.values,
            final_values=self.final_values if self.values is not None else None,
            valid=self.valid,
            group_size=group_size,
            logprobs=None if summed is None else summed[0],
            ref_logprobs=None if summed is None else summed[1],
        )


class TrajectoryBuilder:
    """Collects one unit's rollout epoch: a policy output per chunk step, then the env's outcome of it."""

    def __init__(self, env_start: int, version: int) -> None:
        self.env_start, self.version = env_start, version
        self.outputs: list[PolicyOutput] = []
        self.outcomes: list[EnvStep] = []
        self.final_values: list[torch.Tensor] = []
        self.bootstrap: torch.Tensor | None = None

    def add_output(self, output: PolicyOutput) -> None:
        self.outputs.append(to_cpu(output))

    def add_outcome(self, step: EnvStep, final_values: torch.Tensor | None) -> None:
        """The env's result of the last chunk; `final_values` [n]: values of the ended episodes' final
        observations (0 elsewhere), None for critic-free policies."""
        self.outcomes.append(step)
        if final_values is not None:
            self.final_values.append(final_values.cpu())

    def add_bootstrap(self, values: torch.Tensor | None) -> None:
        self.bootstrap = None if values is None else values.cpu()

    def build(self) -> Trajectory:
        if len(self.outcomes) != len(self.outputs) or not self.outputs:
            raise RuntimeError(
                f"a trajectory needs one env outcome per policy output; got {len(self.outputs)} outputs and "
                f"{len(self.outcomes)} outcomes"
            )
        outs = self.outputs

        def stack(name: str) -> torch.Tensor:
            return torch.stack([getattr(o, name) for o in self.outcomes])

        values = None
        if outs[0].values is not None:
            values = torch.stack([o.values for o in outs] + [self.bootstrap])
        masks = [o.logprob_mask for o in outs]
        return Trajectory(
            rewards=stack("rewards"),
            terminations=stack("terminations"),
            truncations=stack("truncations"),
            valid=stack("valid"),
            logprobs=torch.stack([o.logprobs for o in outs]),
            forward_inputs={
                k: torch.stack([o.forward_inputs[k] for o in outs]) for k in outs[0].forward_inputs
            },
            values=values,
            final_values=torch.stack(self.final_values) if values is not None else None,
            logprob_mask=None if masks[0] is None else torch.stack(masks),
            env_start=self.env_start,
            version=self.version,
        )


@dataclass
class TrainBatch:
    """B training samples (one chunk step of one env each), flattened from [T, n].

    forward_inputs [B, ...]; old_logprobs [B, C, ...]; advantages [B] or [B, C]; mask [B, C] or the
    logprobs' shape; returns / old_values [B] (or [B, C]) or None without a critic; ref_logprobs like the
    logprobs, or None; version: the weight version that collected the samples (its trajectory's), which every
    mini- and micro-batch sliced from it keeps (-1: unknown).
    """

    forward_inputs: dict[str, torch.Tensor]
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    version: int = -1

    def __len__(self) -> int:
        return self.old_logprobs.shape[0]

    def select(self, index: torch.Tensor) -> TrainBatch:
        def pick(v):
            if isinstance(v, torch.Tensor):
                return v[index]
            if isinstance(v, dict):
                return {k: x[index] for k, x in v.items()}
            return v

        return TrainBatch(**{f.name: pick(getattr(self, f.name)) for f in dataclasses.fields(self)})


def build_train_batch(
    trajectory: Trajectory,
    algorithm: AlgorithmConfig,
    group_size: int,
    ref_logprobs: torch.Tensor | None = None,
    bootstrap_on_termination: bool = False,
) -> TrainBatch:
    """Advantages and returns of a trajectory (the configured estimator), flattened to training samples.

    `ref_logprobs` [T, n, C, ...]: the reference policy's log-probs of the taken actions (KL loss or
    reinforce_pp's KL in the reward), or None. `bootstrap_on_termination`: terminations count as
    truncations (bootstrapped from the final observation's value).
    """
    kl_in_reward = ref_logprobs is not None and algorithm.kl_in_reward_coef > 0
    inputs = trajectory.advantage_inputs(group_size, ref_logprobs if kl_in_reward else None)
    if bootstrap_on_termination:
        inputs.truncations = inputs.truncations | inputs.terminations
        inputs.terminations = torch.zeros_like(inputs.terminations)
    if algorithm.overlong_max_length is not None:
        inputs.rewards = overlong_shaped_rewards(trajectory, algorithm)
    advantages, returns = compute_advantages(inputs, algorithm)
    step_mask = trajectory.valid
    if trajectory.logprob_mask is not None:
        extra_dims = trajectory.logprob_mask.ndim - step_mask.ndim
        step_mask = step_mask.reshape(step_mask.shape + (1,) * extra_dims) & trajectory.logprob_mask

    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.flatten(0, 1)

    has_critic = trajectory.values is not None
    return TrainBatch(
        forward_inputs={k: flat(v) for k, v in trajectory.forward_inputs.items()},
        old_logprobs=flat(trajectory.logprobs),
        advantages=flat(advantages),
        mask=flat(step_mask),
        returns=flat(returns) if has_critic else None,
        old_values=flat(trajectory.values[:-1]) if has_critic else None,
        ref_logprobs=flat(ref_logprobs),
        version=trajectory.version,
    )


def tokens_per_step(trajectory: Trajectory) -> torch.Tensor:
    """[T, n, C]: the valid log-prob entries of each chunk step (a causal LM's response tokens)."""
    if trajectory.logprob_mask is None:
        raise ValueError(
            "token counts need a policy that marks its log-prob entries with a logprob_mask (causal_lm does)"
        )
    return trajectory.logprob_mask.flatten(3).sum(-1)


def overlong_shaped_rewards(trajectory: Trajectory, algorithm: AlgorithmConfig) -> torch.Tensor:
    """Rewards [T, n, C] plus DAPO's over-long penalty of each response's length (`algorithm.overlong_*`)."""
    lengths = tokens_per_step(trajectory)
    shaped = shape_overlong_rewards(trajectory.rewards, lengths, algorithm)
    return torch.where(trajectory.valid, shaped, trajectory.rewards)


def token_metrics(trajectory: Trajectory) -> dict[str, float]:
    """`rollout/response_length`: mean tokens per chunk step that ran (a causal LM's response length); {} for
    policies without a logprob_mask."""
    if trajectory.logprob_mask is None or not trajectory.valid.any():
        return {}
    return {"rollout/response_length": float(tokens_per_step(trajectory)[trajectory.valid].float().mean())}
