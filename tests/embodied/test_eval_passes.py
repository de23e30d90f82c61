"""Evaluation passes and interruptions of scripts/eval_policy.sh on LIBERO (`sim`): the rollout workers (and the
policy's weights) are created once for all passes, only the env workers restart, and every episode is the
same as with fresh rollout workers per pass (what eval_policy did before); Ctrl-C in the second pass exits with
130 and keeps the report of the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import REPO, pids_alive

from embodied.eval_policy import main, prepare, task_passes

pytestmark = pytest.mark.sim

LIBERO = [
    "eval_libero",
    "ckpt=none",
    "env.task_ids=[4,7]",
    "env.num_envs=2",
    "eval.tasks_per_pass=1",
    "env.image_size=32",
    "env.max_episode_steps=3",
    "eval.num_episodes=2",
    "policy.num_action_chunks=2",
    "env.gripper=opening",
    "logger.wandb.mode=disabled",
    "logger.console=plain",
]


def actors_created(class_name: str) -> int:
    """Actors of `class_name` this Ray cluster has started so far, alive or dead (Ray's actor table: the
    public state API needs the dashboard, which the test cluster does not run)."""
    from ray._private import state

    return sum(1 for a in state.actors().values() if a["ActorClassName"] == class_name)


def frames(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    return np.stack(imageio.mimread(path, memtest=False))


def reference_episodes(args: list[str], video_dir: Path) -> list[dict]:
    """The episodes as eval_policy ran them before: fresh env AND rollout workers for every pass."""
    from embodied.cluster import Cluster
    from embodied.components import Components

    config, _, _ = prepare(args)
    cluster = Cluster(config.cluster, components=("env", "rollout"))
    episodes = []
    try:
        units = len(cluster.placement.slots["env"]) * config.rollout.pipeline_stages
        for env in task_passes(config.env, config.eval.tasks_per_pass, units):
            workers = Components(cluster, config.replace(env=env))
            try:
                episodes += workers.evaluate_episodes(config.eval, video_dir)[0]
            finally:
                workers.close()
    finally:
        cluster.shutdown()
    return episodes


@pytest.mark.slow
def test_rollout_workers_are_created_once_and_every_episode_is_as_with_fresh_ones(tmp_path, ray_cluster):
    args = [*LIBERO, f"run.output_dir={tmp_path / 'new'}"]
    rollout_before, env_before = actors_created("RolloutWorker"), actors_created("EnvWorker")
    assert main(args) == 0
    slots = 2  # eval_libero: collocated on the 2 slots of the test cluster, one env + one rollout worker each
    assert actors_created("RolloutWorker") - rollout_before == slots  # once, not once per pass
    assert actors_created("EnvWorker") - env_before == 2 * slots  # fresh env workers for each of the 2 passes
    (folder,) = (tmp_path / "new").glob("*/eval-*")
    record = json.loads((folder / "results.json").read_text())
    assert [t["task_id"] for t in record["tasks"]] == [4, 7] and len(record["episodes"]) == 4

    reference = reference_episodes(args, tmp_path / "reference_videos")
    key = lambda e: (e["task_id"], e["initial_state_id"])  # noqa: E731
    assert sorted(map(key, reference)) == sorted(map(key, record["episodes"]))
    metrics = ("success_once", "success_at_end", "return", "episode_len", "env")
    by_key = {key(e): e for e in reference}
    for episode in record["episodes"]:
        old = by_key[key(episode)]
        assert {m: episode[m] for m in metrics} == {m: old[m] for m in metrics}
        new_frames, old_frames = frames(folder / episode["video"]), frames(Path(old["video"]))
        assert Path(episode["video"]).name == Path(old["video"]).name
        assert new_frames.shape == old_frames.shape and np.array_equal(new_frames, old_frames)
    moved = [frames(folder / e["video"]) for e in record["episodes"]]
    assert any(not np.array_equal(f[0], f[-1]) for f in moved)  # the policy's actions move the robot


@pytest.mark.slow
def test_ctrl_c_in_the_second_pass_keeps_the_report_of_the_first(tmp_path):
    log = tmp_path / "eval.log"
    command = ["bash", "scripts/eval_policy.sh", *LIBERO, f"run.output_dir={tmp_path}", "eval.num_episodes=4"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a background job's
        )
    deadline = time.monotonic() + 300
    while "pass 2/2" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    begin = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert proc.returncode == 130 and time.monotonic() - begin < 30, out
    (folder,) = tmp_path.glob("*/eval-*")
    kept = f"interrupted by SIGINT; the report of the finished passes (4 episodes, marked incomplete) is in {folder}"
    assert kept in out
    assert "Evaluate again with: bash scripts/eval_policy.sh eval_libero ckpt=none" in out
    record = json.loads((folder / "results.json").read_text())
    assert [t["task_id"] for t in record["tasks"]] == [4] and len(record["episodes"]) == 4
    assert "incomplete" in record["meta"]
    assert all((folder / e["video"]).is_file() for e in record["episodes"])
    deadline = time.monotonic() + 10
    while pids_alive(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = pids_alive(started)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left
