"""Demonstrations for the SFT tests, made in the built-in colour_targets env by a scripted oracle that moves the
cursor straight to the named target (the env's own scene sampler says where it is)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from envs.base import make_env
from envs.colour_targets import ColourTargetsConfig, sample_scene
from envs.demos import DemoInfo, DemoWriter

# one disc at a random angle on a ring around the cursor: the direction to move in is in the image
RING = dict(
    layout="ring", ring_rotation="random", ring_radius=0.32, num_targets=1, num_colours=1, target_radius=0.15,
    max_speed=0.12, time_limit=12, image_size=48,
)  # fmt: skip


def oracle_action(config: ColourTargetsConfig, seed: int, cursor: np.ndarray) -> np.ndarray:
    """The velocity [2] that moves the cursor to the named target of scene `seed` (at most full speed)."""
    ring = config.ring_radius if config.layout == "ring" else None
    centres, _, goal, _ = sample_scene(
        seed,
        config.num_targets,
        config.target_radius,
        ring,
        config.num_colours,
        config.ring_rotation == "random",
    )
    delta = centres[goal] - cursor
    return (delta / max(float(np.linalg.norm(delta)), config.max_speed)).astype(np.float32)


def write_colour_target_demos(
    path: Path, config: ColourTargetsConfig, episodes: int, first_seed: int = 0
) -> Path:
    """`episodes` successful oracle episodes from initial states first_seed, first_seed + 1, ... at `path`."""
    env = make_env(config.replace(num_envs=1))
    info = DemoInfo(
        env_id="colour_targets", obs_mode="rgb", control_mode="velocity", fps=10, state_dim=2,
        action_dim=config.action_dim, image_size=config.image_size,
    )  # fmt: skip
    with DemoWriter(path, info) as writer:
        for seed in range(first_seed, first_seed + episodes):
            obs = env.reset(initial_state_ids=[seed])
            states, actions, images, task = [], [], [], obs["task_descriptions"][0]
            while True:
                action = oracle_action(config, seed, obs["states"][0].numpy())
                states.append(obs["states"][0].numpy())
                images.append(obs["main_images"][0].numpy())
                actions.append(action)
                obs, _, terminated, truncated, infos = env.step(torch.from_numpy(action)[None])
                if terminated[0] or truncated[0]:
                    break
            assert infos["success"][0], f"the oracle failed in scene {seed}"
            writer.add_episode(np.stack(states), np.stack(actions), np.stack(images), task, seed, True)
    env.close()
    return path
