"""The measurements of auto placement's profiler that run inside the workers (through `Worker.run`): inference
time per batch size on a rollout worker, the real update step on the actor ranks, and each worker's memory.
`embodied.profiler` calls them on the profiling placement's workers (steps 2, 3 and 5 of its docstring)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

CALLS_PER_SIZE = 3
TRAINING_REPEATS = 3  # timed mini-batch steps per size and rank count, in turns (medians)


def latest_observations(worker) -> dict:
    """Env worker: the observation its first unit last returned."""
    return worker.obs[0]


def time_inference(worker, obs: dict, sizes: list[int]) -> dict[int, float]:
    """Rollout worker: median seconds of `predict` on `obs` tiled to each batch size."""
    from embodied.devices import resident
    from envs.base import select_obs

    rows = len(next(v for v in obs.values()))
    out = {}
    with torch.no_grad(), resident(worker.policy, worker.device, worker.offload_when_idle):
        for size in sizes:
            batch = select_obs(obs, np.arange(size) % rows)
            worker.policy.predict(batch, mode="train")
            seconds = []
            for _ in range(CALLS_PER_SIZE):
                start = time.perf_counter()
                worker.policy.predict(batch, mode="train")
                seconds.append(time.perf_counter() - start)
            out[size] = statistics.median(seconds)
    return out


def _minibatch_seconds(policy, optimizer, batch, worker, comm, size: int) -> float:
    """One `minibatch_step` (the real update step, target KL off) on `batch` tiled to `size` samples."""
    from embodied.training import minibatch_step

    minibatch = batch.select(torch.arange(size) % len(batch))
    start = time.perf_counter()
    minibatch_step(policy, optimizer, minibatch, worker.actor.replace(target_kl=None), worker.algorithm, comm)
    return time.perf_counter() - start


def _fit(seconds: dict[int, list[float]]) -> tuple[float, float]:
    """(seconds per sample, seconds per step) of t(m) = m x per-sample + per-step through two sizes' medians.
    The line always passes through the larger size (the run's own mini-batch), whose time the prediction
    uses; when noise makes the slope negative or steeper than proportional, the time is taken as
    proportional to the size."""
    (small, t_small), (large, t_large) = sorted((m, statistics.median(v)) for m, v in seconds.items())
    slope = (t_large - t_small) / max(large - small, 1)
    per_sample = min(max(slope, 0.0), t_large / large) if slope > 0 else t_large / large
    return per_sample, t_large - large * per_sample


def time_training(worker, sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """Actor ranks (all together): per-sample and per-step seconds at this world size and, with more than
    one rank, on a one-rank FSDP2 copy on rank 0, the two measured in turns (so that a change of load hits
    both); the copy's full-state gather, for the one-rank sync."""
    import torch.distributed as dist

    from embodied import fsdp
    from embodied.training import Collectives, build_optimizer
    from policies.base import make_policy

    worker._onload()
    world = worker.info.world_size
    runs = [(world, worker.policy, worker.optimizer, worker.comm)]
    if world > 1:
        group = dist.new_group([0])  # every rank takes part in creating it
        if worker.info.rank == 0:
            copy = make_policy(worker.policy_config, worker.env_spec).to(worker.device)
            a = worker.actor
            copy = fsdp.shard(copy, worker.info.device, a.precision, a.reshard_after_forward, group=group)
            runs.append((1, copy, build_optimizer(copy, a), Collectives()))
    seconds: dict[int, dict[int, list[float]]] = {r: {m: [] for m in sizes[r]} for r, *_ in runs}
    for repeat in range(TRAINING_REPEATS + 1):  # the first warms up
        for ranks, policy, optimizer, comm in runs:  # ranks > 0 skip the copy and wait in the next collective
            for size in sizes[ranks]:
                elapsed = _minibatch_seconds(policy, optimizer, worker.batch, worker, comm, size)
                if repeat:
                    seconds[ranks][size].append(elapsed)
    out: dict[str, Any] = {r: _fit(s) for r, s in seconds.items()}
    if len(runs) > 1:
        start = time.perf_counter()
        fsdp.full_state_dict(runs[1][1])
        out["gather_1"] = time.perf_counter() - start
    if world > 1:
        dist.barrier()
    return out


def memory_use(worker) -> dict[str, float]:
    """Any worker: resident bytes (with child processes), peak GPU bytes, and the bytes of its policy's
    weights and (actor) gradients and optimizer state on this rank."""
    import psutil

    process = psutil.Process()
    rss = process.memory_info().rss + sum(
        c.memory_info().rss for c in process.children(recursive=True) if c.is_running()
    )
    out = {"rss": float(rss), "gpu_peak": 0.0, "gpu_total": 0.0, "state": 0.0}
    if torch.cuda.is_available():
        out["gpu_peak"] = float(torch.cuda.max_memory_allocated())
        out["gpu_total"] = float(torch.cuda.get_device_properties(0).total_memory)

    def nbytes(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    policy = getattr(worker, "policy", None)
    if policy is not None:
        params = list(policy.parameters())
        out["state"] = float(sum(nbytes(p) for p in params))
        if getattr(worker, "optimizer", None) is not None:
            out["state"] += float(sum(nbytes(p) for p in params if p.requires_grad))  # gradients
            for state in worker.optimizer.state.values():
                out["state"] += float(sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor)))
    return out
