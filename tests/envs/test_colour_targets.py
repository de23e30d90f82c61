"""colour_targets: the image shows what the instruction names, an oracle always succeeds, a random one rarely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from env_toys import colour_oracle_actions as oracle_actions

from algorithms.schema import ConfigError
from envs import EpisodeVectorEnv, make_env
from envs.colour_targets import COLOUR_NAMES, PALETTE, ColourTargetsConfig


def make(**overrides) -> EpisodeVectorEnv:
    return make_env(ColourTargetsConfig(**{"num_envs": 16, **overrides}))


def test_the_named_colour_is_drawn_at_the_named_target():
    env = make()
    obs = env.reset(seed=1)
    size = env.config.image_size
    for i, text in enumerate(obs["task_descriptions"]):
        colour = text.split(" the ")[-1].split()[0]
        assert colour in COLOUR_NAMES
        cx, cy = env.batch.centres[i, env.batch.goal[i]]
        pixel = obs["main_images"][i, int(cy * size), int(cx * size)]
        assert tuple(pixel.tolist()) == PALETTE[colour]
        x, y = obs["states"][i].tolist()  # the cursor: white pixels at its position
        assert (
            obs["main_images"][i, min(int(y * size), size - 1), min(int(x * size), size - 1)].tolist()
            == [255] * 3
        )


def test_an_oracle_succeeds_every_episode_and_random_actions_rarely_do():
    env = make(num_envs=32)
    env.reset(seed=0)
    successes, episodes = 0, 0
    for _ in range(40):
        _, rewards, terms, _, infos = env.chunk_step(oracle_actions(env))
        done = infos["episode_done"]
        episodes += int(done.sum())
        successes += int(infos["episode"]["success_once"][done].sum())
        assert (rewards[terms] >= 1.0).all()  # the success bonus
    assert episodes >= 32 and successes == episodes
    env.reset(seed=0)
    torch.manual_seed(0)
    successes = 0
    for _ in range(env.spec.max_episode_steps):
        *_, infos = env.chunk_step(torch.rand(32, 1, 2) * 2 - 1)
        successes += int((infos["episode_done"] & infos["episode"]["success_once"]).sum())
    assert successes < 16


def test_seeds_fix_the_scene_and_seven_dim_actions_ignore_the_rest():
    a, b = make(action_dim=7), make(action_dim=7)
    obs_a, obs_b = a.reset(initial_state_ids=list(range(16))), b.reset(initial_state_ids=list(range(16)))
    assert torch.equal(obs_a["main_images"], obs_b["main_images"])
    assert obs_a["task_descriptions"] == obs_b["task_descriptions"]
    actions = torch.rand(16, 3, 7)
    noisy = actions.clone()
    noisy[..., 2:] = 5.0
    out_a, out_b = a.chunk_step(actions), b.chunk_step(noisy)
    torch.testing.assert_close(out_a[1], out_b[1])
    assert a.spec.action_dim == 7


def test_too_many_large_targets_is_a_config_error():
    with pytest.raises(ConfigError, match="do not fit"):
        ColourTargetsConfig(num_targets=6, target_radius=0.2)


RING = dict(layout="ring", num_targets=3, target_radius=0.15, ring_radius=0.32, wrong_target_fails=True)


def test_ring_layout_puts_the_cursor_at_the_centre_and_the_targets_evenly_around_it():
    env = make(num_envs=32, **RING)
    obs = env.reset(seed=3)
    assert torch.equal(obs["states"], torch.full((32, 2), 0.5))
    offsets = env.batch.centres - 0.5  # [M, K, 2]
    assert offsets.shape == (32, 3, 2)
    assert abs(float((offsets**2).sum(-1).max()) - 0.32**2) < 1e-9
    # evenly spaced: the three targets of a scene sum to the centre
    assert abs(offsets.sum(axis=1)).max() < 1e-9
    angles = [float(torch.atan2(torch.tensor(o[0, 1]), torch.tensor(o[0, 0]))) for o in offsets]
    assert max(angles) - min(angles) > 3.0  # rotations vary from scene to scene


def first_episode_successes(env: EpisodeVectorEnv, actions_of) -> list[bool]:
    """Success of each env's first episode under `actions_of(env)` (envs reset automatically after it)."""
    outcome = [None] * env.num_envs
    for _ in range(env.spec.max_episode_steps):
        _, rewards, terms, _, infos = env.chunk_step(actions_of(env))
        assert (rewards[terms & ~infos["success"]] < 0).all()  # a failure ends with the penalty
        for i in infos["episode_done"].nonzero().flatten().tolist():
            if outcome[i] is None:
                outcome[i] = bool(infos["episode"]["success_once"][i])
    return outcome


def test_entering_the_wrong_target_ends_the_episode_as_a_failure():
    env = make(num_envs=32, **RING)

    def to_another_target(env):
        batch = env.batch
        wrong = batch.centres[np.arange(32), (batch.goal + 1) % 3]
        velocity = np.clip((wrong - batch.cursor) / env.config.max_speed, -1, 1)
        return torch.from_numpy(velocity[:, None].astype(np.float32))

    env.reset(seed=0)
    assert first_episode_successes(env, to_another_target) == [False] * 32
    env.reset(seed=0)
    assert first_episode_successes(env, oracle_actions) == [True] * 32


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(ring_radius=0.4, target_radius=0.15), "outside the image"),
        (dict(ring_radius=0.25, target_radius=0.15), "must exceed 2 x target_radius"),
    ],
)
def test_impossible_rings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        ColourTargetsConfig(layout="ring", **overrides)
