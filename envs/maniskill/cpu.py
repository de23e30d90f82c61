"""ManiSkill's CPU backend: M single-env simulators in this process, stepped one after the other.

ManiSkill's PhysX CPU backend refuses num_envs > 1, so each env is its own `BaseEnv`; `ProcessVectorEnv`
spreads them over worker processes. An initial-state id is the env's reset seed: the same id gives the same
initial state in any env, any process.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import EnvBatch, Obs
from envs.maniskill.common import ObsAdapter, build_spec, make_raw_env
from envs.maniskill.config import ManiSkillConfig
from envs.maniskill.tasks import instruction_for


class ManiSkillCPUBatch(EnvBatch):
    def __init__(self, config: ManiSkillConfig, env_ids: list[int]) -> None:
        self.num_envs = len(env_ids)
        self.envs = []
        try:
            for _ in env_ids:
                self.envs.append(make_raw_env(config, num_envs=1))
        except BaseException:
            self.close()
            raise
        self.adapter = ObsAdapter(self.envs[0], config.obs_mode)
        self.instruction = instruction_for(config.task, config.instruction)
        # the last obs of each env, as [1, ...] tensors; rows of finished envs stay as they ended
        self._rows: list[Obs] = [self.adapter(env._last_obs) for env in self.envs]
        self.spec = build_spec(self.envs[0], config, self._rows[0])

    def _stacked(self) -> Obs:
        rows = self._rows
        obs = {k: rows[0][k] if len(rows) == 1 else torch.cat([r[k] for r in rows]) for k in rows[0]}
        obs["task_descriptions"] = [self.instruction] * self.num_envs
        return obs

    def reset_envs(self, env_ids: np.ndarray, initial_state_ids: np.ndarray) -> Obs:
        for i, seed in zip(env_ids.tolist(), initial_state_ids.tolist()):
            raw, _ = self.envs[i].reset(seed=seed)
            self._rows[i] = self.adapter(raw)
        return self._stacked()

    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        m = self.num_envs
        reward, terminated, success = np.zeros(m, np.float32), np.zeros(m, bool), np.zeros(m, bool)
        actions = actions.to(torch.float32)
        for i in np.flatnonzero(active).tolist():
            raw, r, term, _, info = self.envs[i].step(actions[i : i + 1])
            self._rows[i] = self.adapter(raw)
            reward[i] = r.item()
            terminated[i] = term.item()
            if "success" in info:
                success[i] = info["success"].item()
        return self._stacked(), reward, terminated, success

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []
