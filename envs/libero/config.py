"""Configuration of the LIBERO env type (`env.name: libero`) and the facts about its suites."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.schema import ConfigError, param
from envs.base import EnvConfig

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
NUM_TASKS = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
# Time limits in policy steps, as in OpenVLA's, OpenVLA-OFT's and RLinf's LIBERO evaluations: a little more
# than the longest human demonstration of the suite (193, 254, 270, 505 and 373 steps).
MAX_EPISODE_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}


@dataclass(frozen=True)
class LiberoConfig(EnvConfig):
    """LIBERO tasks of one suite, one MuJoCo simulator per env, split over `num_workers` processes.

    Tasks go to groups of `group_size` consecutive envs in turn (group g runs task `task_ids[g % T]`), so every
    member of a group runs the same task and every selected task gets at least one group.
    """

    name: str = param("libero", help="registered env type")
    num_envs: int = param(10, help="number of parallel envs (at least one group per selected task)", ge=1)
    suite: str = param("libero_spatial", help="LIBERO task suite", choices=SUITES)
    task_ids: tuple[int, ...] | None = param(
        None, help="tasks of the suite to run (0-based ids in the suite's order); null: all of them"
    )
    image_size: int = param(128, help="height and width of both camera images", ge=16, le=1024)
    wrist_image: bool = param(
        True, help="also render the wrist camera (wrist_images); false halves render time"
    )
    shadows: bool = param(
        False, help="lights cast shadows; LIBERO's scenes have none (as in its datasets); costly on CPU"
    )
    gripper: Literal["libero", "opening"] = param(
        "libero",
        help="the gripper entry of the actions: libero = -1 open / +1 close; opening = an opening in [0, 1] "
        "(1 = open, OpenVLA / OpenVLA-OFT LIBERO checkpoints), converted and binarised as their evaluations do",
    )
    settle_steps: int = param(
        10, help="no-op steps (gripper open) after each reset so objects come to rest; not counted", ge=0
    )

    def check(self) -> None:
        super().check()
        num_tasks = NUM_TASKS[self.suite]
        tasks = self.selected_task_ids
        if not tasks:
            raise ConfigError("{section}task_ids is empty: list at least one task, or null for all of them")
        bad = [t for t in tasks if not 0 <= t < num_tasks]
        if bad:
            raise ConfigError(
                f"{{section}}task_ids has {bad}, outside {self.suite}'s tasks 0..{num_tasks - 1}"
            )
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"{{section}}task_ids={list(tasks)} lists a task twice")
        groups = self.num_envs // self.group_size
        if groups < len(tasks):
            raise ConfigError(
                f"{{section}}num_envs={self.num_envs} with group_size={self.group_size} gives {groups} group(s), "
                f"too few for the {len(tasks)} selected task(s) of {self.suite} (each group runs one task): "
                f"set num_envs to at least {len(tasks) * self.group_size}, or select fewer tasks, "
                f"e.g. task_ids=[{', '.join(map(str, tasks[:groups]))}]"
            )

    @property
    def selected_task_ids(self) -> tuple[int, ...]:
        """The task ids this config runs, in order."""
        return self.task_ids if self.task_ids is not None else tuple(range(NUM_TASKS[self.suite]))

    def with_task_ids(self, task_ids: tuple[int, ...]) -> LiberoConfig:
        return self.replace(task_ids=tuple(task_ids))

    def task_of_env(self, env_id: int) -> int:
        """The task id (in the suite) that global env `env_id` runs: groups take the selected tasks in turn."""
        tasks = self.selected_task_ids
        return tasks[(env_id // self.group_size) % len(tasks)]

    def slice_envs(self, start: int, count: int) -> LiberoConfig:
        """Envs `start .. start + count - 1` on their own, each keeping its task: the tasks of their groups, in
        turn from the first one (so `sliced.task_of_env(i) == self.task_of_env(start + i)`)."""
        if start % self.group_size or count % self.group_size:
            raise ValueError(
                f"a slice of envs must hold whole groups of {self.group_size}, not {start}+{count}"
            )
        tasks, first_group = self.selected_task_ids, start // self.group_size
        groups = min(count // self.group_size, len(tasks))
        turn = tuple(tasks[(first_group + g) % len(tasks)] for g in range(groups))
        return self.replace(num_envs=count, task_ids=turn)
