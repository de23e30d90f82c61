"""The episode logic of `EpisodeVectorEnv` (chunks, resets, metrics, initial states), on a predictable backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from env_toys import CountdownConfig

from algorithms.registry import UnknownNameError
from algorithms.schema import ConfigError
from envs import EnvConfig, EpisodeVectorEnv, make_env


def make(**overrides) -> EpisodeVectorEnv:
    env = make_env(CountdownConfig(**{"num_envs": 4, **overrides}))
    assert isinstance(env, EpisodeVectorEnv)
    return env


def zeros(env, chunk):
    return torch.zeros(env.num_envs, chunk, env.spec.action_dim)


def test_chunk_step_shapes_and_dtypes():
    env = make()
    obs = env.reset(initial_state_ids=[3, 3, 3, 3])  # episodes of 4 steps: none ends in a 3-step chunk
    assert obs["states"].dtype == torch.float32 and obs["states"].shape == (4, 3)
    assert obs["main_images"].dtype == torch.uint8 and obs["main_images"].shape == (4, 4, 4, 3)
    assert obs["task_descriptions"] == [f"env {i}" for i in range(4)]
    obs, rewards, terms, truncs, infos = env.chunk_step(zeros(env, 3))
    assert rewards.shape == terms.shape == truncs.shape == infos["success"].shape == (4, 3)
    assert rewards.dtype == torch.float32 and terms.dtype == truncs.dtype == torch.bool
    assert infos["episode_done"].shape == (4,) and not infos["episode_done"].any()
    assert set(infos["episode"]) == {"success_once", "success_at_end", "return", "episode_len"}
    torch.testing.assert_close(rewards, torch.tensor([[1.0, 2.0, 3.0]] * 4))
    with pytest.raises(ValueError, match=r"actions must be \[N=4, C, A=2\]"):
        env.chunk_step(torch.zeros(4, 2))


def test_termination_inside_chunk_stops_accumulating_and_auto_resets_once():
    env = make(period=4)
    env.reset(initial_state_ids=[0, 1, 2, 3])  # ends after 1, 2, 3, 4 steps
    actions = torch.full((4, 5, 2), 0.5)
    obs, rewards, terms, truncs, infos = env.chunk_step(actions)
    expected = torch.tensor(
        [[1.5, 0, 0, 0, 0], [1.5, 2.5, 0, 0, 0], [1.5, 2.5, 3.5, 0, 0], [1.5, 2.5, 3.5, 4.5, 0]]
    )
    torch.testing.assert_close(rewards, expected)
    assert terms.nonzero().tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]  # exactly one flag per env
    assert not truncs.any()
    assert infos["episode_done"].all()
    final = infos["final_observation"]["states"]
    torch.testing.assert_close(
        final[:, 1], torch.tensor([1.0, 2.0, 3.0, 4.0])
    )  # the step each episode ended in
    torch.testing.assert_close(final[:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert (obs["states"][:, 1] == 0).all()  # reset at chunk end
    ep = infos["episode"]
    assert ep["episode_len"].tolist() == [1, 2, 3, 4]
    torch.testing.assert_close(ep["return"], expected.sum(1))
    assert ep["success_once"].tolist() == [True, False, True, False]
    assert ep["success_at_end"].tolist() == [True, False, True, False]


def test_time_limit_truncates_and_ignore_terminations_keeps_running():
    env = make(ignore_terminations=True, max_episode_steps=3)
    env.reset(initial_state_ids=[0, 0, 1, 1])
    _, rewards, terms, truncs, infos = env.chunk_step(zeros(env, 4))
    assert not terms.any()
    assert truncs[:, 2].all() and truncs.sum() == 4
    assert (rewards[:, 3] == 0).all() and (rewards[:, :3] > 0).all()
    assert infos["episode"]["episode_len"].tolist() == [3] * 4
    # id 0 succeeds at its first step and stays successful: success_once and success_at_end
    assert infos["episode"]["success_once"].tolist() == [True, True, False, False]
    assert infos["episode"]["success_at_end"].tolist() == [True, True, False, False]
    assert env.spec.max_episode_steps == 3


def test_without_auto_reset_finished_envs_idle_until_reset():
    env = make(auto_reset=False)
    env.reset(initial_state_ids=[0, 3, 3, 3])
    obs, rewards, terms, _, infos = env.chunk_step(zeros(env, 2))
    assert obs["states"][0, 1] == 1  # env 0 ended at step 1 and was not reset
    obs, rewards, terms, _, infos = env.chunk_step(zeros(env, 2))
    assert rewards[0].tolist() == [0.0, 0.0] and not terms[0].any() and not infos["episode_done"][0]
    assert obs["states"][0, 1] == 1 and obs["states"][1, 1] == 4


def test_group_shared_initial_states_and_seeding():
    env = make(num_envs=6, group_size=3, seed=7)
    ids = env.reset()["states"][:, 0]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] == ids[5] and ids[0] != ids[3]
    again = make(num_envs=6, group_size=3, seed=7).reset()["states"][:, 0]
    torch.testing.assert_close(ids, again)  # the config's seed fixes the stream
    assert not torch.equal(env.reset()["states"][:, 0], ids)  # reset() continues the stream
    torch.testing.assert_close(env.reset(seed=7)["states"][:, 0], ids)  # a seed restarts it
    assert not torch.equal(env.reset(seed=8)["states"][:, 0], ids)


def test_auto_resets_are_reproducible_and_groups_ending_together_restart_together():
    def run(seed):
        env = make(num_envs=4, group_size=2, period=1)  # every episode lasts one step
        env.reset(seed=seed)
        return [env.chunk_step(zeros(env, 1))[0]["states"][:, 0] for _ in range(3)]

    first, second = run(11), run(11)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
        assert a[0] == a[1] and a[2] == a[3]
    assert not torch.equal(first[0], first[1])  # new states each time


def test_fixed_initial_state_lists_are_checked():
    env = make(num_initial_states=5)
    obs = env.reset(initial_state_ids=[4, 0, 2, 2])
    assert obs["states"][:, 0].tolist() == [4, 0, 2, 2]
    assert env.reset()["states"][:, 0].max() < 5  # drawn ids stay within the list
    with pytest.raises(ValueError, match=r"must lie in \[0, 5\)"):
        env.reset(initial_state_ids=[0, 1, 2, 5])
    with pytest.raises(ValueError, match="4 integers"):
        env.reset(initial_state_ids=[0, 1])


def test_step_is_a_chunk_of_one():
    env = make()
    env.reset(initial_state_ids=[0, 3, 3, 3])
    obs, rewards, terms, truncs, infos = env.step(torch.ones(4, 2))
    assert rewards.shape == terms.shape == truncs.shape == infos["success"].shape == (4,)
    assert terms.tolist() == [True, False, False, False]
    assert obs["states"][0, 1] == 0 and infos["final_observation"]["states"][0, 1] == 1


def test_chunk_step_before_reset_and_config_errors():
    env = make()
    with pytest.raises(RuntimeError, match="reset"):
        env.chunk_step(zeros(env, 1))
    with pytest.raises(ConfigError, match="not a multiple of group_size"):
        CountdownConfig(num_envs=5, group_size=2)
    with pytest.raises(ConfigError, match="num_workers=3 exceeds num_envs=2"):
        CountdownConfig(num_envs=2, num_workers=3)


def test_unknown_env_name_lists_registered_ones():
    with pytest.raises(UnknownNameError) as err:
        make_env(EnvConfig(name="maniskil"))
    message = str(err.value)
    assert 'Did you mean "maniskill"' in message
    for name in ("maniskill", "colour_targets", "countdown"):
        assert name in message


def test_numpy_ids_roundtrip_through_reset_to():
    env = make()
    obs = env.reset_to(np.array([1, 2, 3, 4]), auto_reset_key=5)
    assert obs["states"][:, 0].tolist() == [1, 2, 3, 4]
