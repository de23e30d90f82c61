"""colour_targets: the image shows what the instruction names, an oracle always succeeds, a random one rarely."""

from __future__ import annotations

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
