"""Env workers: hold their share of the envs, split into pipeline stages (units), and drive rollouts.

Per chunk step and unit, the env worker waits for the unit's actions, steps those envs, and sends the next
`EnvStep` to the unit's rollout worker. While it simulates unit k, the rollout worker infers unit k+1, whose
observation it already has: with `rollout.pipeline_stages` >= 2 simulation and inference overlap. The env
worker does not know which policy acts: it sends observations and receives actions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from embodied import faults
from embodied.channel import Channel
from embodied.config import EvalConfig, RolloutConfig
from embodied.evaluation import EvalEpisodes
from embodied.nonfinite import check_env_step
from embodied.routing import RolloutPlan, Unit
from embodied.trajectory import EnvStep, to_cpu
from embodied.worker import Worker, WorkerInfo
from embodied.workers.eval_videos import EpisodeVideos
from envs.base import EPISODE_METRICS, EnvConfig, Obs, make_env, select_obs


def unit_seed(seed: int, unit: int) -> int:
    """A distinct initial-state stream per unit, the same whatever the number of workers."""
    return int(np.random.SeedSequence([seed, unit]).generate_state(1)[0])


def step_validity(terminations: torch.Tensor, truncations: torch.Tensor, running: np.ndarray) -> torch.Tensor:
    """bool [n, C]: the env steps that ran: the env was running at the chunk's start and no episode end came
    before the step."""
    done = (terminations | truncations).int()
    before = torch.cumsum(done, dim=1) - done
    return (before == 0) & torch.from_numpy(running)[:, None]


class EnvWorker(Worker):
    def __init__(
        self,
        info: WorkerInfo,
        env: EnvConfig,
        rollout: RolloutConfig,
        plan: RolloutPlan,
        on_nonfinite: str = "stop",
    ) -> None:
        super().__init__(info)
        self.config, self.rollout = env, rollout
        self.on_nonfinite = on_nonfinite  # run.on_nonfinite: a NaN/inf observation stops the run or warns
        self.units: list[Unit] = plan.units_of_env(info.rank)
        self.envs = []
        try:
            for unit in self.units:
                # each unit keeps its envs' tasks (env types with several tasks, e.g. LIBERO)
                unit_config = env.slice_envs(unit.env_start, unit.num_envs).replace(
                    seed=unit_seed(env.seed, unit.index)
                )
                self.envs.append(make_env(unit_config))
        except BaseException:
            self.close()
            raise
        self.obs: list[Obs | None] = [None] * len(self.units)
        self.running = [np.ones(u.num_envs, bool) for u in self.units]
        self.to_rollout: Channel | None = None
        self.from_rollout: Channel | None = None
        self.eval_episodes_done = 0

    def spec(self):
        return self.envs[0].spec

    def connect(self, to_rollout: Channel, from_rollout: Channel) -> None:
        self.to_rollout, self.from_rollout = to_rollout, from_rollout

    def _send(self, unit: Unit, step: EnvStep) -> None:
        if faults.due("env.obs"):
            faults.corrupt_first_float(step.obs)
        step = check_env_step(f"env worker rank {self.info.rank}, unit {unit.index}", step, self.on_nonfinite)
        self.to_rollout.put(to_cpu(step), key=unit.index, rank=unit.rollout_rank)

    def _reset(self, k: int, seed: int | None = None) -> Obs:
        self.obs[k] = self.envs[k].reset(seed=seed)
        self.running[k][:] = True
        return self.obs[k]

    # -- training rollouts ----------------------------------------------------------------------------------------
    def rollout_epoch(self, num_steps: int, reset_seed: int | None = None) -> dict:
        """`num_steps` chunk steps of every unit. Envs reset first when they were never reset, after an
        evaluation, when `rollout.reset_every_epoch`, or when `reset_seed` is given (a resumed run).

        Returns the finished episodes' metrics, the env steps that ran and the seconds spent simulating.
        """
        for k, unit in enumerate(self.units):
            if self.obs[k] is None or self.rollout.reset_every_epoch or reset_seed is not None:
                self._reset(k, None if reset_seed is None else unit_seed(reset_seed, unit.index))
            self._send(unit, EnvStep(self.obs[k]))
        episodes, env_steps, sim_seconds = [], 0, 0.0
        for t in range(num_steps):
            for k, unit in enumerate(self.units):
                actions = self.from_rollout.get(unit.index)
                start = time.perf_counter()
                result = self.envs[k].chunk_step(actions)
                sim_seconds += time.perf_counter() - start
                step, finished = self._outcome(k, result, last=t == num_steps - 1)
                self._send(unit, step)
                episodes.extend(finished)
                env_steps += int(step.valid.sum())
        return {"episodes": episodes, "env_steps": env_steps, "sim_seconds": sim_seconds}

    def _outcome(self, k: int, result: tuple, last: bool) -> tuple[EnvStep, list[dict[str, float]]]:
        """The `EnvStep` for unit k's rollout worker after a chunk, and the metrics of the episodes that ended."""
        obs, rewards, terms, truncs, infos = result
        valid = step_validity(terms, truncs, self.running[k])
        ended = infos["episode_done"]
        if not self.config.auto_reset:
            self.running[k] &= ~ended.numpy()
        final_obs = select_obs(infos["final_observation"], ended.nonzero().flatten()) if ended.any() else None
        self.obs[k] = obs
        step = EnvStep(
            obs, rewards, terms, truncs, valid, final_obs, ended if final_obs is not None else None, last
        )
        return step, _episodes(infos, ended.numpy())

    # -- evaluation -----------------------------------------------------------------------------------------------
    def evaluate(
        self, schedules_per_unit: dict[int, list[list[int]]], eval_config: EvalConfig, video_dir: str | None
    ) -> dict:
        """Evaluate each unit's envs on their initial states (`schedules_per_unit[unit][i]`: env i's list; the
        deterministic actions come from the rollout workers).

        Returns the episodes (with global env index, task id, initial-state id and, in `video_mode=episodes`,
        the video) and the paths of the videos written. The training envs are reset before the next rollout
        epoch.
        """
        self.eval_episodes_done = 0
        trackers = [
            EvalEpisodes.per_env(env, schedules_per_unit.get(unit.index, [[]] * unit.num_envs))
            for env, unit in zip(self.envs, self.units)
        ]
        grid, videos = self._eval_recorders(trackers, eval_config, video_dir)
        active = []
        for k, (unit, tracker) in enumerate(zip(self.units, trackers)):
            obs = tracker.start()
            self.obs[k] = None  # the training episodes are interrupted
            if grid is not None and k == 0 and obs is not None:
                grid.instruction = obs["task_descriptions"][0]
            if videos[k] is not None and obs is not None:
                videos[k].start_round(obs)
            self._send(unit, EnvStep(obs if obs is not None else {}, last=obs is None))
            if obs is not None:
                active.append(k)
        while active:
            for k in list(active):
                obs = self._eval_step(self.units[k], trackers[k], grid if k == 0 else None, videos[k])
                self._send(self.units[k], EnvStep(obs if obs is not None else {}, last=obs is None))
                if obs is None:
                    active.remove(k)
        written = []
        if grid is not None:
            written = grid.write(Path(video_dir))
            self.envs[0].record_step_frames(False)
        for recorder in videos:
            if recorder is not None:
                recorder.close()
                written += [e["video"] for e in recorder.tracker.episodes if "video" in e]
        return {
            "episodes": [self._labelled(e, u) for t, u in zip(trackers, self.units) for e in t.episodes],
            "videos": written,
        }

    def _eval_recorders(self, trackers: list[EvalEpisodes], eval_config: EvalConfig, video_dir: str | None):
        """(grid recorder of unit 0 or None, per-unit episode recorders or Nones) for the eval's video mode."""
        videos: list[EpisodeVideos | None] = [None] * len(trackers)
        if not video_dir or self.envs[0].spec.image_size is None:
            return None, videos
        if eval_config.video_mode == "grid":
            if self.units[0].index != 0:
                return None, videos
            return GridRecorder(self.envs[0], min(eval_config.video_envs, self.units[0].num_envs)), videos
        for k, (tracker, unit) in enumerate(zip(trackers, self.units)):
            videos[k] = EpisodeVideos(
                tracker, Path(video_dir), lambda row, t=tracker, u=unit: self._video_name(t, u, row)
            )
        return None, videos

    def _video_name(self, tracker: EvalEpisodes, unit: Unit, row: int) -> str:
        env = unit.env_start + row
        return f"task{self.config.task_of_env(env):03d}_state{tracker.round_ids[row]}_env{env:03d}"

    def _eval_step(
        self, unit: Unit, tracker: EvalEpisodes, grid: GridRecorder | None, videos: EpisodeVideos | None
    ) -> Obs | None:
        """One chunk of one unit's evaluation: actions in, videos fed; returns the next observation or None."""
        actions = self.from_rollout.get(unit.index)
        tracked, round_before, ended_before = tracker.tracked.copy(), tracker.round, len(tracker.episodes)
        obs, infos = tracker.step(actions)
        if grid is not None:
            grid.add(infos)
        if videos is not None:
            paths = videos.add(infos, tracked)
            for episode in tracker.episodes[ended_before:]:
                if episode["env"] in paths:
                    episode["video"] = paths[episode["env"]]
            if obs is not None and tracker.round != round_before:
                videos.start_round(obs)
        self.eval_episodes_done += len(tracker.episodes) - ended_before
        return obs

    def _labelled(self, episode: dict, unit: Unit) -> dict:
        """An episode with its global env index and task id."""
        env = unit.env_start + episode["env"]
        return {**episode, "env": env, "task_id": self.config.task_of_env(env)}

    def eval_progress(self) -> int:
        """Episodes finished so far by the running evaluation (called while `evaluate` runs)."""
        return self.eval_episodes_done

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def _episodes(infos: dict, done: np.ndarray) -> list[dict[str, float]]:
    return [{k: float(infos["episode"][k][i]) for k in EPISODE_METRICS} for i in np.flatnonzero(done)]


class GridRecorder:
    """Frames of the first `count` envs until each one's first episode ends, written as one grid mp4."""

    def __init__(self, env, count: int) -> None:
        env.record_step_frames(True)
        self.count = count
        self.instruction = ""
        self.frames: list[list[np.ndarray]] = [[] for _ in range(count)]
        self.done = np.zeros(count, bool)
        self.success = np.zeros(count, bool)

    def add(self, infos: dict) -> None:
        from envs.video import annotate

        frames = infos["frames"]  # [n, C, H, W, 3]
        ends = infos["episode_done"].numpy()
        for i in np.flatnonzero(~self.done[: self.count]):
            for c in range(frames.shape[1]):
                self.success[i] |= bool(infos["success"][i, c])
                status = "success" if self.success[i] else "running"
                self.frames[i].append(
                    annotate(frames[i, c].numpy(), self.instruction, bool(infos["success"][i, c]), status)
                )
            if ends[i]:
                self.done[i] = True

    def write(self, folder: Path) -> list[str]:
        from envs.video import tile, write_mp4

        if not any(self.frames):
            return []
        length = max(len(f) for f in self.frames)
        padded = [f + [f[-1]] * (length - len(f)) for f in self.frames if f]
        columns = int(np.ceil(np.sqrt(len(padded))))
        path = folder / "eval_grid.mp4"
        write_mp4(path, [tile([p[t] for p in padded], columns) for t in range(length)], fps=10)
        return [str(path)]
