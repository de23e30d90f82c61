"""ManiSkill3 behind the vectorised env API (`env.name: maniskill`).

CPU backend (`sim_backend: physx_cpu`): one simulator per env, split over `num_workers` processes.
GPU backend (`sim_backend: physx_cuda`): ManiSkill's native batch in one process, with partial resets.
Observation modes: `state` (the task's full state vector as `states`) and `rgb` (`main_images` from the
task's scene camera, `wrist_images` where the robot has a hand camera, proprioception as `states`).
"""

from envs.maniskill.offline import configure_environment

configure_environment()  # before anything imports mani_skill: it reads MS_ASSET_DIR at import time

from envs.base import register_env  # noqa: E402
from envs.maniskill.config import ManiSkillConfig  # noqa: E402
from envs.maniskill.offline import ManiSkillSetupError  # noqa: E402


@register_env("maniskill", ManiSkillConfig, processes=True)
def make_maniskill_batch(config: ManiSkillConfig, env_ids: list[int]):
    """The backend for envs `env_ids`: CPU simulators one by one, or one GPU batch."""
    if config.sim_backend == "physx_cuda":
        from envs.maniskill.gpu import ManiSkillGPUBatch

        return ManiSkillGPUBatch(config, env_ids)
    from envs.maniskill.cpu import ManiSkillCPUBatch

    return ManiSkillCPUBatch(config, env_ids)


__all__ = ["ManiSkillConfig", "ManiSkillSetupError", "make_maniskill_batch"]
