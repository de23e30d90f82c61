"""Building a ManiSkill env from a config and turning its observations into the suite's contract."""

from __future__ import annotations

import torch

from envs.base import EnvSpec, Obs
from envs.maniskill.config import ManiSkillConfig
from envs.maniskill.offline import VULKAN_HELP, ManiSkillSetupError, check_task, is_vulkan_error
from envs.maniskill.tasks import MAIN_CAMERA, WRIST_CAMERAS


def make_raw_env(config: ManiSkillConfig, num_envs: int):
    """The unwrapped ManiSkill env (`BaseEnv`) for `config`, holding `num_envs` envs (1 on the CPU backend)."""
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401  (registers the tasks)

    check_task(config.task, config.robot_uids)
    kwargs = dict(
        num_envs=num_envs,
        obs_mode=config.obs_mode,
        control_mode=config.control_mode,
        reward_mode=config.reward_mode,
        sim_backend=config.sim_backend,
        render_backend=config.resolved_render_backend,
    )
    if config.obs_mode == "rgb":
        kwargs["sensor_configs"] = dict(width=config.image_size, height=config.image_size)
    if config.robot_uids is not None:
        kwargs["robot_uids"] = config.robot_uids
    try:
        env = gym.make(config.task, **kwargs)
    except RuntimeError as exc:
        if is_vulkan_error(exc):
            raise ManiSkillSetupError(VULKAN_HELP.format(error=exc)) from exc
        raise
    return env.unwrapped


class ObsAdapter:
    """Raw ManiSkill observations (batched torch tensors) -> {main_images, wrist_images, states}."""

    def __init__(self, env, obs_mode: str) -> None:
        self.obs_mode = obs_mode
        cameras = list(env.unwrapped._sensors) if obs_mode == "rgb" else []
        if obs_mode == "rgb" and MAIN_CAMERA not in cameras:
            raise ManiSkillSetupError(
                f"task {env.spec.id if env.spec else env} has no {MAIN_CAMERA!r} camera "
                f"(its cameras: {cameras}); rgb mode needs one"
            )
        self.wrist_camera = next((c for c in WRIST_CAMERAS if c in cameras), None)

    def __call__(self, raw) -> Obs:
        if self.obs_mode == "state":
            return {"states": raw.float()}
        from mani_skill.utils import common

        sensors = raw["sensor_data"]
        obs = {
            "main_images": sensors[MAIN_CAMERA]["rgb"],
            "states": common.flatten_state_dict(
                {"agent": raw["agent"], "extra": raw["extra"]}, use_torch=True
            ).float(),
        }
        if self.wrist_camera is not None:
            obs["wrist_images"] = sensors[self.wrist_camera]["rgb"]
        return obs


def build_spec(env, config: ManiSkillConfig, first_obs: Obs) -> EnvSpec:
    from mani_skill.utils.registration import REGISTERED_ENVS

    space = env.single_action_space
    images = first_obs.get("main_images")
    return EnvSpec(
        action_dim=int(space.shape[0]),
        action_low=tuple(float(x) for x in space.low),
        action_high=tuple(float(x) for x in space.high),
        state_dim=int(first_obs["states"].shape[-1]),
        image_size=(int(images.shape[1]), int(images.shape[2])) if images is not None else None,
        has_wrist_image="wrist_images" in first_obs,
        max_episode_steps=int(REGISTERED_ENVS[config.task].max_episode_steps or 100),
        num_initial_states=None,
    )


def success_flags(info: dict, num_envs: int, device) -> torch.Tensor:
    """The task's success flag [num_envs] (all False for tasks without one)."""
    success = info.get("success")
    return success if success is not None else torch.zeros(num_envs, dtype=torch.bool, device=device)
