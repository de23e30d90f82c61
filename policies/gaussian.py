"""Small Gaussian policies with a value head: an MLP for state observations (`mlp`) and a CNN for images (`cnn`).

Both output a diagonal Gaussian over an action chunk of C steps (C = `action_chunk`, 1 by default) with a
state-independent learned log-std, as in the PPO baselines of CleanRL and ManiSkill. `predict` samples
(train) or takes the mean (eval); the sample is clipped to the env's action bounds for the env, while its
log-probability is that of the unclipped sample, which `forward_inputs["actions"]` keeps for `evaluate`.

- `mlp`: states -> MLP -> action mean; a separate MLP critic (`value_head`) of the same shape.
- `normalize_states` (both): the states are standardised, (s - mean) / std clipped to +-10, with a mean and std
  held as buffers of the model (so they travel with its weights to the rollout workers, into checkpoints and
  into an RL run that starts from one). They are the identity until supervised fine-tuning sets them from its
  training demos (`fit_state_normalization`); RL never changes them.
- `cnn`: main_images (and wrist_images when the env has them, stacked as channels) -> a NatureCNN-style encoder
  whose width is `channels`; states -> a linear encoder; the concatenated features feed an action head and
  the critic (`value_head`). Images travel as uint8 in `forward_inputs` (4x smaller than float).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from algorithms.schema import ConfigError, param
from envs.base import EnvSpec, Obs
from policies.base import EvaluateOutput, Policy, PolicyConfig, PolicyOutput, register_policy
from policies.supervised import action_mse

Activation = Literal["tanh", "relu"]
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
# standardised states: a dim the demos hardly vary is divided by at least this (not blown up when RL moves it),
# and every standardised value is clipped to +-STATE_CLIP
MIN_STATE_STD = 1e-2
STATE_CLIP = 10.0


@dataclass(frozen=True)
class MLPPolicyConfig(PolicyConfig):
    """Gaussian MLP policy for state observations, with a separate MLP critic."""

    name: str = param("mlp", help="registered policy name")
    hidden_sizes: tuple[int, ...] = param(
        (256, 256, 256), help="widths of the hidden layers (actor and critic)"
    )
    activation: Activation = param("tanh", help="hidden activation: tanh | relu")
    init_log_std: float = param(-0.5, help="initial log standard deviation of the actions", ge=-5.0, le=2.0)
    action_chunk: int = param(1, help="actions per prediction (C); the env executes them as one chunk", ge=1)
    normalize_states: bool = param(
        False,
        help="standardise the states with the mean/std of the SFT demos (saved with the weights; identity "
        "without SFT); the RL config that loads such a checkpoint must set it too",
    )

    def check(self) -> None:
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(f"{{section}}hidden_sizes={list(self.hidden_sizes)} must be positive widths")


@dataclass(frozen=True)
class CNNPolicyConfig(PolicyConfig):
    """Gaussian CNN policy for image observations (plus proprioceptive states), with a value head."""

    name: str = param("cnn", help="registered policy name")
    channels: tuple[int, int, int] = param(
        (32, 64, 64), help="channels of the three conv layers (8x8/4, 4x4/2, 3x3/1); sets the model's width"
    )
    feature_dim: int = param(256, help="width of the image and state features", ge=1)
    head_hidden: int = param(512, help="hidden width of the action and value heads", ge=1)
    use_states: bool = param(True, help="feed the states vector next to the images")
    init_log_std: float = param(-0.5, help="initial log standard deviation of the actions", ge=-5.0, le=2.0)
    action_chunk: int = param(1, help="actions per prediction (C); the env executes them as one chunk", ge=1)
    normalize_states: bool = param(
        False,
        help="standardise the states with the mean/std of the SFT demos (saved with the weights; identity "
        "without SFT); the RL config that loads such a checkpoint must set it too",
    )

    def check(self) -> None:
        if min(self.channels) < 1:
            raise ConfigError(f"{{section}}channels={list(self.channels)} must be positive")


def mlp(sizes: list[int], activation: Activation, out_gain: float) -> nn.Sequential:
    """Linear layers with `activation` between them; orthogonal init, the last layer scaled by `out_gain`."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layer = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(layer.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(layer.bias)
        layers.append(layer)
        if not last:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianPolicy(Policy):
    """What both policies share: the Gaussian head, action bounds, predict and evaluate.

    Subclasses define `features(inputs) -> [B, F]`, `action_mean` and `value_head` modules over those
    features, and `model_inputs(obs) -> dict` (the tensors `features` reads, as stored in forward_inputs).
    """

    def _init_gaussian(self, env_spec: EnvSpec, action_chunk: int, init_log_std: float) -> None:
        self.chunk, self.action_dim = action_chunk, env_spec.action_dim
        self.log_std = nn.Parameter(torch.full((action_chunk, env_spec.action_dim), float(init_log_std)))
        self.register_buffer("action_low", torch.tensor(env_spec.action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.tensor(env_spec.action_high, dtype=torch.float32))
        if self.config.normalize_states:  # the identity until fit_state_normalization
            self.register_buffer("state_mean", torch.zeros(env_spec.state_dim))
            self.register_buffer("state_std", torch.ones(env_spec.state_dim))

    def normalized_states(self, states: torch.Tensor) -> torch.Tensor:
        """The states as the networks read them: float32, standardised when `normalize_states` is on."""
        states = states.to(torch.float32)
        if not self.config.normalize_states:
            return states
        return ((states - self.state_mean) / self.state_std).clamp(-STATE_CLIP, STATE_CLIP)

    @torch.no_grad()
    def fit_state_normalization(self, states: torch.Tensor) -> bool:
        """Set the standardisation to the mean and std (at least MIN_STATE_STD) of `states` [N, D], the
        training frames of the demos; False (nothing done) when `normalize_states` is off."""
        if not self.config.normalize_states:
            return False
        states = states.to(torch.float64)
        self.state_mean.copy_(states.mean(0).to(self.state_mean))
        self.state_std.copy_(states.std(0, unbiased=False).clamp_min(MIN_STATE_STD).to(self.state_std))
        return True

    @property
    def device(self) -> torch.device:
        return self.log_std.device

    @abc.abstractmethod
    def model_inputs(self, obs: Obs) -> dict[str, torch.Tensor]:
        """The tensors `features` reads, on the policy's device; stored as forward_inputs."""

    @abc.abstractmethod
    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, F] features that the action mean and the value head read."""

    def _distribution(self, features: torch.Tensor) -> torch.distributions.Normal:
        # fp32 even under bf16 mixed precision: PPO's ratio exp(logp - logp_old) needs the precision
        mean = self.action_mean(features).float().view(-1, self.chunk, self.action_dim)
        return torch.distributions.Normal(mean, self.log_std.float().exp().expand_as(mean))

    @torch.no_grad()
    def predict(self, obs: Obs, mode: str = "train") -> PolicyOutput:
        inputs = self.model_inputs(obs)
        features = self.features(inputs)
        dist = self._distribution(features)
        raw = dist.mean if mode == "eval" else dist.sample()
        actions = torch.maximum(torch.minimum(raw, self.action_high), self.action_low)
        return PolicyOutput(
            actions=actions,
            logprobs=dist.log_prob(raw),
            values=self.value_head(features).squeeze(-1),
            forward_inputs={**inputs, "actions": raw},
        )

    def evaluate(self, forward_inputs: dict[str, torch.Tensor]) -> EvaluateOutput:
        inputs = {k: v.to(self.device) for k, v in forward_inputs.items()}
        features = self.features(inputs)
        dist = self._distribution(features)
        return EvaluateOutput(
            logprobs=dist.log_prob(inputs["actions"].float()),
            entropy=dist.entropy(),
            # a fresh fp32 tensor, not a view: FSDP2 hooks the outputs for backward
            values=self.value_head(features)[:, 0].float().clone(),
        )

    @property
    def action_horizon(self) -> int:
        return self.chunk

    def supervised_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Behaviour cloning: squared error of the action mean (the eval-mode action) against the demo action.

        Not the Gaussian's negative log-likelihood: its gradient on the mean is the same up to 1/sigma^2, but it
        would also fit log_std to the demos' residual, which for a planner's near-deterministic demos collapses
        the exploration noise PPO starts from. Here log_std keeps `policy.init_log_std`, the RL noise level.
        """
        mean = self._distribution(self.features(self.model_inputs(batch))).mean
        target = batch["actions"].to(mean.device)
        return action_mse(mean, target, batch["action_mask"].to(mean.device)), {}


@register_policy("mlp")
class MLPPolicy(GaussianPolicy):
    config_class = MLPPolicyConfig

    def __init__(self, config: MLPPolicyConfig, env_spec: EnvSpec) -> None:
        super().__init__(config, env_spec)
        sizes = [env_spec.state_dim, *config.hidden_sizes]
        out = config.action_chunk * env_spec.action_dim
        # the actor and the critic are separate networks (`features` is the identity on the states)
        self.action_mean = mlp([*sizes, out], config.activation, out_gain=0.01 * math.sqrt(2))
        self.value_head = mlp([*sizes, 1], config.activation, out_gain=1.0)
        self._init_gaussian(env_spec, config.action_chunk, config.init_log_std)

    def model_inputs(self, obs: Obs) -> dict[str, torch.Tensor]:
        return {"states": obs["states"].to(self.device, torch.float32)}

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.normalized_states(inputs["states"])


class ImageEncoder(nn.Module):
    """NatureCNN-style conv stack over uint8 NHWC images -> [B, feature_dim]."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], channels: tuple[int, ...], out: int):
        super().__init__()
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c1, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_channels, *image_size)).shape[1]
        self.project = nn.Sequential(nn.Linear(flat, out), nn.ReLU())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return self.project(self.convs(x))


@register_policy("cnn")
class CNNPolicy(GaussianPolicy):
    config_class = CNNPolicyConfig

    def __init__(self, config: CNNPolicyConfig, env_spec: EnvSpec) -> None:
        super().__init__(config, env_spec)
        if env_spec.image_size is None:
            raise ValueError(
                "the cnn policy needs image observations; use an image obs mode (e.g. env.obs_mode=rgb) or "
                "the mlp policy for states"
            )
        self.use_wrist = env_spec.has_wrist_image
        in_channels = 6 if self.use_wrist else 3
        self.image_encoder = ImageEncoder(
            in_channels, env_spec.image_size, config.channels, config.feature_dim
        )
        width = config.feature_dim
        if config.use_states:
            self.state_encoder = nn.Sequential(nn.Linear(env_spec.state_dim, config.feature_dim), nn.ReLU())
            width += config.feature_dim
        out = config.action_chunk * env_spec.action_dim
        self.action_mean = mlp([width, config.head_hidden, out], "relu", out_gain=0.01 * math.sqrt(2))
        self.value_head = mlp([width, config.head_hidden, 1], "relu", out_gain=1.0)
        self._init_gaussian(env_spec, config.action_chunk, config.init_log_std)

    def model_inputs(self, obs: Obs) -> dict[str, torch.Tensor]:
        images = obs["main_images"]
        if self.use_wrist:
            images = torch.cat([images, obs["wrist_images"]], dim=-1)
        inputs = {"images": images.to(self.device)}
        if self.config.use_states:
            inputs["states"] = obs["states"].to(self.device, torch.float32)
        return inputs

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.image_encoder(inputs["images"])]
        if self.config.use_states:
            parts.append(self.state_encoder(self.normalized_states(inputs["states"])))
        return torch.cat(parts, dim=-1)
