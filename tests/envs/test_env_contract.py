"""The contract every registered env type keeps (../../shared/DESIGN.md, "Data contracts").

One env per case, shared by the tests of this module (rgb ManiSkill envs take seconds to build). Each case runs
with a 5-step time limit so that chunks of 4 cross an episode end. An env type registered without a case here
fails `test_every_registered_env_has_a_contract_case`: add it to CASES (or to OWN_CONTRACT_TESTS with where).
"""

from __future__ import annotations

import pytest
import torch
from env_toys import gone

from envs import EnvConfig, env_registry, make_env
from envs.workers import ProcessVectorEnv

LIMIT = 5
SIM = pytest.mark.sim
CASES = [
    pytest.param({"name": "colour_targets", "num_envs": 4, "group_size": 2}, id="colour_targets"),
    pytest.param(
        {"name": "colour_targets", "num_envs": 4, "group_size": 2, "action_dim": 7}, id="colour_targets-7d"
    ),
    *[
        pytest.param(
            {
                "name": "maniskill",
                "task": task,
                "obs_mode": mode,
                "control_mode": control,
                "group_size": 2,
                "num_envs": 4 if mode == "state" else 2,
                "num_workers": 2,
                "image_size": 64,
            },
            id=f"maniskill-{task}-{mode}-{control}",
            marks=SIM,
        )
        for task, mode, control in [
            ("PushCube-v1", "state", "pd_joint_delta_pos"),
            ("PickCube-v1", "state", "pd_ee_delta_pose"),
            ("StackCube-v1", "state", "pd_ee_delta_pose"),
            ("PushCube-v1", "rgb", "pd_ee_delta_pose"),
            ("PickCube-v1", "rgb", "pd_joint_delta_pos"),
            ("StackCube-v1", "rgb", "pd_ee_delta_pose"),
        ]
    ],
]
# env types whose contract is checked by their owners' own test files
OWN_CONTRACT_TESTS = {"libero": "tests/envs/test_libero*.py", "math": "tests/envs/test_math*.py (a text env)"}
TEST_ONLY = {"countdown"}  # tests/envs/env_toys.py


@pytest.fixture(scope="module", params=CASES)
def env(request):
    config = EnvConfig.from_dict({**request.param, "max_episode_steps": LIMIT, "seed": 3}, path="env")
    env = make_env(config)
    yield env
    pids = env.worker_pids if isinstance(env, ProcessVectorEnv) else []
    env.close()
    assert all(gone(pid) for pid in pids), "worker processes outlived close()"


def actions_for(env, chunk: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low, high = torch.tensor(env.spec.action_low), torch.tensor(env.spec.action_high)
    return low + (high - low) * torch.rand(env.num_envs, chunk, env.spec.action_dim, generator=g)


def check_obs(env, obs):
    n, spec = env.num_envs, env.spec
    assert obs["states"].shape == (n, spec.state_dim) and obs["states"].dtype == torch.float32
    assert torch.isfinite(obs["states"]).all()
    assert isinstance(obs["task_descriptions"], list) and len(obs["task_descriptions"]) == n
    assert all(isinstance(t, str) and t for t in obs["task_descriptions"])
    if spec.image_size is None:
        assert "main_images" not in obs
    else:
        assert (
            obs["main_images"].shape == (n, *spec.image_size, 3) and obs["main_images"].dtype == torch.uint8
        )
        assert obs["main_images"].float().std() > 0  # a real picture, not a blank
    assert ("wrist_images" in obs) == spec.has_wrist_image


def test_every_registered_env_has_a_contract_case():
    covered = {p.values[0]["name"] for p in CASES}
    missing = set(env_registry.names()) - covered - set(OWN_CONTRACT_TESTS) - TEST_ONLY
    assert not missing, f"add contract cases for {sorted(missing)}"


def test_shapes_and_dtypes(env):
    obs = env.reset()
    check_obs(env, obs)
    obs, rewards, terms, truncs, infos = env.chunk_step(actions_for(env, 3))
    check_obs(env, obs)
    assert rewards.shape == terms.shape == truncs.shape == infos["success"].shape == (env.num_envs, 3)
    assert rewards.dtype == torch.float32 and torch.isfinite(rewards).all()
    assert terms.dtype == truncs.dtype == infos["success"].dtype == infos["episode_done"].dtype == torch.bool
    check_obs(env, infos["final_observation"])
    for key in ("success_once", "success_at_end", "return", "episode_len"):
        assert infos["episode"][key].shape == (env.num_envs,)


def test_seeding_reproduces_episodes(env):
    actions = actions_for(env, 3)
    first = env.reset(seed=11)
    _, rewards, *_ = env.chunk_step(actions)
    again = env.reset(seed=11)
    _, rewards_again, *_ = env.chunk_step(actions)
    torch.testing.assert_close(first["states"], again["states"])
    torch.testing.assert_close(rewards, rewards_again)
    other = env.reset(seed=12)
    assert not torch.equal(first["states"], other["states"])


def test_group_shared_and_fixed_initial_states(env):
    obs = env.reset(seed=1)  # group_size 2: rows 0, 1 share an initial state
    torch.testing.assert_close(obs["states"][0], obs["states"][1])
    assert obs["task_descriptions"][0] == obs["task_descriptions"][1]
    if "main_images" in obs:
        torch.testing.assert_close(obs["main_images"][0], obs["main_images"][1])
    n = env.num_envs
    same = env.reset(initial_state_ids=[7] * n)["states"]
    mixed = env.reset(initial_state_ids=[7] + [9] * (n - 1))["states"]
    torch.testing.assert_close(same[0], mixed[0])  # an id means the same state in any batch
    torch.testing.assert_close(same[0], same[-1])  # ... and in any row
    assert not torch.equal(mixed[0], mixed[-1])


def test_episode_end_inside_a_chunk_keeps_final_obs_and_metrics_then_auto_resets(env):
    chunk = LIMIT + 3  # every episode ends inside this chunk: at the time limit at the latest
    actions = actions_for(env, chunk, seed=5)
    start = env.reset(seed=21)
    obs, rewards, terms, truncs, infos = env.chunk_step(actions)
    ended = terms | truncs
    assert (ended.sum(1) == 1).all() and infos["episode_done"].all()
    end_step = ended.float().argmax(1)
    assert (end_step < LIMIT).all() and (truncs.any(1) == (end_step == LIMIT - 1)).all()
    after_end = torch.arange(chunk)[None] > end_step[:, None]
    assert (rewards[after_end] == 0).all() and not infos["success"][after_end].any()
    episode = infos["episode"]
    torch.testing.assert_close(episode["episode_len"], end_step + 1)
    torch.testing.assert_close(episode["return"], rewards.sum(1))
    assert torch.equal(episode["success_once"], infos["success"].any(1))
    assert torch.equal(episode["success_at_end"], infos["success"][torch.arange(env.num_envs), end_step])
    check_obs(env, infos["final_observation"])
    # the final observation is where each episode ended: replaying the same actions gets there again
    replay = env.reset(seed=21)
    torch.testing.assert_close(replay["states"], start["states"])
    *_, replay_infos = env.chunk_step(actions)
    torch.testing.assert_close(
        infos["final_observation"]["states"], replay_infos["final_observation"]["states"]
    )
    # the envs were reset once, at chunk end: the obs is a fresh episode, not the final one
    assert not torch.equal(obs["states"], infos["final_observation"]["states"])
    *_, next_infos = env.chunk_step(actions[:, :1])
    assert (next_infos["episode"]["episode_len"] == 1).all()
