"""A Ray instance shared by the runtime tests of one session (starting Ray costs 3-8 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
