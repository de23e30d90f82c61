"""The env API contract under random termination patterns (hypothesis, derandomized): `chunk_step` on the
countdown toy env (tests/envs/env_toys.py), whose every output is predictable, with random episode lengths,
time limits, env counts and chunk lengths, checked against what ../../shared/DESIGN.md promises: at most one
episode end per env and chunk, nothing accumulated after it, the final observation kept, one auto-reset at
chunk end, episode metrics that add up."""

from __future__ import annotations

import env_toys  # noqa: F401 - registers the countdown env
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import EnvConfig, make_env


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(
    period=st.integers(1, 6),
    time_limit=st.integers(1, 7),
    num_envs=st.integers(1, 5),
    chunks=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    ignore_terminations=st.booleans(),
)
def test_chunk_step_keeps_the_contract_for_random_episode_ends(
    period, time_limit, num_envs, chunks, seed, ignore_terminations
):
    config = EnvConfig.from_dict(
        {
            "name": "countdown",
            "num_envs": num_envs,
            "period": period,
            "time_limit": time_limit,
            "seed": seed,
            "ignore_terminations": ignore_terminations,
            "num_initial_states": 1000,  # ids 0-999: exact in the float32 state the test reads them from
        },
        path="env",
    )
    env = make_env(config)
    try:
        obs = env.reset()
        episode_return = np.zeros(num_envs)
        rng = np.random.default_rng(seed)
        for length in chunks:
            ids, t0 = obs["states"][:, 0].numpy().astype(int), obs["states"][:, 1].numpy().astype(int)
            assert (t0 < time_limit).all(), "a chunk started in a finished episode"
            actions = torch.from_numpy(rng.uniform(-1, 1, (num_envs, length, 2)).astype(np.float32))
            obs_next, rewards, terms, truncs, infos = env.chunk_step(actions)
            assert rewards.shape == terms.shape == truncs.shape == (num_envs, length)
            assert terms.dtype == truncs.dtype == torch.bool and rewards.dtype == torch.float32
            # when each episode ends: the task's end (1 + id % period steps) or the time limit
            task_end = np.full(num_envs, 10**9) if ignore_terminations else 1 + ids % period
            end = np.minimum(task_end, time_limit)
            for i in range(num_envs):
                done_steps = (terms[i] | truncs[i]).nonzero().flatten().tolist()
                ends_here = end[i] - t0[i] <= length
                assert len(done_steps) == (1 if ends_here else 0), (i, done_steps)
                ran = end[i] - t0[i] if ends_here else length
                expected = actions[i, :ran, 0].numpy() + np.arange(t0[i] + 1, t0[i] + ran + 1)
                np.testing.assert_allclose(rewards[i, :ran].numpy(), expected, rtol=1e-6)
                assert not rewards[i, ran:].any() and not terms[i, ran:].any() and not truncs[i, ran:].any()
                episode_return[i] += expected.sum()
                if ends_here:
                    assert done_steps == [ran - 1]
                    assert bool(terms[i, ran - 1]) == (task_end[i] <= time_limit and not ignore_terminations)
                    assert bool(truncs[i, ran - 1]) == (end[i] >= time_limit)
                    assert infos["episode_done"][i]
                    final = infos["final_observation"]["states"][i]
                    assert (int(final[0]), int(final[1])) == (ids[i], end[i])  # the obs it ended in
                    assert int(infos["episode"]["episode_len"][i]) == end[i]
                    assert np.isclose(float(infos["episode"]["return"][i]), episode_return[i], rtol=1e-5)
                    assert int(obs_next["states"][i, 1]) == 0  # reset once, at chunk end
                    episode_return[i] = 0.0
                else:
                    assert not infos["episode_done"][i]
                    assert (int(obs_next["states"][i, 0]), int(obs_next["states"][i, 1])) == (
                        ids[i],
                        t0[i] + length,
                    )
            obs = obs_next
    finally:
        env.close()
