"""Test helpers: a tiny deterministic backend whose every output is predictable (to test the episode logic and
the workers), checks that processes are gone, and an oracle for colour_targets.

Env with global index g, reset to initial-state id s: after t steps its state is [s, t, g]; it terminates
(the task's own end) after `1 + s % period` steps, with success when s is even; its reward is action[0] + t.
Images are 4x4 filled with t. Workers can be made to raise or to die at a chosen step.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from algorithms.schema import param
from envs.base import EnvBatch, EnvConfig, EnvSpec, EpisodeVectorEnv, register_env


@dataclass(frozen=True)
class CountdownConfig(EnvConfig):
    name: str = param("countdown", help="registered env type")
    period: int = param(4, help="episodes of id s end after 1 + s % period steps", ge=1)
    time_limit: int = param(10, help="the task's default time limit", ge=1)
    num_initial_states: int | None = param(None, help="null: ids are seeds; n: ids are 0..n-1")
    fail_at_step: int | None = param(None, help="raise in step number k (counted per batch)")
    crash_at_step: int | None = param(None, help="os._exit(3) in step number k")
    fail_on_init: bool = param(False, help="raise while building the batch")
    fail_env: int = param(0, help="only the batch holding this global env index fails/crashes")


class CountdownBatch(EnvBatch):
    def __init__(self, config: CountdownConfig, env_ids: list[int]) -> None:
        self.config = config
        self.env_ids = np.asarray(env_ids)
        self.num_envs = len(env_ids)
        self.fails = config.fail_env in env_ids
        if config.fail_on_init and self.fails:
            raise ValueError("countdown refused to start (fail_on_init)")
        self.ids = np.zeros(self.num_envs, np.int64)
        self.t = np.zeros(self.num_envs, np.int64)
        self.steps_taken = 0
        self.spec = EnvSpec(
            action_dim=2,
            action_low=(-1.0, -1.0),
            action_high=(1.0, 1.0),
            state_dim=3,
            image_size=(4, 4),
            has_wrist_image=False,
            max_episode_steps=config.time_limit,
            num_initial_states=config.num_initial_states,
        )

    def _obs(self):
        states = np.stack([self.ids, self.t, self.env_ids], axis=1).astype(np.float32)
        images = np.broadcast_to(self.t[:, None, None, None], (self.num_envs, 4, 4, 3)).astype(np.uint8)
        return {
            "main_images": torch.from_numpy(images.copy()),
            "states": torch.from_numpy(states),
            "task_descriptions": [f"env {g}" for g in self.env_ids],
        }

    def reset_envs(self, env_ids, initial_state_ids):
        self.ids[env_ids] = initial_state_ids
        self.t[env_ids] = 0
        return self._obs()

    def step(self, actions, active):
        self.steps_taken += 1
        if self.fails and self.config.fail_at_step == self.steps_taken:
            raise RuntimeError("countdown failed on purpose")
        if self.fails and self.config.crash_at_step == self.steps_taken:
            os._exit(3)
        self.t[active] += 1
        reward = (actions[:, 0].numpy() + self.t).astype(np.float32)
        terminated = self.t >= 1 + self.ids % self.config.period
        success = terminated & (self.ids % 2 == 0)
        return self._obs(), reward, terminated, success


register_env("countdown", CountdownConfig, processes=True)(CountdownBatch)


# -- processes ----------------------------------------------------------------------------------------------
def gone(pid: int) -> bool:
    """The process no longer runs (never existed, exited, or is a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def spawned_children() -> set[int]:
    """Live child processes started by multiprocessing's spawn (env workers; not its resource tracker)."""
    me = os.getpid()
    path = Path(f"/proc/{me}/task/{me}/children")
    pids = {int(p) for p in path.read_text().split()} if path.exists() else set()
    found = set()
    for pid in pids:
        try:
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text() and not gone(pid):
                found.add(pid)
        except FileNotFoundError:
            pass
    return found


# -- colour_targets ---------------------------------------------------------------------------------------
def colour_oracle_actions(env: EpisodeVectorEnv) -> torch.Tensor:
    batch = env.batch
    goal = batch.centres[np.arange(env.num_envs), batch.goal]
    velocity = np.clip((goal - batch.cursor) / env.config.max_speed, -1, 1)
    actions = np.zeros((env.num_envs, 1, env.spec.action_dim), np.float32)
    actions[:, 0, :2] = velocity
    return torch.from_numpy(actions)
