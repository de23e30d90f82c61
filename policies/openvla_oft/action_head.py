"""OpenVLA-OFT's continuous action head (`policy.action_head: l1`) and the Gaussian around it for RL.

OFT (Kim et al. 2025, "Fine-Tuning Vision-Language-Action Models") decodes an action chunk from the final hidden
states of the C x A action positions (the same window the discrete tokens are scored from): they are regrouped
per chunk step, [B, C*A, H] -> [B, C, A*H], and an MLP with residual blocks regresses the A normalised action
dims of each step; its fine-tuning minimises the L1 distance to the demonstrations. The modules below keep the
parameter names of OFT's `L1RegressionActionHead` (`model.layer_norm1`, `model.fc1`,
`model.mlp_resnet_blocks.<i>.ffn.{0,1}`, `model.layer_norm2`, `model.fc2`), so a released
`action_head--<step>_checkpoint.pt` loads as it is (without DDP's `module.` prefix):

    model.layer_norm1.{weight,bias}        [A*H]           (A = the action dims, H = the language model width)
    model.fc1.{weight,bias}                [W, A*H], [W]   (W = the MLP width, = H in OFT's checkpoints)
    model.mlp_resnet_blocks.<i>.ffn.0.*    [W]             (LayerNorm; i = 0, 1)
    model.mlp_resnet_blocks.<i>.ffn.1.*    [W, W], [W]     (Linear, then ReLU)
    model.layer_norm2.{weight,bias}        [W]
    model.fc2.{weight,bias}                [A, W], [A]

For RL the head's output is the mean of a diagonal Gaussian over the normalised actions, with a learned,
state-independent log standard deviation per chunk step and action dim (`ActionStd`, as the PPO baselines of
CleanRL and ManiSkill and this suite's `mlp`/`cnn` policies): `gaussian_log_prob` of the sampled normalised action
per (chunk step, action dim), which `algorithm.logprob_granularity` sums per action or per chunk for the ratio.
"""

from __future__ import annotations

import math

import torch
from torch import nn

RESNET_BLOCKS = 2  # OFT's L1RegressionActionHead


class MLPResNetBlock(nn.Module):
    """x + ReLU(Linear(LayerNorm(x))): a pre-norm feed-forward block ([..., W] -> [..., W])."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class MLPResNet(nn.Module):
    """LayerNorm -> Linear -> ReLU -> residual blocks -> LayerNorm -> Linear: [..., D] -> [..., out]."""

    def __init__(self, num_blocks: int, input_dim: int, width: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, width)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(MLPResNetBlock(width) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1RegressionActionHead(nn.Module):
    """Normalised actions [B, C, A] from the action window's hidden states [B, C*A, H]."""

    def __init__(self, hidden_size: int, width: int, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.model = MLPResNet(RESNET_BLOCKS, hidden_size * action_dim, width, action_dim)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        batch, tokens, hidden = window.shape
        if tokens % self.action_dim:
            raise ValueError(
                f"an action window of {tokens} positions is not whole chunk steps of {self.action_dim}"
            )
        per_step = window.reshape(batch, tokens // self.action_dim, self.action_dim * hidden)
        return self.model(per_step.to(self.model.fc1.weight.dtype))


class ActionStd(nn.Module):
    """The learned log standard deviation [C, A] of the Gaussian around the head's normalised actions."""

    def __init__(self, num_chunks: int, action_dim: int, init_log_std: float) -> None:
        super().__init__()
        self.log_std = nn.Parameter(torch.full((num_chunks, action_dim), float(init_log_std)))


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(actions | mean, exp(log_std)^2) per entry, in fp32.

    actions, mean: [B, C, A]; log_std: [C, A] (broadcast over B). Returns [B, C, A].
    """
    log_std = log_std.float()
    z = (actions.float() - mean.float()) * torch.exp(-log_std)
    return -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)


def gaussian_entropy(log_std: torch.Tensor, batch: int) -> torch.Tensor:
    """Entropy 0.5 * log(2 pi e sigma^2) per entry: [C, A] -> [batch, C, A] (a fresh tensor), in fp32."""
    per_entry = log_std.float() + 0.5 * math.log(2 * math.pi * math.e)
    return per_entry.expand(batch, *log_std.shape).clone()
