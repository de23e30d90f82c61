"""Shared builders for the OpenVLA / OpenVLA-OFT tests: a small env spec, observations, tiny policies."""

from __future__ import annotations

import pytest
import torch

from envs.base import EnvSpec
from policies import make_policy
from policies.base import PolicyConfig

POLICY_NAMES = ("openvla", "openvla_oft")
INSTRUCTIONS = ["move the cursor to the red target", "Go!", "pick up the small blue cube", "x"]


def env_spec(action_dim: int = 3, image: int = 32) -> EnvSpec:
    low = tuple(-1.0 - 0.5 * i for i in range(action_dim))
    high = tuple(2.0 + i for i in range(action_dim))
    return EnvSpec(
        action_dim=action_dim,
        action_low=low,
        action_high=high,
        state_dim=4,
        image_size=(image, image),
        has_wrist_image=False,
        max_episode_steps=20,
        num_initial_states=None,
    )


def observations(n: int = 4, image: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "main_images": torch.randint(0, 256, (n, image, image, 3), dtype=torch.uint8, generator=g),
        "states": torch.zeros(n, 4),
        "task_descriptions": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
    }


def tiny_policy(name: str, seed: int = 0, spec: EnvSpec | None = None, **overrides):
    """A tiny policy (28 x 28 images: 4 patches) with chunks of 2 and a value head."""
    torch.manual_seed(seed)
    config = PolicyConfig.from_dict(
        {"name": name, "image_size": 28, "num_action_chunks": 2, **overrides}, path="policy"
    )
    return make_policy(config, spec or env_spec())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a loaded machine the threads' spinning costs
    several times the work: run these tests on one thread, then restore the suite's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
