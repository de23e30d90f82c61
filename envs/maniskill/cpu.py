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


def seeded_reset(env, seed: int):
    """`env.reset(seed=seed)` of a single-env ManiSkill env, ~0.4-0.7 ms faster per episode here.

    ManiSkill's seeded reset calls `torch.manual_seed`, which on a CPU-only torch also records a lazy CUDA
    re-seed with a formatted stack trace (a large part of the cost), and re-creates its main RNG, which only
    draws seeds for unseeded resets (this backend never makes one). Here the RNGs an episode is drawn from are
    seeded directly (ManiSkill's episode RNG; torch's CPU generator, restored afterwards as ManiSkill's
    `fork_rng` does), then an unseeded reset, which leaves them as they are, initialises the episode: the same
    initial state (tested against `env.reset(seed=...)`). Tasks that rebuild their scene on reset
    (reconfiguration_freq != 0) take ManiSkill's own path.
    """
    if env.reconfiguration_freq != 0:
        return env.reset(seed=seed)
    env._set_episode_rng(seed, torch.zeros(1, dtype=torch.long))
    rng_state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        return env.reset()
    finally:
        torch.set_rng_state(rng_state)


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
            raw, _ = seeded_reset(self.envs[i], seed)
            self._rows[i] = self.adapter(raw)
        return self._stacked()

    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        m = self.num_envs
        reward, terminated, success = np.zeros(m, np.float32), np.zeros(m, bool), np.zeros(m, bool)
        actions = actions.to(torch.float32)
        for i in range(m) if active.all() else np.flatnonzero(active).tolist():
            raw, r, term, _, info = self.envs[i].step(actions[i : i + 1])
            self._rows[i] = self.adapter(raw)
            reward[i], terminated[i] = r.item(), term.item()
            if "success" in info:
                success[i] = info["success"].item()
        return self._stacked(), reward, terminated, success

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []
