"""The vectorised env API every simulator sits behind (see ../shared/DESIGN.md, "Data contracts").

Two layers:
- `EnvBatch`: a backend. M simulator instances stepped together, with no episode logic: it resets chosen
  envs to given initial states and steps all of them once. ManiSkill (one CPU env, or a GPU batch), LIBERO,
  the built-in toy envs implement this.
- `VectorEnv`: what users and the runtime see. `reset`, `step`, `chunk_step`, auto-reset, time limits,
  `ignore_terminations`, episode metrics and group-shared initial states. `EpisodeVectorEnv` implements it
  once over any `EnvBatch`; `envs.workers.ProcessVectorEnv` splits the envs over worker processes, each
  running an `EpisodeVectorEnv`, so one message per worker carries a whole action chunk.

Observations are dicts of torch tensors, batch first:
  main_images uint8 [N, H, W, 3] (rgb modes), wrist_images uint8 [N, H, W, 3] (optional),
  states float32 [N, D], task_descriptions list[str] (length N).

Initial states are named by integer ids that the backend interprets: a reset seed for ManiSkill, an index
into the benchmark's fixed initial states for LIBERO. `group_size` consecutive envs get the same id.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from algorithms.registry import Registry
from algorithms.schema import Config, ConfigError, param

Obs = dict[str, Any]
EPISODE_METRICS = ("success_once", "success_at_end", "return", "episode_len")


@dataclass(frozen=True)
class EnvConfig(Config):
    """Fields every env type has; each env type extends this with its own (task, obs_mode, ...)."""

    name: str = param(help="registered env type, e.g. maniskill, libero, colour_targets, math")
    num_envs: int = param(8, help="number of parallel envs", ge=1)
    group_size: int = param(
        1, help="consecutive envs that reset to the same initial state (GRPO groups)", ge=1
    )
    max_episode_steps: int | None = param(
        None, help="time limit in env steps; null: the task's default", ge=1
    )
    ignore_terminations: bool = param(
        False, help="episodes end only at the time limit, not at success/failure"
    )
    auto_reset: bool = param(True, help="reset finished envs at chunk end; false: they idle until reset()")
    seed: int = param(0, help="seed of the initial-state stream", ge=0)
    num_workers: int = param(1, help="worker processes the envs are split over (CPU simulators)", ge=1)

    @classmethod
    def subclass_for(cls, name: str) -> type[Config]:
        return env_registry.get(name).config_class

    @property
    def selected_task_ids(self) -> tuple[int, ...]:
        """The tasks (ids within the env type) this config runs; env types with several tasks override it."""
        return (0,)

    def with_task_ids(self, task_ids: tuple[int, ...]) -> EnvConfig:
        """This config running only `task_ids` (an evaluation pass over some of the tasks)."""
        if tuple(task_ids) != self.selected_task_ids:
            raise ValueError(f"env {self.name!r} runs one task; it cannot select tasks {list(task_ids)}")
        return self

    def task_of_env(self, env_id: int) -> int:
        """The task (an id within the env type) that env `env_id` runs; env types with several tasks override it."""
        return 0

    def slice_envs(self, start: int, count: int) -> EnvConfig:
        """The config of envs `start .. start + count - 1` as a batch of their own (an env worker's share):
        `num_envs=count`; env types with several tasks also keep each env's task (see `task_of_env`)."""
        return self.replace(num_envs=count)

    def check(self) -> None:
        if self.num_envs % self.group_size:
            raise ConfigError(
                f"{{section}}num_envs={self.num_envs} is not a multiple of group_size={self.group_size}; "
                "every group needs all its members: use a group_size that divides num_envs"
            )
        if self.num_workers > self.num_envs:
            raise ConfigError(
                f"{{section}}num_workers={self.num_workers} exceeds num_envs={self.num_envs}; it must be at most that"
            )


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an env to be built for it."""

    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    state_dim: int
    image_size: tuple[int, int] | None  # (H, W) of main_images; None in state-only modes
    has_wrist_image: bool
    max_episode_steps: int
    num_initial_states: int | None  # None: any integer id is an initial state (a seed)


class EnvBatch(abc.ABC):
    """M simulator instances stepped together, without episode logic (a backend)."""

    num_envs: int
    spec: EnvSpec

    @abc.abstractmethod
    def reset_envs(self, env_ids: np.ndarray, initial_state_ids: np.ndarray) -> Obs:
        """Reset envs `env_ids` [K] to initial states `initial_state_ids` [K]; return the obs of all M envs."""

    @abc.abstractmethod
    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        """Step once with `actions` [M, A].

        `active` [M] bool marks envs whose episode is still running; a backend may skip the others (their
        outputs are ignored). Returns obs, reward float32 [M], terminated bool [M] (the task's own end: success
        or failure), success bool [M].
        """

    def close(self) -> None:  # noqa: B027 - optional: backends without resources need not override it
        """Release simulator resources."""


class VectorEnv(abc.ABC):
    """N envs behind one API. See the module docstring for the observation contract."""

    num_envs: int
    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int | None = None, initial_state_ids: Sequence[int] | None = None) -> Obs:
        """Reset all envs.

        `initial_state_ids` [N]: explicit initial states (a fixed evaluation list). Otherwise ids are drawn
        from a stream seeded by `seed` (default: the config's seed, then continuing), one per group of
        `group_size` consecutive envs.
        """

    @abc.abstractmethod
    def chunk_step(self, actions: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Execute an action chunk `actions` [N, C, A].

        Returns obs (after auto-reset), rewards float32 [N, C], terminations bool [N, C], truncations bool
        [N, C], infos. An env whose episode ends at step c gets zero reward and no further flags after c.
        Finished envs are reset once, at chunk end (when auto_reset). infos holds:
          episode_done bool [N]: an episode ended in this chunk;
          final_observation: the obs each env was in when its episode ended (rows valid where episode_done);
          episode: {success_once, success_at_end, return, episode_len} tensors [N], valid where episode_done;
          success bool [N, C]: the task's success flag after each step.
        """

    def step(self, actions: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One env step, `actions` [N, A]: `chunk_step` with C = 1, flags squeezed to [N]."""
        obs, rewards, terminations, truncations, infos = self.chunk_step(actions[:, None])
        infos = {**infos, "success": infos["success"][:, 0]}
        return obs, rewards[:, 0], terminations[:, 0], truncations[:, 0], infos

    def record_step_frames(self, enabled: bool) -> None:
        """Opt in to `infos["frames"]`: main_images after every step of a chunk, uint8 [N, C, H, W, 3] (for
        videos; rows of envs whose episode ended earlier in the chunk repeat their last frame)."""
        raise TypeError(f"{type(self).__name__} cannot record per-step frames")

    @abc.abstractmethod
    def close(self) -> None:
        """Stop simulators and worker processes. Safe to call twice."""

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EnvEntry:
    """A registered env type: its config class and the function that builds its `EnvBatch` backends."""

    config_class: type[EnvConfig]
    make_batch: Any  # (config, env_ids: list[int]) -> EnvBatch, for the envs with those global indices
    processes: bool  # True: one simulator per process on CPU, so the envs are split over worker processes


env_registry: Registry[EnvEntry] = Registry(
    "env", hint="Some env types need an extra: pip install -e .[maniskill]"
)


def register_env(name: str, config_class: type[EnvConfig], processes: bool = False):
    """Register an env type: decorate the function `(config, env_ids) -> EnvBatch` that builds its backend."""

    def decorator(make_batch):
        env_registry.register(name)(EnvEntry(config_class, make_batch, processes))
        return make_batch

    return decorator


def draw_initial_state_ids(
    rng: np.random.Generator, num_envs: int, group_size: int, num_initial_states: int | None
) -> np.ndarray:
    """One initial-state id per group of `group_size` consecutive envs, repeated within the group: [num_envs]."""
    high = num_initial_states if num_initial_states is not None else 2**31 - 1
    per_group = rng.integers(0, high, size=num_envs // group_size)
    return np.repeat(per_group, group_size)


def check_initial_state_ids(ids: Sequence[int], num_envs: int, num_initial_states: int | None) -> np.ndarray:
    """`ids` as an int64 array [num_envs], or a ValueError saying what is wrong with them."""
    arr = np.asarray(ids)
    if arr.shape != (num_envs,) or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"initial_state_ids must be {num_envs} integers (one per env), got shape {arr.shape} "
            f"of {arr.dtype}"
        )
    high = num_initial_states if num_initial_states is not None else 2**31
    if arr.size and (arr.min() < 0 or arr.max() >= high):
        raise ValueError(
            f"initial_state_ids must lie in [0, {high}); got values from {arr.min()} to {arr.max()}"
        )
    return arr.astype(np.int64)


class InitialStateStream:
    """Where initial-state ids come from, identical however the envs are split over worker processes.

    `reset()` draws group-shared ids for all envs from a stream seeded by the config's seed (a `seed` passed to
    reset restarts it), plus a key for the episodes that follow. Auto-resets at chunk `k` after that reset use
    `auto_reset_ids(key, k)`: ids for all N envs (shared within a group, so groups that end together restart
    together), of which each env uses its own row. No state lives in the workers beyond the key.
    """

    def __init__(self, seed: int, num_envs: int, group_size: int, num_initial_states: int | None) -> None:
        self._rng = np.random.default_rng(seed)
        self.num_envs, self.group_size, self.num_initial_states = num_envs, group_size, num_initial_states

    def draw_reset(self, seed: int | None = None) -> tuple[np.ndarray, int]:
        """Ids [N] for a reset of all envs and the key of the auto-resets that follow it."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        ids = draw_initial_state_ids(self._rng, self.num_envs, self.group_size, self.num_initial_states)
        return ids, int(self._rng.integers(0, 2**63 - 1))

    def auto_reset_ids(self, key: int, chunk_index: int) -> np.ndarray:
        """Ids [N] for the envs that auto-reset at the end of chunk `chunk_index` after the reset keyed `key`."""
        rng = np.random.default_rng([key, chunk_index])
        return draw_initial_state_ids(rng, self.num_envs, self.group_size, self.num_initial_states)


def stack_obs(parts: Sequence[Obs]) -> Obs:
    """Concatenate observation dicts along the batch axis (tensors with torch.cat, lists by extension)."""
    out: Obs = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        out[key] = (
            torch.cat(values) if isinstance(values[0], torch.Tensor) else [v for p in values for v in p]
        )
    return out


def select_obs(obs: Obs, rows: np.ndarray | torch.Tensor) -> Obs:
    """The observation rows `rows` (bool mask or indices) of every key."""
    rows_np = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    idx = np.flatnonzero(rows_np) if rows_np.dtype == bool else rows_np
    return {
        k: (v[torch.as_tensor(idx, device=v.device)] if isinstance(v, torch.Tensor) else [v[i] for i in idx])
        for k, v in obs.items()
    }


def copy_obs_rows(dst: Obs, src: Obs, rows: np.ndarray) -> None:
    """Write rows `rows` [N] bool of `src` into `dst` in place."""
    idx = np.flatnonzero(rows)
    for k, v in src.items():
        if isinstance(v, torch.Tensor):
            dst[k][torch.as_tensor(idx, device=v.device)] = v[torch.as_tensor(idx, device=v.device)]
        else:
            for i in idx:
                dst[k][i] = v[i]


def clone_obs(obs: Obs) -> Obs:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in obs.items()}


def make_env(config: EnvConfig) -> VectorEnv:
    """Build the vectorised env a config describes (worker processes where the simulator needs them)."""
    entry = env_registry.get(config.name)
    if not isinstance(config, entry.config_class):
        config = entry.config_class.from_dict(dataclasses.asdict(config), path="env")
    if entry.processes and config.num_workers > 1:
        from envs.workers import ProcessVectorEnv

        return ProcessVectorEnv(config)
    return EpisodeVectorEnv(config, entry.make_batch(config, list(range(config.num_envs))))


class _Chunk:
    """What one `chunk_step` accumulates: per-step outputs [N, C], episode ends, the final observations."""

    def __init__(self, n: int, length: int, obs: Obs) -> None:
        self.length = length
        self.rewards = np.zeros((n, length), np.float32)
        self.terminations = np.zeros((n, length), bool)
        self.truncations = np.zeros((n, length), bool)
        self.success = np.zeros((n, length), bool)
        self.episode_done = np.zeros(n, bool)
        self.success_at_end = np.zeros(n, bool)
        self.final_obs: Obs | None = None
        self.frames: list[torch.Tensor] = []
        self.obs = obs  # the latest observation


class EpisodeVectorEnv(VectorEnv):
    """Episode logic over one `EnvBatch`: chunks, time limits, auto-reset, metrics, initial states.

    In a worker process the batch holds envs `first_env ... first_env + batch.num_envs - 1` of the
    `config.num_envs` envs; the parent draws the ids and calls `reset_to` with this worker's rows.
    """

    def __init__(self, config: EnvConfig, batch: EnvBatch, first_env: int = 0) -> None:
        self.config = config
        self.batch = batch
        self.num_envs = batch.num_envs
        self.first_env = first_env
        limit = config.max_episode_steps or batch.spec.max_episode_steps
        self.spec = dataclasses.replace(batch.spec, max_episode_steps=limit)
        self.stream = InitialStateStream(
            config.seed, config.num_envs, config.group_size, self.spec.num_initial_states
        )
        n = self.num_envs
        self._running = np.zeros(n, bool)
        self._return = np.zeros(n, np.float32)
        self._length = np.zeros(n, np.int64)
        self._success_once = np.zeros(n, bool)
        self._obs: Obs | None = None
        self._auto_reset_key = 0
        self._chunk_index = 0
        self._keep_frames = False
        self._closed = False

    # -- resets ---------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, initial_state_ids: Sequence[int] | None = None) -> Obs:
        ids, key = self.stream.draw_reset(seed)
        if initial_state_ids is not None:
            ids = check_initial_state_ids(
                initial_state_ids, self.config.num_envs, self.spec.num_initial_states
            )
        return self.reset_to(ids[self.first_env : self.first_env + self.num_envs], key)

    def reset_to(self, initial_state_ids: np.ndarray, auto_reset_key: int) -> Obs:
        """Reset all envs of this batch to `initial_state_ids` [M]; later auto-resets draw from `auto_reset_key`."""
        self._auto_reset_key, self._chunk_index = auto_reset_key, 0
        self._obs = self._reset_rows(np.ones(self.num_envs, bool), np.asarray(initial_state_ids, np.int64))
        return self._obs

    def _reset_rows(self, rows: np.ndarray, ids: np.ndarray) -> Obs:
        obs = self.batch.reset_envs(np.flatnonzero(rows), ids)
        self._running[rows] = True
        self._return[rows] = 0.0
        self._length[rows] = 0
        self._success_once[rows] = False
        return obs

    def record_step_frames(self, enabled: bool) -> None:
        if enabled and self.spec.image_size is None:
            raise ValueError(
                "this env has no main_images to record (use an image observation mode, e.g. rgb)"
            )
        self._keep_frames = enabled

    # -- stepping -------------------------------------------------------------------------------------------
    def chunk_step(self, actions: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if self._obs is None:
            raise RuntimeError("call reset() before chunk_step()")
        actions = torch.as_tensor(actions)
        n, a = self.num_envs, self.spec.action_dim
        if actions.ndim != 3 or actions.shape[0] != n or actions.shape[2] != a:
            raise ValueError(f"actions must be [N={n}, C, A={a}], got {tuple(actions.shape)}")
        chunk = _Chunk(n, actions.shape[1], self._obs)
        for c, step_actions in enumerate(actions.unbind(1)):
            if not self._running.any():
                break
            self._advance(chunk, c, step_actions)
        infos = self._chunk_infos(chunk)
        obs = chunk.obs
        if self.config.auto_reset and chunk.episode_done.any():
            ids = self.stream.auto_reset_ids(self._auto_reset_key, self._chunk_index)
            local = ids[self.first_env : self.first_env + n]
            obs = self._reset_rows(chunk.episode_done, local[chunk.episode_done])
        self._chunk_index += 1
        self._obs = obs
        return (
            obs,
            torch.from_numpy(chunk.rewards),
            torch.from_numpy(chunk.terminations),
            torch.from_numpy(chunk.truncations),
            infos,
        )

    def _advance(self, chunk: _Chunk, c: int, actions: torch.Tensor) -> None:
        """Step c of a chunk: one backend step, then the episode bookkeeping of the envs that were running.

        Masks apply by arithmetic rather than fancy indexing: this runs once per physics step.
        """
        active = self._running.copy()
        obs, reward, terminated, success = self.batch.step(actions, active)
        if self._keep_frames:
            chunk.frames.append(self._frame(obs, active, chunk.frames))
        reward, success = np.where(active, reward, np.float32(0)), success & active
        self._return += reward
        self._length += active
        self._success_once |= success
        chunk.rewards[:, c], chunk.success[:, c] = reward, success
        if not self.config.ignore_terminations:
            chunk.terminations[:, c] = term = active & terminated
        else:
            term = chunk.terminations[:, c]  # all False
        chunk.truncations[:, c] = trunc = active & (self._length >= self.spec.max_episode_steps)
        chunk.obs = obs
        ended = term | trunc
        if ended.any():
            chunk.final_obs = clone_obs(obs) if chunk.final_obs is None else chunk.final_obs
            copy_obs_rows(chunk.final_obs, obs, ended)
            chunk.success_at_end[ended] = success[ended]
            chunk.episode_done |= ended
            self._running[ended] = False

    def _frame(self, obs: Obs, active: np.ndarray, frames: list) -> torch.Tensor:
        """This step's main_images, with the last frame kept for envs that already ended."""
        images = obs["main_images"]
        if active.all():
            return images.clone()
        previous = frames[-1] if frames else self._obs["main_images"]
        keep = torch.as_tensor(active, device=images.device)[:, None, None, None]
        return torch.where(keep, images, previous)

    def _chunk_infos(self, chunk: _Chunk) -> dict:
        episode = {
            "success_once": torch.from_numpy(self._success_once.copy()),
            "success_at_end": torch.from_numpy(chunk.success_at_end),
            "return": torch.from_numpy(self._return.copy()),
            "episode_len": torch.from_numpy(self._length.copy()),
        }
        infos = {
            "episode_done": torch.from_numpy(chunk.episode_done),
            "final_observation": chunk.final_obs if chunk.final_obs is not None else chunk.obs,
            "episode": episode,
            "success": torch.from_numpy(chunk.success),
        }
        if self._keep_frames:
            frames = chunk.frames
            frames += [frames[-1] if frames else self._obs["main_images"]] * (chunk.length - len(frames))
            infos["frames"] = torch.stack(frames, 1)
        return infos

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.batch.close()
