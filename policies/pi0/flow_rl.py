"""Likelihoods for a flow-matching policy: Flow-Noise and Flow-SDE (after pi_RL, Chen et al. 2025).

A flow policy samples actions by integrating a velocity field from noise (t = 1) to actions (t = 0) with K Euler
steps x_{k+1} = x_k + dt * v(x_k, t_k), dt = -1/K. The chain is deterministic given the initial noise, so the
actions have no tractable density. Two ways make every sampled chain have one:

- Flow-Noise: a learned noise head outputs a std sigma_k per element, and every step becomes a Gaussian
  transition x_{k+1} ~ N(x_k + dt * v_k, sigma_k^2). The log-probability of the chain is the joint density
  log N(x_0; 0, I) + sum_k log N(x_{k+1}; mu_k, sigma_k^2). (The initial-noise term has no parameters: it
  cancels in PPO ratios but belongs to the density and to the entropy.)
- Flow-SDE: the ODE dx = v dt is replaced by the reverse-time SDE with the same marginals p_t,
      dx = [v + g(t)^2 / (2 t) * (x + (1 - t) v)] dt + g(t) dW,
  which uses the score of x_t = t * noise + (1 - t) * a, score(x, t) = -(x + (1 - t) v) / t. Its Euler-Maruyama
  step is Gaussian with mean x + dt * [v + g^2 / (2t) * (x + (1 - t) v)] and std g * sqrt(|dt|), with
  g(t) = a * sqrt(t / (1 - t)) (Flow-GRPO's schedule; t is capped at 1 - |dt| inside g, where it diverges).
  During training rollouts one randomly chosen step is stochastic; its transition density is the log-prob.

Only the entries the env executes (the first C chunk steps, the first A action dims) are made stochastic; the
others follow the deterministic mean. The chain's density over the stochastic entries is then exact and
factorises per entry, so log-probs come per token [B, C, A].
"""

from __future__ import annotations

import math

import torch
from torch import nn

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def denoise_times(num_steps: int) -> tuple[torch.Tensor, float]:
    """Times t_k [K] float32 of the Euler schedule 1 -> 0 and the step dt = -1/K.

    The times accumulate t += dt in float32, exactly as LeRobot's and openpi's sampling loops do.
    """
    dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32)
    times, t = [], torch.tensor(1.0, dtype=torch.float32)
    for _ in range(num_steps):
        times.append(t.clone())
        t = t + dt
    return torch.stack(times), float(dt)


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - HALF_LOG_2PI


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy of N(., std^2)."""
    return HALF_LOG_2PI_E + torch.log(std)


def euler_mean(x: torch.Tensor, velocity: torch.Tensor, dt: float) -> torch.Tensor:
    """The deterministic ODE step x + dt * v."""
    return x + dt * velocity


def sde_transition(
    x: torch.Tensor, velocity: torch.Tensor, time: torch.Tensor, dt: float, noise_level: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [B, C, A] of one Euler-Maruyama step of the marginal-preserving reverse SDE.

    x, velocity: [B, C, A]; time: [B] (t_k of each row); dt < 0. See the module docstring.
    """
    t = time.to(x.dtype)[:, None, None]
    t_g = t.clamp(max=1.0 - abs(dt))
    g2 = noise_level**2 * t_g / (1.0 - t_g)
    mean = x + dt * (velocity + g2 / (2 * t) * (x + (1 - t) * velocity))
    std = torch.sqrt(g2 * abs(dt)).expand_as(mean)
    return mean, std


def stochastic_mask(chunk_size: int, action_dim: int, executed: int, env_action_dim: int) -> torch.Tensor:
    """bool [C_model, A_model]: the entries that get noise (executed chunk steps x the env's action dims)."""
    mask = torch.zeros(chunk_size, action_dim, dtype=torch.bool)
    mask[:executed, :env_action_dim] = True
    return mask


def noisy_step(
    mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """mean + std * N(0, 1) on the entries of `mask` [C, A]; the mean elsewhere."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.where(mask, std * eps, torch.zeros((), dtype=mean.dtype, device=mean.device))


def chain_token_logprob(
    chain: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, executed: int, env_action_dim: int
) -> torch.Tensor:
    """Flow-Noise: joint log-density of the chain per token [B, C, A].

    chain: [B, K + 1, C_model, A_model] (x_0 ... x_K); means, stds: [B, K, C_model, A_model] of the K
    transitions. Sums log N(x_0; 0, 1) and the K transition densities over the stochastic entries.
    """
    x = chain[:, :, :executed, :env_action_dim]
    m, s = means[:, :, :executed, :env_action_dim], stds[:, :, :executed, :env_action_dim]
    initial = -0.5 * x[:, 0] ** 2 - HALF_LOG_2PI
    return initial + gaussian_logprob(x[:, 1:], m, s).sum(dim=1)


def chain_token_entropy(stds: torch.Tensor, executed: int, env_action_dim: int) -> torch.Tensor:
    """Flow-Noise: entropy of the chain per token [B, C, A]: H(x_0) plus the sum of the transitions' entropies
    (each conditional Gaussian's entropy depends only on its std)."""
    s = stds[:, :, :executed, :env_action_dim]
    return HALF_LOG_2PI_E + gaussian_entropy(s).sum(dim=1)


class NoiseHead(nn.Module):
    """Flow-Noise: per-element std in [std_min, std_max] from the expert's action-token features.

    Zero-initialised, so every step starts at the middle of the range.
    """

    def __init__(self, width: int, action_dim: int, std_min: float, std_max: float) -> None:
        super().__init__()
        self.proj = nn.Linear(width, action_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.std_min, self.std_max = std_min, std_max

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, C, W] -> std [B, C, A] float32."""
        unit = torch.sigmoid(self.proj(features.float()))
        return self.std_min + (self.std_max - self.std_min) * unit


class ValueHead(nn.Module):
    """A two-layer MLP critic on pooled features; the last layer starts at zero."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, L, W], mask [B, L] bool (None: all valid) -> values [B] float32."""
        feats = features.float()
        if mask is None:
            pooled = feats.mean(dim=1)
        else:
            weights = mask.to(feats.dtype)[..., None]
            pooled = (feats * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.net(pooled).squeeze(-1)
