"""No process of a run outlives its driver, even a driver killed with SIGKILL.

An in-process Ray shares its driver's fate only in part: its head processes (GCS, raylet) exit with the
driver and its workers within seconds, but its agents (dashboard and runtime-env agents) linger for a minute
or more, and a simulator process a worker started can be left running. `watch()` starts a small watcher
(`python -m embodied.reaper <driver pid>`, psutil only) that notes Ray's processes under the driver every
half second and their descendants (workers, simulators); once the driver is gone it kills those still
running. `Cluster.shutdown` stops the watcher after shutting Ray down itself. Other children of the driver
(e.g. W&B's service, which flushes its files on its own) are left alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def watch(driver: int | None = None) -> subprocess.Popen:
    """Start the watcher of `driver` (default: this process); stop it with `.terminate()`."""
    return subprocess.Popen(
        [sys.executable, "-m", "embodied.reaper", str(driver or os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's process group does not reach it
        close_fds=True,
    )


def _is_ray(process) -> bool:
    import psutil

    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return False
    return bool(cmdline) and (
        cmdline[0].startswith("ray::") or any(f"{os.sep}ray{os.sep}" in a for a in cmdline)
    )


def _alive(process) -> bool:
    import psutil

    try:  # is_running also compares the start time: a reused pid is not the noted process
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap(driver: int) -> int:
    """Watch `driver` until it exits, then kill the Ray processes noted under it; returns how many."""
    import psutil

    try:
        root = psutil.Process(driver)
    except psutil.NoSuchProcess:
        return 0
    noted: dict[int, psutil.Process] = {}
    while _alive(root):
        try:
            for child in root.children():
                if child.pid != os.getpid() and (child.pid in noted or _is_ray(child)):
                    noted.setdefault(child.pid, child)
                    for descendant in child.children(recursive=True):
                        noted.setdefault(descendant.pid, descendant)
        except psutil.Error:
            pass  # a process ended while being looked at
        time.sleep(POLL_S)
    leftovers = [p for p in noted.values() if _alive(p)]
    for process in leftovers:
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(leftovers)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reap(int(sys.argv[1]))
