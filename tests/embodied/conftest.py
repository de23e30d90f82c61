"""Helpers of the runtime tests: a Ray instance per test module (starting Ray costs 3-8 s), the tiny training
run that tests kill, interrupt and resume, and a process check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A tiny default-config (PushCube) training that checkpoints every iteration: the runs that tests kill,
# interrupt and resume.
TINY_RUN = [
    "env.num_envs=4",
    "rollout.num_steps=8",
    "actor.num_minibatches=2",
    "actor.update_epochs=1",
    "eval.every_n_iterations=0",
    "eval.at_end=false",
    "logger.wandb.mode=disabled",
    "checkpoint.every_n_iterations=1",
    "checkpoint.keep=2",
    "cluster.startup_timeout_s=300",
]
STEPS_PER_ITERATION = 4 * 8  # env.num_envs x rollout.num_steps


@pytest.fixture(scope="module")
def ray_cluster():
    """An in-process Ray with 2 CPUs for one test module (shut down after it, so that later modules start from a
    process without Ray); `embodied.cluster.Cluster` joins it instead of starting its own."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def pids_alive(pids) -> list[int]:
    """The pids in `pids` that still run (zombies waiting for their parent count as gone)."""
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive
