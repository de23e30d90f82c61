"""LIBERO's backend: M scenes in this process (each may run another task), stepped one after the other."""

from __future__ import annotations

import os

import numpy as np
import torch

from envs.base import EnvBatch, EnvSpec, Obs
from envs.libero.config import MAX_EPISODE_STEPS, LiberoConfig
from envs.libero.convert import ACTION_DIM, STATE_DIM, gripper_from_opening
from envs.libero.offline import RENDER_HELP, LiberoSetupError, is_render_error, load_libero
from envs.libero.sim import LiberoSim
from envs.libero.tasks import load_task


def libero_spec(config: LiberoConfig) -> EnvSpec:
    """The spec of every batch of `config` (the same in every worker: it looks at all selected tasks)."""
    num_initial_states = min(len(load_task(config.suite, t).init_states) for t in config.selected_task_ids)
    return EnvSpec(
        action_dim=ACTION_DIM,
        action_low=(-1.0,) * (ACTION_DIM - 1) + (0.0 if config.gripper == "opening" else -1.0,),
        action_high=(1.0,) * ACTION_DIM,
        state_dim=STATE_DIM,
        image_size=(config.image_size, config.image_size),
        has_wrist_image=config.wrist_image,
        max_episode_steps=MAX_EPISODE_STEPS[config.suite],
        num_initial_states=num_initial_states,
    )


class LiberoBatch(EnvBatch):
    """The envs with global indices `env_ids`; env i runs task `config.task_of_env(i)`.

    An initial-state id k is the k-th of the benchmark's fixed initial states of the env's task.
    """

    def __init__(self, config: LiberoConfig, env_ids: list[int]) -> None:
        libero = load_libero()
        self.num_envs = len(env_ids)
        self.spec = libero_spec(config)
        self.tasks = [load_task(config.suite, config.task_of_env(i)) for i in env_ids]
        self.gripper_opening = config.gripper == "opening"
        self.sims: list[LiberoSim] = []
        try:
            for task in self.tasks:
                self.sims.append(LiberoSim(libero, task, config))
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and is_render_error(exc):
                backend = os.environ.get("MUJOCO_GL", "")
                raise LiberoSetupError(RENDER_HELP.format(backend=backend, error=exc)) from exc
            raise
        self.descriptions = [task.language for task in self.tasks]
        size = config.image_size
        blank = {"main": np.zeros((size, size, 3), np.uint8), "state": np.zeros(STATE_DIM, np.float32)}
        if config.wrist_image:
            blank["wrist"] = blank["main"]
        self._rows = [blank] * self.num_envs  # the last obs of each env; envs not reset yet show a blank

    def _stacked(self) -> Obs:
        rows = self._rows
        obs = {
            "main_images": torch.from_numpy(np.stack([r["main"] for r in rows])),
            "states": torch.from_numpy(np.stack([r["state"] for r in rows])),
            "task_descriptions": list(self.descriptions),
        }
        if "wrist" in rows[0]:
            obs["wrist_images"] = torch.from_numpy(np.stack([r["wrist"] for r in rows]))
        return obs

    def reset_envs(self, env_ids: np.ndarray, initial_state_ids: np.ndarray) -> Obs:
        for i, k in zip(env_ids.tolist(), initial_state_ids.tolist()):
            self._rows[i] = self.sims[i].reset_to(k)
        return self._stacked()

    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        m = self.num_envs
        reward, success = np.zeros(m, np.float32), np.zeros(m, bool)
        if self.gripper_opening:
            actions = gripper_from_opening(actions)
        actions_np = actions.detach().cpu().to(torch.float64).numpy()
        for i in np.flatnonzero(active).tolist():
            self._rows[i], reward[i], success[i] = self.sims[i].step(actions_np[i])
        # a LIBERO episode ends when the task's goal holds (LIBERO's own `done`)
        return self._stacked(), reward, success.copy(), success

    def close(self) -> None:
        for sim in self.sims:
            sim.close()
        self.sims = []
