"""Evaluation: deterministic actions from a fixed list of initial states, the first episode of each env.

`EvalEpisodes` is the env side of one evaluation on one `VectorEnv`: it resets the envs round by round to
the next initial states, is fed the result of each chunk step, and records the metrics of each env's first
episode of the round. It never calls a policy: the caller brings actions from wherever they come from (a
rollout worker through a channel, or a policy in the same process). The env workers use it for the runner's
periodic evaluation and for eval-only runs; `summarize` turns the episodes of all workers into the
`eval/*` metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from envs.base import EPISODE_METRICS, Obs, VectorEnv


class EvalEpisodes:
    """Episodes from `initial_state_ids` on `env`, `env.num_envs` at a time (the last round padded)."""

    def __init__(self, env: VectorEnv, initial_state_ids: Sequence[int]) -> None:
        self.env = env
        self.ids = [int(i) for i in initial_state_ids]
        self.episodes: list[dict[str, float]] = []
        self._next = 0
        self._round_size = 0
        self._done = np.zeros(env.num_envs, bool)

    def start(self) -> Obs | None:
        """Reset to the first round; None when there is nothing to evaluate."""
        return self._start_round() if self.ids else None

    def _start_round(self) -> Obs:
        n = self.env.num_envs
        ids = self.ids[self._next : self._next + n]
        self._round_size = len(ids)
        padded = ids + [ids[-1]] * (
            n - len(ids)
        )  # extra envs repeat the last state; their results are dropped
        self._next += len(ids)
        self._done = np.zeros(n, bool)
        self._round_ids = ids
        return self.env.reset(initial_state_ids=padded)

    def step(self, actions: torch.Tensor) -> tuple[Obs | None, dict]:
        """Execute one chunk; returns the next observation to act on (None once all rounds are over) and the
        env's infos of this chunk (for videos)."""
        obs, _, _, _, infos = self.env.chunk_step(actions)
        ended = infos["episode_done"].numpy() & ~self._done
        for i in np.flatnonzero(ended[: self._round_size]):
            self.episodes.append(
                {"initial_state_id": self._round_ids[i]}
                | {k: float(infos["episode"][k][i]) for k in EPISODE_METRICS}
            )
        self._done |= infos["episode_done"].numpy()
        if not self._done[: self._round_size].all():
            return obs, infos
        if self._next < len(self.ids):
            return self._start_round(), infos
        return None, infos


def split_ids(ids: Sequence[int], parts: int) -> list[list[int]]:
    """`ids` in `parts` contiguous, balanced pieces (the first ones get the remainder)."""
    base, extra = divmod(len(ids), parts)
    out, start = [], 0
    for p in range(parts):
        stop = start + base + (p < extra)
        out.append(list(ids[start:stop]))
        start = stop
    return out


def summarize(episodes: Sequence[dict[str, float]], prefix: str = "eval") -> dict[str, float]:
    """Mean of each episode metric over all episodes, as `<prefix>/<metric>`, plus the episode count."""
    if not episodes:
        return {}
    out = {f"{prefix}/{k}": float(np.mean([e[k] for e in episodes])) for k in EPISODE_METRICS}
    out[f"{prefix}/num_episodes"] = float(len(episodes))
    return out


def evaluate_in_process(policy, env: VectorEnv, initial_state_ids: Sequence[int]) -> list[dict[str, float]]:
    """Evaluate `policy` on `env` in this process (no workers): deterministic actions, first episodes."""
    episodes = EvalEpisodes(env, initial_state_ids)
    obs = episodes.start()
    while obs is not None:
        obs, _ = episodes.step(policy.predict(obs, mode="eval").actions.cpu())
    return episodes.episodes
