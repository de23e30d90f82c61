"""Evaluation: deterministic actions from fixed lists of initial states, the first episode of each env.

`EvalEpisodes` is the env side of one evaluation on one `VectorEnv`: each env has its own list of initial
states (its schedule); round r resets every env to the r-th id of its list (envs whose list is shorter run a
padding episode whose result is dropped), is fed the result of each chunk step, and records the metrics of
each env's first episode of the round. It never calls a policy: the caller brings actions from wherever they
come from (a rollout worker through a channel, or a policy in the same process). The env workers use it for
the runner's periodic evaluation and for eval-only runs (`embodied.eval_policy`); `task_schedules` deals each
task's initial states to the envs that run the task, and `summarize` turns the episodes of all workers into
the `eval/*` metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from envs.base import EPISODE_METRICS, Obs, VectorEnv


class EvalEpisodes:
    """Episodes on `env` from a flat list of initial states, `env.num_envs` at a time (round r, env i:
    `initial_state_ids[r * N + i]`; the last round padded); `per_env` takes a list per env instead."""

    def __init__(self, env: VectorEnv, initial_state_ids: Sequence[int]) -> None:
        n = env.num_envs
        ids = [int(i) for i in initial_state_ids]
        self._init(env, [ids[i::n] for i in range(n)])

    @classmethod
    def per_env(cls, env: VectorEnv, schedules: Sequence[Sequence[int]]) -> EvalEpisodes:
        """Env i evaluates the initial states `schedules[i]`, one per round (lists may differ in length)."""
        if len(schedules) != env.num_envs:
            raise ValueError(f"{len(schedules)} schedules for {env.num_envs} envs: give one list per env")
        episodes = cls.__new__(cls)
        episodes._init(env, [[int(i) for i in s] for s in schedules])
        return episodes

    def _init(self, env: VectorEnv, schedules: list[list[int]]) -> None:
        self.env = env
        self.schedules = schedules
        self.num_rounds = max((len(s) for s in schedules), default=0)
        self.episodes: list[dict] = []
        self.round = -1
        self.round_ids: list[int | None] = []  # this round's id per env; None: a padding episode
        self.tracked = np.zeros(env.num_envs, bool)  # envs whose first episode of the round still runs
        self.descriptions: list[str] = []

    def start(self) -> Obs | None:
        """Reset to the first round; None when there is nothing to evaluate."""
        return self._start_round() if self.num_rounds else None

    def _start_round(self) -> Obs:
        self.round += 1
        r = self.round
        self.round_ids = [s[r] if r < len(s) else None for s in self.schedules]
        filler = next(i for i in self.round_ids if i is not None)
        # envs without an id this round repeat another env's state; their results are dropped
        obs = self.env.reset(initial_state_ids=[filler if i is None else i for i in self.round_ids])
        self.tracked = np.array([i is not None for i in self.round_ids])
        self.descriptions = list(obs["task_descriptions"])
        return obs

    def step(self, actions: torch.Tensor) -> tuple[Obs | None, dict]:
        """Execute one chunk; returns the next observation to act on (None once all rounds are over) and the
        env's infos of this chunk (for videos)."""
        obs, _, _, _, infos = self.env.chunk_step(actions)
        ended = infos["episode_done"].numpy() & self.tracked
        for i in np.flatnonzero(ended):
            self.episodes.append(
                {
                    "env": int(i),
                    "initial_state_id": self.round_ids[i],
                    "task_description": self.descriptions[i],
                }
                | {k: float(infos["episode"][k][i]) for k in EPISODE_METRICS}
            )
        self.tracked &= ~ended
        if self.tracked.any():
            return obs, infos
        if self.round + 1 < self.num_rounds:
            return self._start_round(), infos
        return None, infos


def task_schedules(task_of_env: Sequence[int], initial_state_ids: Sequence[int]) -> list[list[int]]:
    """Per env, the initial states it evaluates so that every task runs each of `initial_state_ids` once:
    the ids are dealt in turn to the envs that run the task (`task_of_env[i]`: env i's task)."""
    envs_of_task: dict[int, list[int]] = {}
    for env, task in enumerate(task_of_env):
        envs_of_task.setdefault(task, []).append(env)
    schedules: list[list[int]] = [[] for _ in task_of_env]
    for envs in envs_of_task.values():
        for k, state in enumerate(initial_state_ids):
            schedules[envs[k % len(envs)]].append(int(state))
    return schedules


def split_ids(ids: Sequence[int], parts: int) -> list[list[int]]:
    """`ids` in `parts` contiguous, balanced pieces (the first ones get the remainder)."""
    base, extra = divmod(len(ids), parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + base + (p < extra)
        out.append(list(ids[start:stop]))
        start = stop
    return out


def summarize(episodes: Sequence[dict], prefix: str = "eval") -> dict[str, float]:
    """Mean of each episode metric over all episodes, as `<prefix>/<metric>`, plus the episode count."""
    if not episodes:
        return {}
    out = {f"{prefix}/{k}": float(np.mean([e[k] for e in episodes])) for k in EPISODE_METRICS}
    out[f"{prefix}/num_episodes"] = float(len(episodes))
    return out


def evaluate_in_process(policy, env: VectorEnv, initial_state_ids: Sequence[int]) -> list[dict]:
    """Evaluate `policy` on `env` in this process (no workers): deterministic actions, first episodes."""
    episodes = EvalEpisodes(env, initial_state_ids)
    obs = episodes.start()
    while obs is not None:
        obs, _ = episodes.step(policy.predict(obs, mode="eval").actions.cpu())
    return episodes.episodes
