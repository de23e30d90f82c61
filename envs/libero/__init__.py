"""LIBERO behind the vectorised env API (`env.name: libero`).

All five suites (libero_spatial, libero_object, libero_goal, libero_10, libero_90; 130 tasks), one MuJoCo scene
per env, split over `num_workers` processes; groups of envs run the selected tasks in turn. Initial-state ids
index the benchmark's fixed initial states (50 per task): training draws them at random, evaluation passes
explicit ids. Observations: `main_images` (agent view) and `wrist_images`, upright, uint8; `states` (end-effector
position, axis-angle, gripper fingers); `task_descriptions` (the task's instruction). Actions: 7-dim end-effector
delta with the gripper last, -1 open / +1 close (`envs.libero.convert.gripper_from_opening` converts OpenVLA's
[0, 1] opening). See docs/envs.md, "LIBERO".
"""

from envs.libero.offline import LiberoSetupError, configure_environment, ensure_config_file

configure_environment()  # before anything imports MuJoCo: it picks its OpenGL backend at import time
try:  # so that `import libero` never prompts for a config after `import envs.libero`
    ensure_config_file()
except LiberoSetupError:
    pass  # not installed or misconfigured: building an env raises the error, saying what to install

from envs.base import register_env  # noqa: E402
from envs.libero.config import MAX_EPISODE_STEPS, NUM_TASKS, SUITES, LiberoConfig  # noqa: E402
from envs.libero.convert import GRIPPER_CLOSE, GRIPPER_OPEN, gripper_from_opening  # noqa: E402


@register_env("libero", LiberoConfig, processes=True)
def make_libero_batch(config: LiberoConfig, env_ids: list[int]):
    """The backend for envs `env_ids` (global indices: they decide which task each env runs)."""
    from envs.libero.batch import LiberoBatch

    return LiberoBatch(config, env_ids)


__all__ = [
    "GRIPPER_CLOSE",
    "GRIPPER_OPEN",
    "MAX_EPISODE_STEPS",
    "NUM_TASKS",
    "SUITES",
    "LiberoConfig",
    "LiberoSetupError",
    "gripper_from_opening",
    "make_libero_batch",
]
