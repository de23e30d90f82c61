"""A driver killed with SIGKILL leaves no process behind: its in-process Ray's agents, which Ray itself lets
linger for a minute or more, are killed by embodied.reaper's watcher within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest
from conftest import REPO, pids_alive

DRIVER = textwrap.dedent(
    """
    import sys, time
    from embodied.cluster import Cluster
    from embodied.config import ClusterConfig
    from embodied.worker import Worker

    cluster = Cluster(ClusterConfig(temp_dir=sys.argv[1], startup_timeout_s=300), components=("env",))
    group = cluster.spawn("env", Worker)
    cluster.ready([group])
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_driver_leaves_no_ray_process_behind():
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, temp_dir],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert driver.stdout.readline().strip() == "ready"
        time.sleep(1.5)  # the watcher polls every 0.5 s
        processes = psutil.Process(driver.pid).children(recursive=True)
        names = [p.name() for p in processes]
        assert any("raylet" in n for n in names) and any(n.startswith("ray::") for n in names), names
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 15
        while pids_alive(p.pid for p in processes) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in processes if p.pid in pids_alive([p.pid])]
        assert not left, f"outlived the killed driver by 15 s: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
        for process in psutil.Process().children(recursive=True):
            if process.pid != os.getpid() and temp_dir in " ".join(process.cmdline()):
                process.kill()


def test_a_ray_that_does_not_come_up_in_time_is_one_line_not_a_traceback(monkeypatch):
    # Ray raises a bare Exception when its raylet registers later than its fixed 30 s (seen by the kill drill
    # on a 2-core machine at load ~30); it reached the user as a traceback
    import ray

    from embodied.cluster import Cluster, ClusterError
    from embodied.config import ClusterConfig

    def slow_start(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", slow_start)
    with pytest.raises(
        ClusterError, match="could not start Ray in-process: The current node timed out"
    ) as info:
        Cluster(ClusterConfig(), components=("env",))
    assert "try again when it is quieter" in str(info.value)

    def bug(**kwargs):
        raise Exception("something else")  # other failures keep their traceback: they are not a slow start

    monkeypatch.setattr(ray, "init", bug)
    with pytest.raises(Exception, match="something else") as info:
        Cluster(ClusterConfig(), components=("env",))
    assert not isinstance(info.value, ClusterError)
