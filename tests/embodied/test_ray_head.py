"""A short training job against a real Ray head started with `ray start --head` (joined by address)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, pids_alive

pytestmark = pytest.mark.sim


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_training_against_a_ray_head_by_address(tmp_path):
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir=/tmp/inflow-ray-test-{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, head.stdout.read()
            time.sleep(0.5)
        cmd = [
            sys.executable,
            "-m",
            "embodied.train",
            f"cluster.address=127.0.0.1:{port}",
            "env.num_envs=4",
            "rollout.num_steps=8",
            "run.total_env_steps=64",
            "actor.num_minibatches=2",
            "actor.update_epochs=1",
            "eval.num_episodes=4",
            "env.max_episode_steps=10",
            "logger.wandb.mode=disabled",
            f"run.output_dir={tmp_path}",
            "run.name=head",
        ]
        run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Ray cluster with 2 CPU(s)" in run.stdout and "final eval:" in run.stdout
        assert "eval/num_episodes 4.000" in run.stdout
    finally:
        pids = [p.pid for p in psutil.Process(head.pid).children(recursive=True)] + [head.pid]
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        deadline = time.monotonic() + 30
        while pids_alive(pids) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in pids_alive(pids):
            os.kill(pid, signal.SIGKILL)
