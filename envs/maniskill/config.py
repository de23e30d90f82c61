"""Configuration of the ManiSkill3 env type (`env.name: maniskill`)."""

from __future__ import annotations

from dataclasses import dataclass

from algorithms.schema import ConfigError, param
from envs.base import EnvConfig

CONTROL_MODES = ("pd_ee_delta_pose", "pd_ee_delta_pos", "pd_joint_delta_pos", "pd_joint_pos")


@dataclass(frozen=True)
class ManiSkillConfig(EnvConfig):
    """A ManiSkill3 task; on CPU one simulator per env spread over `num_workers` processes, on GPU one batch."""

    name: str = param("maniskill", help="registered env type")
    task: str = param("PushCube-v1", help="ManiSkill task id, e.g. PushCube-v1, PickCube-v1, StackCube-v1")
    obs_mode: str = param(
        "state",
        help="state: full state vector; rgb: camera images + proprioception",
        choices=("state", "rgb"),
    )
    control_mode: str = param(
        "pd_ee_delta_pose", help="robot controller (sets the action space)", choices=CONTROL_MODES
    )
    reward_mode: str = param(
        "normalized_dense", help="task reward", choices=("normalized_dense", "dense", "sparse")
    )
    sim_backend: str = param(
        "physx_cpu",
        help="physx_cpu: one env per process; physx_cuda: native GPU batch",
        choices=("physx_cpu", "physx_cuda"),
    )
    render_backend: str = param(
        "auto", help="auto: cpu with physx_cpu, gpu with physx_cuda", choices=("auto", "cpu", "gpu")
    )
    image_size: int = param(128, help="height and width of every camera image in rgb mode", ge=16, le=1024)
    robot_uids: str | None = param(
        None, help="robot; null: the task's default (panda_wristcam adds a wrist camera)"
    )
    instruction: str | None = param(None, help="language instruction; null: the built-in one for the task")
    gpu_reset: str = param(
        "batched",
        help="physx_cuda resets: batched (2 calls; same seed + num_envs, same states) or exact (id = state anywhere)",
        choices=("batched", "exact"),
    )

    def check(self) -> None:
        super().check()
        if self.sim_backend == "physx_cuda" and self.num_workers != 1:
            raise ConfigError(
                f"{{section}}num_workers={self.num_workers} with sim_backend=physx_cuda: the GPU backend batches "
                "all envs in one process; set num_workers=1"
            )

    @property
    def resolved_render_backend(self) -> str:
        if self.render_backend != "auto":
            return self.render_backend
        return "cpu" if self.sim_backend == "physx_cpu" else "gpu"
