"""Running ManiSkill3 with no internet: the project's asset folder, up-front asset checks, a Vulkan hint.

ManiSkill reads `MS_ASSET_DIR` once, when `mani_skill` is first imported, and on a missing asset it prompts
(or, with MS_SKIP_ASSET_DOWNLOAD_PROMPT=1, starts a download that fails offline half-way through env creation).
`configure_environment()` runs before that import; `check_assets()` fails before any simulator is built.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ASSET_DIR = REPO / ".assets" / "maniskill"

VULKAN_HELP = (
    "SAPIEN (ManiSkill's simulator) needs a Vulkan device even for state observations, and none usable was found "
    "({error}). Without a GPU, install Mesa's lavapipe (Mesa >= 25; Debian 12's Mesa 22 is too old): on Debian 12 "
    "add the bookworm-backports source, then `apt-get install -y libvulkan1 vulkan-tools` and "
    "`apt-get install -y -t bookworm-backports mesa-vulkan-drivers` (bash scripts/setup.sh does this as root); "
    "check with `vulkaninfo --summary`. With an NVIDIA GPU, install its driver's Vulkan ICD. "
    "See ../shared/ENVIRONMENT.md."
)


class ManiSkillSetupError(RuntimeError):
    """ManiSkill cannot run here as configured (missing assets, no Vulkan device, unknown task)."""


def configure_environment() -> Path:
    """Point ManiSkill at the project's asset folder (unless MS_ASSET_DIR is set) and never prompt."""
    os.environ.setdefault("MS_ASSET_DIR", str(DEFAULT_ASSET_DIR))
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    return Path(os.environ["MS_ASSET_DIR"])


def _default_robot(task_cls) -> str | None:
    default = inspect.signature(task_cls.__init__).parameters.get("robot_uids")
    return default.default if default is not None and isinstance(default.default, str) else None


def missing_assets(task: str, robot_uids: str | None) -> list[str]:
    """The ManiSkill data sources `task` (with this robot) needs that are not in the asset folder."""
    from mani_skill.utils import assets
    from mani_skill.utils.registration import REGISTERED_ENVS

    spec = REGISTERED_ENVS[task]
    groups = list(spec.asset_download_ids or [])
    robot = robot_uids or _default_robot(spec.cls)
    if robot in assets.DATA_GROUPS:
        groups.append(robot)
    needed: set[str] = set()
    for group in groups:
        if group in assets.DATA_SOURCES:
            needed.add(group)
        elif group in assets.DATA_GROUPS:
            needed.update(assets.expand_data_group_into_individual_data_source_ids(group))
    return sorted(s for s in needed if not assets.is_data_source_downloaded(s))


def check_task(task: str, robot_uids: str | None) -> None:
    """Raise ManiSkillSetupError for an unknown task or one whose assets are not on this machine."""
    from mani_skill.utils.registration import REGISTERED_ENVS

    from algorithms.registry import did_you_mean

    if task not in REGISTERED_ENVS:
        raise ManiSkillSetupError(
            f"unknown ManiSkill task {task!r}.{did_you_mean(task, list(REGISTERED_ENVS))} Tasks that run offline "
            "here include PushCube-v1, PickCube-v1, StackCube-v1, PullCube-v1, PokeCube-v1, PlaceSphere-v1, "
            "LiftPegUpright-v1, PegInsertionSide-v1, PushT-v1, RollBall-v1, StackPyramid-v1, PlugCharger-v1"
        )
    missing = missing_assets(task, robot_uids)
    if missing:
        from mani_skill.utils import assets

        where = ", ".join(
            f"{m} -> {assets.DATA_SOURCES[m].output_dir / assets.DATA_SOURCES[m].target_path}"
            for m in missing
        )
        raise ManiSkillSetupError(
            f"ManiSkill task {task!r} needs assets that are not downloaded: {where}. Nothing is downloaded at run "
            f"time; on a machine with internet run `python -m mani_skill.utils.download_asset {task}` with "
            f"MS_ASSET_DIR={os.environ.get('MS_ASSET_DIR', DEFAULT_ASSET_DIR)}, or pick a task that ships with "
            "mani-skill (PushCube-v1, PickCube-v1, StackCube-v1, ...)"
        )


def is_vulkan_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("vk::", "vulkan", "physical device", "errorincompatibledriver"))
