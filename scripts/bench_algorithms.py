"""Time the algorithms on rollout sizes of the embodied and LLM settings (CPU or CUDA).

    python scripts/bench_algorithms.py [--device cpu|cuda] [--threads 2] [--repeats 5]

Prints one line per case: the median wall time of `repeats` runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from algorithms.advantages import AdvantageInputs, compute_advantages
from algorithms.config import AlgorithmConfig
from algorithms.group_advantages import first_episode_mask
from algorithms.objective import LossInputs, compute_loss


def median_ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def rollout(steps: int, envs: int, chunk: int, device: str) -> AdvantageInputs:
    shape = (steps, envs, chunk)
    term = torch.rand(shape, device=device) < 0.01
    trunc = torch.zeros(shape, dtype=torch.bool, device=device)
    trunc[-1] = True
    return AdvantageInputs(
        rewards=torch.rand(shape, device=device),
        terminations=term,
        truncations=trunc & ~term,
        values=torch.randn((steps + 1, envs, chunk), device=device),
        final_values=torch.randn(shape, device=device),
        group_size=8,
    )


def loss_case(batch: int, chunk: int, dims: int, device: str) -> Callable[[], object]:
    lp = torch.randn(batch, chunk, dims, device=device, requires_grad=True)
    values = torch.randn(batch, device=device, requires_grad=True)
    inputs = LossInputs(
        logprobs=lp,
        old_logprobs=lp.detach() + 0.05,
        advantages=torch.randn(batch, device=device),
        mask=torch.rand(batch, chunk, device=device) < 0.95,
        entropy=lp.detach().abs(),
        ref_logprobs=lp.detach() - 0.05,
        values=values,
        old_values=values.detach(),
        returns=torch.randn(batch, device=device),
    )
    config = AlgorithmConfig(kl_coef=0.01, entropy_coef=0.01, clip_ratio_c=3.0)

    def run() -> None:
        loss, _ = compute_loss(inputs, config)
        loss.backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev, reps = args.device, args.repeats
    big = rollout(80, 256, 5, dev)  # 80 chunks x 256 envs x 5 steps (ManiSkill-sized PPO rollout)
    one_episode = replace(big, valid=first_episode_mask(big.dones))  # grpo: one episode per env
    cases = {
        "gae per step   T=80 N=256 C=5 (400 steps)": lambda: compute_advantages(
            big, AlgorithmConfig(reward_level="step")
        ),
        "gae per chunk  T=80 N=256 C=5": lambda: compute_advantages(
            big, AlgorithmConfig(reward_level="chunk")
        ),
        "grpo per step  T=80 N=256 C=5 (groups of 8)": lambda: compute_advantages(
            one_episode, AlgorithmConfig(advantage="grpo", reward_level="step")
        ),
        "ppo loss fwd+bwd B=4096 C=5 A=7 (token)": loss_case(4096, 5, 7, dev),
    }
    for name, fn in cases.items():
        print(f"{name:48s} {median_ms(fn, reps, dev):8.2f} ms  ({dev}, {args.threads} threads)")


if __name__ == "__main__":
    main()
