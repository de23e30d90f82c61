"""LIBERO through the env API, on one task of each suite with 2 envs (the `sim` tier).

Each suite's env is built once for the module (a LIBERO scene takes seconds to build on CPU) with 32x32 images,
a 3-step time limit and group_size 2 (both envs run the same task). libero_10 and libero_90 run in worker
processes, the others in this process. Separately: two tasks in one process, checked pixel for pixel against
LIBERO's own unmodified loop, and the success flag of a task whose goal is set in the simulator.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_env_workers import wait_gone

from envs import EnvConfig, make_env
from envs.base import EpisodeVectorEnv
from envs.libero.config import MAX_EPISODE_STEPS
from envs.libero.convert import NO_OP_ACTION
from envs.libero.offline import load_libero
from envs.libero.tasks import load_task

pytestmark = pytest.mark.sim
LIMIT, SIZE = 3, 32
CASES = [  # (suite, task, worker processes)
    ("libero_spatial", 0, 1),
    ("libero_object", 3, 1),
    ("libero_goal", 0, 1),  # open the middle drawer of the cabinet: the success test sets its goal
    ("libero_10", 2, 2),
    ("libero_90", 41, 2),
]


def libero_config(**overrides):
    base = {"name": "libero", "num_envs": 2, "image_size": SIZE, "seed": 3}
    return EnvConfig.from_dict({**base, **overrides}, path="env")


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def env(request):
    suite, task, workers = request.param
    config = libero_config(
        suite=suite, task_ids=[task], group_size=2, num_workers=workers, max_episode_steps=LIMIT
    )
    env = make_env(config)
    env.task = load_task(suite, task)
    yield env
    env.close()


def check_obs(env, obs):
    n = env.num_envs
    assert obs["main_images"].shape == obs["wrist_images"].shape == (n, SIZE, SIZE, 3)
    assert obs["main_images"].dtype == obs["wrist_images"].dtype == torch.uint8
    assert obs["main_images"].float().std() > 10 and obs["wrist_images"].float().std() > 5  # real pictures
    assert obs["states"].shape == (n, 8) and obs["states"].dtype == torch.float32
    assert torch.isfinite(obs["states"]).all()
    assert obs["task_descriptions"] == [env.task.language] * n


def random_actions(n: int, chunk: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    actions = torch.rand(n, chunk, 7, generator=g) * 2 - 1
    actions[..., -1] = -1.0  # gripper open
    return actions


def test_spec_follows_the_suite(env):
    spec = env.spec
    assert (spec.action_dim, spec.state_dim, spec.image_size, spec.has_wrist_image) == (
        7,
        8,
        (SIZE, SIZE),
        True,
    )
    assert spec.action_low == (-1.0,) * 7 and spec.action_high == (1.0,) * 7
    assert spec.num_initial_states == len(env.task.init_states) == 50
    assert spec.max_episode_steps == LIMIT and MAX_EPISODE_STEPS[env.task.suite] >= 220


def test_fixed_initial_states_give_the_same_scene_in_any_row_after_any_history(env):
    mixed = env.reset(initial_state_ids=[7, 9])
    check_obs(env, mixed)
    assert not torch.equal(mixed["states"], mixed["states"].flip(0))
    assert not torch.equal(mixed["main_images"][0], mixed["main_images"][1])
    env.chunk_step(random_actions(2, 2, seed=1))  # some history
    same = env.reset(initial_state_ids=[9, 9])
    for key in ("states", "main_images", "wrist_images"):
        torch.testing.assert_close(same[key][0], same[key][1])
        torch.testing.assert_close(same[key][0], mixed[key][1])


def test_seeded_episodes_repeat_and_a_chunk_crosses_the_time_limit(env):
    actions = random_actions(2, LIMIT + 2, seed=2)
    start = env.reset(seed=5)  # group_size 2: one initial state for both envs
    torch.testing.assert_close(start["states"][0], start["states"][1])
    obs, rewards, terms, truncs, infos = env.chunk_step(actions)
    assert truncs[:, LIMIT - 1].all() and truncs.sum() == 2 and not terms.any()
    assert infos["episode_done"].all() and infos["episode"]["episode_len"].tolist() == [LIMIT, LIMIT]
    assert (rewards[:, LIMIT:] == 0).all()
    check_obs(env, infos["final_observation"])
    check_obs(env, obs)  # auto-reset at chunk end: a fresh episode, not the final observation
    assert not torch.equal(obs["states"], infos["final_observation"]["states"])
    again = env.reset(seed=5)
    *_, infos_again = env.chunk_step(actions)
    torch.testing.assert_close(again["main_images"], start["main_images"])
    torch.testing.assert_close(
        infos_again["final_observation"]["states"], infos["final_observation"]["states"]
    )
    torch.testing.assert_close(
        infos_again["final_observation"]["main_images"], infos["final_observation"]["main_images"]
    )


def test_close_releases_the_scenes_and_stops_the_workers(env):  # last: the other tests need the env
    if isinstance(env, EpisodeVectorEnv):
        sims = env.batch.sims
        env.close()
        assert env.batch.sims == [] and all(sim.env.__dict__.get("env") is None for sim in sims)
    else:
        pids = env.worker_pids
        env.close()
        assert wait_gone(pids, timeout=10.0)
    env.close()  # twice is fine


# -- specifics ------------------------------------------------------------------------------------------------
class TestGoalTask:
    """libero_goal task 0, "open the middle drawer of the cabinet", in this process (its env is freed after the
    class: a LIBERO scene holds ~1.3 GB)."""

    @pytest.fixture(scope="class")
    def goal_env(self):
        env = make_env(
            libero_config(suite="libero_goal", task_ids=[0], group_size=2, max_episode_steps=LIMIT)
        )
        yield env
        env.close()

    def test_success_is_libero_own_check_and_ends_the_episode(self, goal_env):
        env = goal_env
        env.reset(initial_state_ids=[0, 0])
        sim = env.batch.sims[0]
        assert not sim.env.check_success()
        sim.env.env.object_states_dict["wooden_cabinet_1_middle_region"].set_joint(-0.15)  # drawer open
        sim.env.sim.forward()
        assert sim.env.check_success()  # LIBERO's check of the task's BDDL goal
        actions = torch.tensor(NO_OP_ACTION).expand(2, 2, 7)
        _, rewards, terms, truncs, infos = env.chunk_step(actions)
        assert terms.tolist() == [[True, False], [False, False]] and not truncs.any()
        assert rewards.tolist() == [[1.0, 0.0], [0.0, 0.0]]
        assert infos["success"].tolist() == [[True, False], [False, False]]
        assert infos["episode_done"].tolist() == [True, False]
        assert infos["episode"]["success_once"][0] and infos["episode"]["success_at_end"][0]
        assert not sim.env.check_success()  # auto-reset at chunk end

    def test_initial_state_ids_index_the_benchmark_states(self, goal_env):
        env = goal_env
        task = load_task("libero_goal", 0)
        sims = env.batch.sims
        try:
            for sim in sims:
                sim.settle_steps = 0
            env.reset(initial_state_ids=[4, 17])
            np.testing.assert_array_equal(sims[0].env.get_sim_state(), task.init_states[4])
            np.testing.assert_array_equal(sims[1].env.get_sim_state(), task.init_states[17])
        finally:
            for sim in sims:
                sim.settle_steps = 10


def test_two_tasks_in_one_process_render_exactly_as_libero_own_loop():
    """Row 0 against LIBERO's unmodified reset / set_init_state / no-op settle / step loop, in this process:
    upright (the raw render rotated by 180 degrees), same pixels, though another scene renders in between."""
    env = make_env(libero_config(suite="libero_spatial", task_ids=[0, 1], num_workers=1))
    raw = None
    try:
        tasks = [load_task("libero_spatial", t) for t in (0, 1)]
        obs = env.reset(initial_state_ids=[3, 3])
        assert obs["task_descriptions"] == [tasks[0].language, tasks[1].language]
        assert not torch.equal(obs["main_images"][0], obs["main_images"][1])
        raw = load_libero().OffScreenRenderEnv(
            bddl_file_name=tasks[0].bddl_file, camera_heights=SIZE, camera_widths=SIZE
        )
        # LIBERO places the fixtures from numpy's global RNG; the env API seeds it by the id
        np.random.seed(3)
        raw.reset()
        raw_obs = raw.set_init_state(tasks[0].init_states[3])
        for _ in range(10):
            raw_obs, *_ = raw.step(list(NO_OP_ACTION))
        assert_same_view(obs, raw_obs)
        actions = random_actions(2, 3, seed=4)
        obs, *_ = env.chunk_step(actions)
        raw.sim._render_context_offscreen.gl_ctx.make_current()  # our scenes made theirs current
        for c in range(3):
            raw_obs, *_ = raw.step(actions[0, c].double().numpy())
        assert_same_view(obs, raw_obs)
        np.testing.assert_allclose(obs["states"][0, :3].numpy(), raw_obs["robot0_eef_pos"], atol=1e-6)
    finally:
        env.close()
        if raw is not None:
            raw.close()


def assert_same_view(obs, raw_obs):
    for key, camera in (("main_images", "agentview_image"), ("wrist_images", "robot0_eye_in_hand_image")):
        raw_image = raw_obs[camera]
        np.testing.assert_array_equal(obs[key][0].numpy(), raw_image[::-1, ::-1])
        assert not np.array_equal(obs[key][0].numpy(), raw_image)  # LIBERO's render itself is upside down
