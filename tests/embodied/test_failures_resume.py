"""Whole training runs as a user starts them (`python -m embodied.train`), with tiny budgets: a run whose
driver or actor is killed with SIGKILL during a checkpoint write resumes from its last complete checkpoint
(`resume=auto`, every check of tests/embodied/drills.py); an env worker killed mid-run gives a clear error,
leaves the last checkpoint intact and no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, STEPS_PER_ITERATION, TINY_RUN, pids_alive
from drill_trials import kill_trial
from safetensors.torch import load_file

from embodied.checkpoint import latest_checkpoint

pytestmark = pytest.mark.sim

TINY = TINY_RUN


def start(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "embodied.train",
        *TINY,
        f"run.output_dir={tmp_path}",
        "run.name=t",
        *overrides,
    ]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(run_root: Path, iteration: int, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_dir in run_root.glob("*"):
            latest = latest_checkpoint(run_dir)
            if (
                latest is not None
                and json.loads((latest / "state.json").read_text())["iteration"] >= iteration
            ):
                return run_dir
        assert proc.poll() is None, f"the run ended early:\n{proc.stdout.read()}"
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint of iteration {iteration} within {timeout}s")


def descendants(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def reap(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return pids_alive(pids)


def assert_checkpoint_intact(checkpoint: Path) -> dict:
    state = json.loads((checkpoint / "state.json").read_text())
    weights = load_file(str(checkpoint / "policy" / "model.safetensors"))
    assert (
        weights
        and (checkpoint / "optimizer.pt").is_file()
        and (checkpoint / "policy" / "config.json").is_file()
    )
    assert state["env_steps"] == state["iteration"] * STEPS_PER_ITERATION
    return state


def test_a_run_killed_during_a_checkpoint_write_resumes_where_it_stopped(tmp_path):
    """SIGKILL the driver while checkpoint 2 is being written (the drill of scripts/drill.py), then resume=auto:
    the newest complete checkpoint (1) loads, the counter continues from it, every iteration appears once in
    metrics.csv, TensorBoard and W&B, no process is left, and the final weights are bitwise those of an
    uninterrupted run from a copy of that checkpoint. Killing an actor, env or rollout worker instead (31 s more
    here) is left to the drill's random targets: `python scripts/drill.py kill` (docs/reliability.md)."""
    result = kill_trial(tmp_path, "driver", "checkpoint-write", seed=0, total=4)
    assert result["ok"], result["failed"]
    assert result["checkpoint_iteration"] == 1


def test_a_killed_env_worker_stops_the_run_with_a_clear_error(tmp_path):
    proc = start(tmp_path, "run.total_env_steps=100000")
    run_dir = wait_for_checkpoint(tmp_path / "t", 1, proc)
    pids = descendants(proc.pid)
    env_workers = [p for p in pids if psutil.Process(p).cmdline()[0].startswith("ray::EnvWorker")]
    assert env_workers, "no env worker process found"
    os.kill(env_workers[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert re.search(r"training failed: at iteration \d+: env worker rank \d .*died while running", out), out
    assert_checkpoint_intact(latest_checkpoint(run_dir))
    assert not reap(pids, timeout=60), "processes outlived the failed run"
