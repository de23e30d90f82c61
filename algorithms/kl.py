"""KL estimators between the current policy and a reference policy (`algorithm.kl_estimator`).

For a sample x drawn from the current policy pi, with log_ratio = log pi(x) - log pi_ref(x)
(Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html):

- k1 = log_ratio                                   unbiased for KL(pi || pi_ref), high variance, can be < 0
- k2 = log_ratio**2 / 2                            biased, low variance, always >= 0
- k3 = exp(-log_ratio) - 1 + log_ratio             unbiased, low variance, always >= 0

All are elementwise: any shape in, the same shape out. k3's exponent is clamped to [-20, 20] so a
far-off reference gives a large finite penalty instead of inf.
"""

from __future__ import annotations

import torch

from algorithms.config import KlEstimator

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
_MAX_LOG_RATIO = 20.0


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KlEstimator) -> torch.Tensor:
    """Per-entry estimate of KL(pi || pi_ref) from log-probs of samples of pi (both the same shape)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        neg = (-log_ratio).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown kl_estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")
