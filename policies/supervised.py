"""Supervised (behaviour-cloning) losses of the policies, as pure functions over tensors.

A supervised batch is an observation batch (the env's contract: `states`, `main_images`, `task_descriptions`,
...) plus the demonstrated actions of the C steps the policy predicts from it:

    actions      float32 [B, C, A]  env units, frames t .. t + C - 1 of one episode
    action_mask  bool    [B, C]     False past the episode's end (those actions repeat the last one, as
                                    LeRobot pads them, and get no loss)

Each policy turns the batch into its own model inputs and targets (`Policy.supervised_loss`), with the same
processing and action normalisation as at rollout, and reduces with one of these:
- `action_mse`: Gaussian MLP/CNN policies, squared error of the action mean (the deterministic action);
- `token_cross_entropy`: OpenVLA and OpenVLA-OFT, cross-entropy of the demo's action tokens;
- `action_l1`: OpenVLA-OFT with `action_head: l1`, OFT's L1 regression of the normalised actions;
- pi0: `Pi0FlowModel.flow_matching_loss` (openpi's `compute_loss`, checked against openpi's outputs) reduced
  with `masked_mean` over the valid steps.
Every loss is a mean over the valid entries, so the padded steps of short episodes count for nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from algorithms.masked import masked_mean

__all__ = ["SupervisedBatch", "action_l1", "action_mse", "masked_mean", "token_cross_entropy"]

SupervisedBatch = dict[str, Any]  # an observation batch plus "actions" [B, C, A] and "action_mask" [B, C]


def action_mse(mean: torch.Tensor, target: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps and action dims of (mean - target)^2.

    mean, target: [B, C, A]; action_mask: [B, C] bool.
    """
    return masked_mean((mean.float() - target.float()) ** 2, action_mask)


def action_l1(mean: torch.Tensor, target: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps and action dims of |mean - target| (OFT's L1 regression loss).

    mean, target: [B, C, A]; action_mask: [B, C] bool.
    """
    return masked_mean((mean.float() - target.float()).abs(), action_mask)


def token_cross_entropy(
    log_probs: torch.Tensor, targets: torch.Tensor, action_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over valid steps and action dims of -log p(target token).

    log_probs: [B, C, A, K] over the K action tokens; targets: [B, C, A] int64 in [0, K); action_mask: [B, C].
    """
    picked = log_probs.float().gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return masked_mean(-picked, action_mask)
