"""Demonstrations from ManiSkill's motion-planning solutions, as the suite's ManiSkill env shows them to a policy.

Per episode (one reset seed):
  1. plan: ManiSkill's solution for the task (`mani_skill.examples.motionplanning.panda`) runs in a planner env
     (obs_mode none, control mode pd_joint_pos, the solutions' own mode), with `envs.maniskill.planner`'s screw
     planner; its pd_joint_pos actions are recorded;
  2. convert: the suite's env for the requested obs/control mode (`make_raw_env`, reset with `seeded_reset` as
     the suite resets) is driven by ManiSkill's own converter (`mani_skill.trajectory.utils.actions.conversion
     .from_pd_joint_pos`, what `replay_trajectory` uses), which replays the plan in the planner env step by step
     and computes the target mode's action from it; pd_joint_pos plans are replayed as they are;
  3. record what the suite's env gives the policy before each converted action (`ObsAdapter`: `states`,
     `main_images`), up to the first step at which the task succeeds (the suite's episode ends there); an
     episode that never succeeds after conversion is dropped.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from envs.demos import DemoInfo, DemoWriter
from envs.maniskill.config import CONTROL_MODES, ManiSkillConfig

PLANNER_CONTROL_MODE = "pd_joint_pos"
OBS_MODES = ("state", "rgb")


class DemoRequestError(ValueError):
    """A task, observation mode or control mode demos cannot be made for; the message lists what can."""


def planner_solutions() -> dict[str, Callable]:
    """ManiSkill's motion-planning solutions by task id (its own list, `panda/run.py`'s MP_SOLUTIONS)."""
    from mani_skill.examples.motionplanning.panda.run import MP_SOLUTIONS

    return dict(MP_SOLUTIONS)


def _replay(actions: list[np.ndarray], planner_env, env) -> None:
    """The planner's own control mode: its actions as they are."""
    for action in actions:
        env.step(action)


def _convert_with_maniskill(output_mode: str, actions: list[np.ndarray], planner_env, env) -> None:
    from mani_skill.trajectory.utils.actions.conversion import from_pd_joint_pos

    from_pd_joint_pos(output_mode, np.stack(actions), planner_env, env)


# how pd_joint_pos plans become each control mode the suite's ManiSkill env offers
CONVERSIONS: dict[str, Callable] = {
    mode: _replay if mode == PLANNER_CONTROL_MODE else partial(_convert_with_maniskill, mode)
    for mode in CONTROL_MODES
}


def check_request(task: str, obs_mode: str, control_mode: str) -> None:
    """Raise DemoRequestError naming what is wrong and what is available."""
    from mani_skill.utils.registration import REGISTERED_ENVS

    from algorithms.registry import did_you_mean

    solutions = sorted(planner_solutions())
    if task not in REGISTERED_ENVS:
        raise DemoRequestError(
            f"unknown ManiSkill task {task!r}.{did_you_mean(task, solutions)} "
            f"Tasks with a motion-planning solution: {', '.join(solutions)}"
        )
    if task not in solutions:
        raise DemoRequestError(
            f"ManiSkill has no motion-planning solution for {task!r}. Tasks with one: {', '.join(solutions)}"
        )
    if obs_mode not in OBS_MODES:
        raise DemoRequestError(f"obs mode {obs_mode!r} is not supported; available: {', '.join(OBS_MODES)}")
    if control_mode not in CONVERSIONS:
        raise DemoRequestError(
            f"control mode {control_mode!r} cannot be converted from the planner's {PLANNER_CONTROL_MODE}; "
            f"available: {', '.join(CONVERSIONS)}"
        )


def _action_log(env):
    """`env` wrapped so that the actions of each episode (since its last reset) are kept in `.actions`."""
    import gymnasium as gym

    class ActionLog(gym.Wrapper):
        def reset(self, **kwargs):
            self.actions: list[np.ndarray] = []
            return self.env.reset(**kwargs)

        def step(self, action):
            self.actions.append(np.asarray(action, np.float32).reshape(-1))
            return self.env.step(action)

    return ActionLog(env)


def _step_recorder(env, adapter):
    """The suite's raw env, recording per step the action (as the float32 [1, A] tensor the suite's env passes)
    and the suite's observation and success flag after it."""
    import gymnasium as gym
    import torch

    class StepRecorder(gym.Wrapper):
        def start(self, raw_obs) -> None:
            self.observations = [_numpy_obs(adapter(raw_obs))]
            self.actions: list[np.ndarray] = []
            self.success: list[bool] = []

        def step(self, action):
            action = torch.as_tensor(np.asarray(action, np.float32).reshape(1, -1))
            raw, reward, terminated, truncated, info = self.env.step(action)
            self.actions.append(action[0].numpy())
            self.observations.append(_numpy_obs(adapter(raw)))
            self.success.append(bool(info["success"].item()) if "success" in info else False)
            return raw, reward, terminated, truncated, info

    return StepRecorder(env)


def _numpy_obs(obs: dict) -> dict[str, np.ndarray]:
    return {key: value[0].cpu().numpy().copy() for key, value in obs.items()}


@dataclass
class EpisodeOutcome:
    """One seed's result: the demo, or why there is none (`planned`: the planner's own episode succeeded)."""

    seed: int
    planned: bool
    demo: dict | None = None
    reason: str = ""


@dataclass
class CollectionSummary:
    """What a collection run did: attempts (seeds tried), plans that succeeded, episodes kept after conversion."""

    attempts: int = 0
    planned: int = 0
    kept: int = 0
    lengths: list[int] = field(default_factory=list)
    failures: dict[int, str] = field(default_factory=dict)  # seed -> why no demo came of it
    seconds: float = 0.0

    @property
    def planner_success_rate(self) -> float:
        return self.planned / max(self.attempts, 1)

    @property
    def conversion_success_rate(self) -> float:
        return self.kept / max(self.planned, 1)

    @property
    def demos_per_minute(self) -> float:
        return 60 * self.kept / max(self.seconds, 1e-9)


class DemoCollector:
    """A planner env and the suite's env for `config`; `episode(seed)` makes the demo of one seed.

    `speed` scales the joint velocity and acceleration limits of ManiSkill's solvers (1: as ManiSkill plans)."""

    def __init__(self, config: ManiSkillConfig, speed: float = 1.0) -> None:
        import gymnasium as gym

        from envs.maniskill.common import ObsAdapter, make_raw_env
        from envs.maniskill.tasks import instruction_for

        check_request(config.task, config.obs_mode, config.control_mode)
        self.config, self.speed = config, speed
        self.solve = planner_solutions()[config.task]
        self.convert = CONVERSIONS[config.control_mode]
        planner_kwargs = dict(obs_mode="none", control_mode=PLANNER_CONTROL_MODE, sim_backend="physx_cpu")
        planner_kwargs["render_backend"] = config.resolved_render_backend
        if config.robot_uids is not None:
            planner_kwargs["robot_uids"] = config.robot_uids
        raw = make_raw_env(config, num_envs=1)
        self.env = _step_recorder(raw, ObsAdapter(raw, config.obs_mode))
        self.planner_env = _action_log(gym.make(config.task, **planner_kwargs))
        first = ObsAdapter(raw, config.obs_mode)(raw._last_obs)
        self.info = DemoInfo(
            env_id=config.task,
            obs_mode=config.obs_mode,
            control_mode=config.control_mode,
            fps=int(raw.control_freq),
            state_dim=int(first["states"].shape[-1]),
            action_dim=int(raw.single_action_space.shape[0]),
            image_size=config.image_size if config.obs_mode == "rgb" else None,
            instruction=instruction_for(config.task, config.instruction),
            source=f"ManiSkill motion-planning solution ({PLANNER_CONTROL_MODE}, screw planner) converted to "
            f"{config.control_mode} with mani_skill.trajectory's conversion",
        )

    def plan(self, seed: int) -> list[np.ndarray] | str:
        """The planner's pd_joint_pos actions for `seed`, or why planning failed."""
        from envs.maniskill.planner import screw_planning

        try:
            with (
                screw_planning(self.speed),
                contextlib.redirect_stdout(io.StringIO()),
            ):  # the solver prints failures
                result = self.solve(self.planner_env, seed=seed, debug=False, vis=False)
        except (
            Exception
        ) as exc:  # a solution that cannot be planned fails that seed only, as in ManiSkill's run.py
            return f"planner error: {type(exc).__name__}: {exc}"
        if result == -1:
            return "no screw motion to a pose of the solution"
        if not bool(result[-1]["success"].item()):
            return "the plan ran but the task did not succeed"
        return list(self.planner_env.actions)

    def episode(self, seed: int) -> EpisodeOutcome:
        """The demo of `seed` (states, actions, main_images in rgb mode) in the suite's obs and control mode."""
        from envs.maniskill.cpu import seeded_reset

        plan = self.plan(seed)
        if isinstance(plan, str):
            return EpisodeOutcome(seed, planned=False, reason=plan)
        self.planner_env.reset(seed=seed)
        raw_obs, _ = seeded_reset(self.env.unwrapped, seed)
        self.env.start(raw_obs)
        self.convert(plan, self.planner_env, self.env)
        if not any(self.env.success):
            reason = f"converted to {self.config.control_mode}, the actions no longer succeed"
            return EpisodeOutcome(seed, planned=True, reason=reason)
        length = self.env.success.index(True) + 1  # the suite's episode ends at the first success
        observations = self.env.observations[:length]
        demo = {
            "states": np.stack([o["states"] for o in observations]),
            "actions": np.stack(self.env.actions[:length]),
        }
        if self.config.obs_mode == "rgb":
            demo["main_images"] = np.stack([o["main_images"] for o in observations])
        return EpisodeOutcome(seed, planned=True, demo=demo)

    def collect(
        self, writer: DemoWriter, num_episodes: int, first_seed: int, max_attempts: int, progress=None
    ) -> CollectionSummary:
        """Seeds first_seed, first_seed + 1, ... until `num_episodes` demos are written (or `max_attempts`
        seeds were tried); `progress(summary)` after each seed. `self.summary` is kept up to date, so an
        interrupted collection still says what it did."""
        summary, started = CollectionSummary(), time.perf_counter()
        self.summary = summary
        for seed in range(first_seed, first_seed + max_attempts):
            if summary.kept >= num_episodes:
                break
            outcome = self.episode(seed)
            summary.attempts += 1
            summary.planned += outcome.planned
            if outcome.demo is None:
                summary.failures[seed] = outcome.reason
            else:
                writer.add_episode(**outcome.demo, task=self.info.instruction, seed=seed, success=True)
                summary.kept += 1
                summary.lengths.append(len(outcome.demo["actions"]))
            summary.seconds = time.perf_counter() - started
            if progress is not None:
                progress(summary)
        return summary

    def close(self) -> None:
        self.env.close()
        self.planner_env.close()
