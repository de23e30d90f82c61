"""ManiSkill's GPU backend: all M envs in one PhysX GPU scene, reset partially, stepped together.

ManiSkill seeds a partial reset with ONE torch seed for all the rows it resets (`torch.manual_seed(seed[0])`,
then e.g. `torch.rand((len(env_idx), 2))`), so resetting rows [a, b] with seeds [s, s] gives them different
states, and a row's state depends on the other rows reset with it. So, per reset:
  1. reset one representative row per distinct id: `gpu_reset: batched` does them in one ManiSkill reset
     (seeded by the ids: the same seed and num_envs give the same episodes, but an id's state depends on its
     batch); `gpu_reset: exact` resets each alone with its id as the only seed (the seed list repeats it so
     that both torch and that row's episode RNG get it), so an id gives the same state in any row and batch,
     as on the CPU backend, at one ManiSkill reset (with observations of all rows) per distinct id;
  2. copy each representative's simulation state into the other rows with its id, in one partial reset
     through ManiSkill's `reset_to_env_states` (which also resets their controllers and step counters):
     GRPO groups start from exactly the same state in both modes.
Observations stay on the GPU; rewards and flags come back to the CPU (episode bookkeeping is numpy).
"""

from __future__ import annotations

import numpy as np
import torch

from envs.base import EnvBatch, Obs
from envs.maniskill.common import ObsAdapter, build_spec, make_raw_env, success_flags
from envs.maniskill.config import ManiSkillConfig
from envs.maniskill.tasks import instruction_for


def representatives(env_ids: np.ndarray, ids: np.ndarray) -> tuple[dict[int, int], np.ndarray, np.ndarray]:
    """For each distinct id, its first row; and the other rows (sorted) with the row each copies from."""
    first: dict[int, int] = {}
    for row, state_id in zip(env_ids.tolist(), ids.tolist()):
        first.setdefault(state_id, row)
    followers = sorted(
        (row, first[state_id])
        for row, state_id in zip(env_ids.tolist(), ids.tolist())
        if first[state_id] != row
    )
    rows = np.array([f[0] for f in followers], np.int64)
    sources = np.array([f[1] for f in followers], np.int64)
    return first, rows, sources


def _index_state(state: dict, rows: torch.Tensor) -> dict:
    return {k: _index_state(v, rows) if isinstance(v, dict) else v[rows] for k, v in state.items()}


class ManiSkillGPUBatch(EnvBatch):
    def __init__(self, config: ManiSkillConfig, env_ids: list[int]) -> None:
        self.num_envs = len(env_ids)
        self.exact = config.gpu_reset == "exact"
        self.env = make_raw_env(config, num_envs=self.num_envs)
        self.device = self.env.device
        self.adapter = ObsAdapter(self.env, config.obs_mode)
        self.instruction = instruction_for(config.task, config.instruction)
        self._obs = self._with_text(self.adapter(self.env._last_obs))
        self.spec = build_spec(self.env, config, self._obs)

    def _with_text(self, obs: Obs) -> Obs:
        obs["task_descriptions"] = [self.instruction] * self.num_envs
        return obs

    def _rows(self, rows) -> torch.Tensor:
        return torch.as_tensor(np.asarray(rows, np.int64), device=self.device)

    def reset_envs(self, env_ids: np.ndarray, initial_state_ids: np.ndarray) -> Obs:
        first, rows, sources = representatives(np.asarray(env_ids), np.asarray(initial_state_ids))
        raw = None
        if self.exact:
            for state_id, row in first.items():
                raw, _ = self.env.reset(
                    seed=[state_id] * self.num_envs, options={"env_idx": self._rows([row])}
                )
        elif first:
            reps = sorted(first.items(), key=lambda item: item[1])  # (id, row) by row
            # a seed for every row: ManiSkill re-seeds all rows' episode RNGs and torch with seeds[0]
            seeds = np.full(self.num_envs, reps[0][0], np.int64)
            seeds[[row for _, row in reps]] = [state_id for state_id, _ in reps]
            raw, _ = self.env.reset(
                seed=seeds.tolist(), options={"env_idx": self._rows([r for _, r in reps])}
            )
        if len(rows):
            states = _index_state(self.env.get_state_dict(), self._rows(sources))
            raw, _ = self.env.reset(
                options={"env_idx": self._rows(rows), "reset_to_env_states": {"env_states": states}}
            )
        if raw is not None:
            self._obs = self._with_text(self.adapter(raw))
        return self._obs

    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        # every row steps (a GPU batch cannot skip rows); the episode logic ignores the inactive ones
        raw, reward, terminated, _, info = self.env.step(actions.to(self.device, torch.float32))
        self._obs = self._with_text(self.adapter(raw))
        success = success_flags(info, self.num_envs, self.device)
        return (
            self._obs,
            reward.float().cpu().numpy(),
            terminated.cpu().numpy().astype(bool),
            success.cpu().numpy().astype(bool),
        )

    def close(self) -> None:
        self.env.close()
