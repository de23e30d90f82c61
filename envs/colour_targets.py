"""A built-in image-and-language toy env for learning checks of VLA policies (`env.name: colour_targets`).

Several coloured discs lie on a dark square; the instruction names one colour ("move the cursor to the red
target"); the agent moves a white cursor with a 2-D velocity and succeeds when the cursor is inside the named
disc. The instruction and the image are both needed: the named colour changes from episode to episode and its
position is only visible in the image. Numpy only, all envs in one process: thousands of env steps per second.

Reward: 10 x the decrease of the distance to the named target per step (so heading straight there earns ~10 per
unit of distance), plus 1 on success, which ends the episode. Initial-state ids are seeds: id s always
gives the same targets, colours, instruction and cursor start.

Two settings decide how much a policy must look. `layout: scatter` (the default) places targets and cursor
anywhere; the cursor position (the state) and a sweeping habit already succeed often without the image.
`layout: ring` starts the cursor at the centre with the K targets evenly spaced on a circle around it (random
rotation and colours), and `wrong_target_fails: true` ends an episode as a failure (reward -1) when the cursor
enters a target that is not the named one. Together they bound what a policy that ignores the image can reach
at 1/K (it cannot know which target it will touch first) and what one that ignores the instruction can reach at
1/K too: success above 1/K needs both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algorithms.schema import ConfigError, param
from envs.base import EnvBatch, EnvConfig, EnvSpec, Obs, register_env

PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 220),
}
COLOUR_NAMES = tuple(PALETTE)
COLOURS = np.array([PALETTE[c] for c in COLOUR_NAMES], np.uint8)
BACKGROUND = np.array((30, 30, 30), np.uint8)
CURSOR = np.array((255, 255, 255), np.uint8)


@dataclass(frozen=True)
class ColourTargetsConfig(EnvConfig):
    name: str = param("colour_targets", help="registered env type")
    num_targets: int = param(
        3, help="coloured targets in each scene (distinct colours)", ge=1, le=len(PALETTE)
    )
    num_colours: int = param(
        len(PALETTE),
        help="colours drawn from (the first of red, green, blue, yellow, magenta, cyan)",
        ge=1,
        le=len(PALETTE),
    )
    image_size: int = param(64, help="height and width of main_images", ge=16, le=512)
    target_radius: float = param(
        0.1, help="radius of a target disc, in units of the image width", gt=0, le=0.2
    )
    max_speed: float = param(0.08, help="cursor displacement per step at action magnitude 1", gt=0, le=1)
    action_dim: int = param(
        2, help="2: (dx, dy); 7: the VLA-style layout, dims 2..6 are ignored", choices=(2, 7)
    )
    time_limit: int = param(
        40, help="the task's default episode length (max_episode_steps overrides it)", ge=1
    )
    layout: str = param(
        "scatter",
        help="scatter: targets and cursor anywhere; ring: cursor at the centre, targets evenly on a circle",
        choices=("scatter", "ring"),
    )
    ring_radius: float = param(0.3, help="layout ring: distance of the targets from the centre", gt=0, lt=0.5)
    ring_rotation: str = param(
        "random",
        help="layout ring: random: the ring turned by a random angle per scene; fixed: the first target to the "
        "right of the centre (with 2 targets: one left, one right)",
        choices=("random", "fixed"),
    )
    wrong_target_fails: bool = param(
        False, help="entering a target that is not the named one ends the episode as a failure (reward -1)"
    )

    def check(self) -> None:
        super().check()
        if self.num_colours < self.num_targets:
            raise ConfigError(
                f"{{section}}num_colours={self.num_colours} < num_targets={self.num_targets}: the targets of a "
                "scene have distinct colours; raise num_colours"
            )
        if self.layout == "ring":
            self._check_ring()
        elif self.num_targets * (2 * self.target_radius) ** 2 * 4 > 0.8:
            raise ConfigError(
                f"{{section}}num_targets={self.num_targets} discs of target_radius={self.target_radius} do not "
                "fit apart on the unit square; lower either"
            )

    def _check_ring(self) -> None:
        r = self.target_radius
        if self.ring_radius + r > 0.5:
            raise ConfigError(
                f"{{section}}ring_radius={self.ring_radius} + target_radius={r} puts targets outside the image; "
                "keep their sum at most 0.5"
            )
        if self.ring_radius <= 2 * r:  # this also keeps up to 6 evenly spaced targets apart
            raise ConfigError(
                f"{{section}}ring_radius={self.ring_radius} must exceed 2 x target_radius={r}: the cursor starts "
                "at the centre, outside every target"
            )


def sample_scene(
    seed: int,
    num_targets: int,
    radius: float,
    ring_radius: float | None = None,
    num_colours: int = len(PALETTE),
    random_rotation: bool = True,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Target centres [K, 2], their colour indices [K], the named target, the cursor start [2], from `seed`.
    With `ring_radius`, the ring layout: cursor at the centre, targets evenly on that circle."""
    rng = np.random.default_rng(seed)
    colours = rng.choice(num_colours, size=num_targets, replace=False)
    if ring_radius is not None:
        turn = rng.uniform(0, 2 * np.pi) if random_rotation else 0.0
        angles = turn + 2 * np.pi * np.arange(num_targets) / num_targets
        centres = 0.5 + ring_radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return centres, colours, int(rng.integers(num_targets)), np.array([0.5, 0.5])
    centres = np.zeros((num_targets, 2))
    placed = 0
    while placed < num_targets:  # rejection sampling; the config check keeps this short
        p = rng.uniform(radius, 1 - radius, size=2)
        if placed == 0 or np.min(np.linalg.norm(centres[:placed] - p, axis=1)) > 2.5 * radius:
            centres[placed] = p
            placed += 1
    goal = int(rng.integers(num_targets))
    while True:
        cursor = rng.uniform(0.02, 0.98, size=2)
        if np.linalg.norm(cursor - centres[goal]) > 2 * radius:
            return centres, colours, goal, cursor


class ColourTargetsBatch(EnvBatch):
    def __init__(self, config: ColourTargetsConfig, env_ids: list[int]) -> None:
        self.config = config
        m, k, s = len(env_ids), config.num_targets, config.image_size
        self.num_envs = m
        self.centres = np.zeros((m, k, 2))
        self.colours = np.zeros((m, k), np.int64)
        self.goal = np.zeros(m, np.int64)
        self.cursor = np.zeros((m, 2))
        self.scene = np.zeros((m, s, s, 3), np.uint8)  # the targets, drawn once per episode
        self.instructions = [""] * m
        pixel = (np.arange(s) + 0.5) / s
        self._grid_x, self._grid_y = np.meshgrid(pixel, pixel)  # [s, s]: x along columns, y along rows
        self.spec = EnvSpec(
            action_dim=config.action_dim,
            action_low=(-1.0,) * config.action_dim,
            action_high=(1.0,) * config.action_dim,
            state_dim=2,
            image_size=(s, s),
            has_wrist_image=False,
            max_episode_steps=config.time_limit,
            num_initial_states=None,
        )

    def _distance(self) -> np.ndarray:
        return np.linalg.norm(self.cursor - self.centres[np.arange(self.num_envs), self.goal], axis=1)

    def _draw_scene(self, row: int) -> None:
        img = self.scene[row]
        img[:] = BACKGROUND
        r2 = self.config.target_radius**2
        for centre, colour in zip(self.centres[row], self.colours[row]):
            inside = (self._grid_x - centre[0]) ** 2 + (self._grid_y - centre[1]) ** 2 <= r2
            img[inside] = COLOURS[colour]

    def _obs(self) -> Obs:
        s = self.config.image_size
        images = self.scene.copy()
        # a 3x3-pixel white cursor (clipped at the border), drawn with one fancy-indexed write for all envs
        centre = np.clip((self.cursor * s).astype(np.int64), 0, s - 1)
        offsets = np.array([-1, 0, 1])
        rows = np.clip(centre[:, 1, None, None] + offsets[None, :, None], 0, s - 1)
        cols = np.clip(centre[:, 0, None, None] + offsets[None, None, :], 0, s - 1)
        env = np.arange(self.num_envs)[:, None, None]
        images[env, rows, cols] = CURSOR
        return {
            "main_images": torch.from_numpy(images),
            "states": torch.from_numpy(self.cursor.astype(np.float32)),
            "task_descriptions": list(self.instructions),
        }

    def reset_envs(self, env_ids: np.ndarray, initial_state_ids: np.ndarray) -> Obs:
        cfg = self.config
        for row, seed in zip(env_ids.tolist(), initial_state_ids.tolist()):
            ring = cfg.ring_radius if cfg.layout == "ring" else None
            centres, colours, goal, cursor = sample_scene(
                seed, cfg.num_targets, cfg.target_radius, ring, cfg.num_colours, cfg.ring_rotation == "random"
            )
            self.centres[row], self.colours[row], self.goal[row], self.cursor[row] = (
                centres,
                colours,
                goal,
                cursor,
            )
            self.instructions[row] = f"move the cursor to the {COLOUR_NAMES[colours[goal]]} target"
            self._draw_scene(row)
        return self._obs()

    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        before = self._distance()
        velocity = np.clip(actions[:, :2].detach().cpu().numpy().astype(np.float64), -1.0, 1.0)
        moved = np.clip(self.cursor + velocity * self.config.max_speed, 0.0, 1.0)
        self.cursor = np.where(active[:, None], moved, self.cursor)
        after = self._distance()
        success = after <= self.config.target_radius
        reward = (10.0 * (before - after) + success).astype(np.float32)
        if not self.config.wrong_target_fails:
            return self._obs(), reward, success.copy(), success
        # a failure when the cursor is inside another target (and not the named one: targets never overlap)
        to_targets = np.linalg.norm(self.cursor[:, None] - self.centres, axis=2)  # [M, K]
        failed = ~success & (to_targets <= self.config.target_radius).any(axis=1)
        reward[failed] -= 1.0
        return self._obs(), reward, success | failed, success


register_env("colour_targets", ColourTargetsConfig, processes=False)(ColourTargetsBatch)
