"""The distribution over action bins that OpenVLA and OpenVLA-OFT sample from and score.

Rollouts and training must use the same distribution, so `predict` and `evaluate` both go through
`action_log_probs`: logits restricted to the action tokens, divided by the temperature, then limited to the
top-k bins. Bins outside the top-k get the finite logit `MASKED_LOGIT` rather than -inf, so that a stored token
that has left the top-k under newer weights scores about -1e4 (a PPO ratio of 0) with finite gradients and
entropy, instead of NaN.
"""

from __future__ import annotations

import torch

MASKED_LOGIT = -1.0e4


def action_log_probs(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """Log-probabilities [..., n_bins] (float32) of the sampling distribution for action logits [..., n_bins]."""
    x = logits.float() / temperature
    if 0 < top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, MASKED_LOGIT)
    return x.log_softmax(dim=-1)


def sample_bins(log_probs: torch.Tensor, greedy: bool) -> torch.Tensor:
    """One bin per row of `log_probs` [..., n_bins]: the most likely one, or a draw from the global RNG."""
    if greedy:
        return log_probs.argmax(dim=-1)
    flat = log_probs.reshape(-1, log_probs.shape[-1]).exp()
    return torch.multinomial(flat, num_samples=1).reshape(log_probs.shape[:-1])


def gather_log_probs(log_probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """log p(bins) [...] from `log_probs` [..., n_bins] and bin indices [...]."""
    return log_probs.gather(-1, bins.long().unsqueeze(-1)).squeeze(-1)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy [...] of the distributions `log_probs` [..., n_bins]."""
    return -(log_probs.exp() * log_probs).sum(dim=-1)
