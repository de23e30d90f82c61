"""ManiSkill3 specifics: real terminations, offline safety, setup errors, and the GPU backend's reset logic."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from env_toys import spawned_children

from envs import EnvConfig, make_env
from envs.maniskill.gpu import representatives

sim = pytest.mark.sim


def pushcube(**overrides):
    config = {
        "name": "maniskill",
        "task": "PushCube-v1",
        "num_envs": 2,
        "num_workers": 1,
        "control_mode": "pd_joint_delta_pos",
        **overrides,
    }
    return make_env(EnvConfig.from_dict(config, path="env"))


def put_cube_on_goal(env, row: int) -> None:
    """Move env `row`'s cube onto its target: the next step is a success, hence a termination."""
    import sapien

    base = env.batch.envs[row]
    goal = base.goal_region.pose.p[0].tolist()
    base.obj.set_pose(sapien.Pose(p=[goal[0], goal[1], base.cube_half_size]))


def test_representatives_pick_one_row_per_id_and_copy_the_rest():
    first, rows, sources = representatives(np.array([4, 5, 6, 7, 2]), np.array([9, 9, 3, 9, 3]))
    assert first == {9: 4, 3: 6}
    assert rows.tolist() == [2, 5, 7] and sources.tolist() == [6, 4, 4]
    first, rows, sources = representatives(np.array([0, 1]), np.array([1, 2]))
    assert first == {1: 0, 2: 1} and rows.size == 0


@sim
def test_a_success_inside_a_chunk_terminates_that_env_only():
    env = pushcube(max_episode_steps=20)
    try:
        env.reset(seed=0)
        put_cube_on_goal(env, row=0)
        _, rewards, terms, truncs, infos = env.chunk_step(torch.zeros(2, 3, env.spec.action_dim))
        assert terms[0].tolist() == [True, False, False] and not terms[1].any() and not truncs.any()
        assert rewards[0, 0] > 0 and (rewards[0, 1:] == 0).all() and (rewards[1] != 0).all()
        assert infos["episode_done"].tolist() == [True, False]
        assert infos["episode"]["success_once"][0] and infos["episode"]["success_at_end"][0]
        assert infos["episode"]["episode_len"].tolist() == [1, 3]
    finally:
        env.close()


@sim
def test_ignore_terminations_runs_to_the_time_limit_and_reports_success_at_end():
    env = pushcube(ignore_terminations=True, max_episode_steps=4)
    try:
        env.reset(seed=0)
        put_cube_on_goal(env, row=0)
        _, _, terms, truncs, infos = env.chunk_step(torch.zeros(2, 4, env.spec.action_dim))
        assert not terms.any() and truncs[:, 3].all()
        assert infos["success"][0].all() and not infos["success"][1].any()
        assert infos["episode"]["success_once"].tolist() == [True, False]
        assert infos["episode"]["success_at_end"].tolist() == [True, False]
        assert infos["episode"]["episode_len"].tolist() == [4, 4]
    finally:
        env.close()


@sim
def test_the_project_asset_folder_is_used_and_download_tasks_fail_up_front():
    import importlib

    from envs.maniskill import ManiSkillSetupError

    mani_skill = importlib.import_module("mani_skill")  # after envs.maniskill, which sets MS_ASSET_DIR

    assert str(mani_skill.ASSET_DIR).startswith(os.environ["MS_ASSET_DIR"])
    assert os.environ["MS_SKIP_ASSET_DOWNLOAD_PROMPT"] == "1"
    with pytest.raises(ManiSkillSetupError, match=r"'PickSingleYCB-v1' needs assets .*ycb"):
        pushcube(task="PickSingleYCB-v1", num_envs=1)


@sim
def test_setup_errors_from_workers_name_the_task_and_leave_no_process():
    from envs.workers import EnvWorkerError

    before = spawned_children()
    with pytest.raises(
        EnvWorkerError, match=r"ManiSkillSetupError: unknown ManiSkill task 'PushCub-v1'\. Did you mean"
    ):
        pushcube(task="PushCub-v1", num_workers=2)
    assert spawned_children() - before == set()


@sim
def test_no_vulkan_device_gets_install_instructions():
    code = (
        "from envs import EnvConfig, make_env\n"
        "make_env(EnvConfig.from_dict({'name': 'maniskill', 'num_envs': 1}))\n"
    )
    env = {**os.environ, "VK_ICD_FILENAMES": "/nonexistent/icd.json"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "ManiSkillSetupError" in proc.stderr and "lavapipe" in proc.stderr and "Mesa >= 25" in proc.stderr


@sim
@pytest.mark.parametrize("gpu_reset", ["batched", "exact"])
def test_gpu_backend_code_on_the_cpu_simulator_matches_the_cpu_backend(gpu_reset):
    """With one env, the GPU backend's reset/step code runs on PhysX CPU: it must agree with the CPU backend."""
    from envs.maniskill import ManiSkillConfig
    from envs.maniskill.cpu import ManiSkillCPUBatch
    from envs.maniskill.gpu import ManiSkillGPUBatch

    config = ManiSkillConfig(num_envs=1, control_mode="pd_joint_delta_pos", gpu_reset=gpu_reset)
    cpu, gpu_code = ManiSkillCPUBatch(config, [0]), ManiSkillGPUBatch(config, [0])
    try:
        for seed in (5, 6):
            a = cpu.reset_envs(np.array([0]), np.array([seed]))
            b = gpu_code.reset_envs(np.array([0]), np.array([seed]))
            torch.testing.assert_close(a["states"], b["states"])
            actions = torch.full((1, cpu.spec.action_dim), 0.3)
            out_a = cpu.step(actions, np.array([True]))
            out_b = gpu_code.step(actions, np.array([True]))
            torch.testing.assert_close(out_a[0]["states"], out_b[0]["states"])
            np.testing.assert_allclose(out_a[1], out_b[1])
        assert cpu.spec == gpu_code.spec
    finally:
        cpu.close()
        gpu_code.close()


@pytest.mark.gpu
@pytest.mark.sim
@pytest.mark.parametrize("obs_mode,gpu_reset", [("state", "exact"), ("state", "batched"), ("rgb", "exact")])
def test_gpu_backend_batches_with_group_shared_partial_resets(obs_mode, gpu_reset):
    env = pushcube(
        gpu_reset=gpu_reset,
        sim_backend="physx_cuda",
        num_envs=8,
        group_size=4,
        obs_mode=obs_mode,
        image_size=64,
        max_episode_steps=5,
    )
    try:
        obs = env.reset(seed=1)
        states = obs["states"]
        assert states.is_cuda and states.shape[0] == 8
        torch.testing.assert_close(states[0], states[3])
        assert not torch.equal(states[0], states[4])
        same = env.reset(initial_state_ids=[7] * 8)["states"]
        mixed = env.reset(initial_state_ids=[9, 9, 9, 9, 9, 9, 9, 7])["states"]
        torch.testing.assert_close(mixed[0], mixed[6])
        if gpu_reset == "exact":
            torch.testing.assert_close(same[0], mixed[7])  # an id is the same state in any row, any batch
        else:  # the same ids in the same batch give the same states
            torch.testing.assert_close(env.reset(initial_state_ids=[9] * 7 + [7])["states"], mixed)
        obs, rewards, terms, truncs, infos = env.chunk_step(torch.zeros(8, 6, env.spec.action_dim))
        assert rewards.shape == (8, 6) and truncs[:, 4].all() and infos["episode_done"].all()
        assert (infos["episode"]["episode_len"] == 5).all()
        if obs_mode == "rgb":
            assert obs["main_images"].shape == (8, 64, 64, 3) and obs["main_images"].dtype == torch.uint8
    finally:
        env.close()


@sim
@pytest.mark.parametrize("task", ["PushCube-v1", "PickCube-v1", "StackCube-v1"])
def test_the_fast_seeded_reset_gives_maniskills_seeded_initial_state(task):
    from envs.maniskill import ManiSkillConfig
    from envs.maniskill.common import make_raw_env
    from envs.maniskill.cpu import seeded_reset

    env = make_raw_env(ManiSkillConfig(task=task, num_envs=1), num_envs=1)
    try:
        for seed in (0, 123, 2**31 - 2):
            env.reset(seed=seed + 1)  # some other state in between
            torch.manual_seed(99)
            ours, _ = seeded_reset(env, seed)
            after_ours = torch.rand(3)
            state_ours = env.get_state()
            torch.manual_seed(99)
            theirs, _ = env.reset(seed=seed)
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
            torch.testing.assert_close(state_ours, env.get_state(), rtol=0, atol=0)
            torch.testing.assert_close(after_ours, torch.rand(3))  # torch's global RNG is left as it was
    finally:
        env.close()


@sim
def test_all_maniskill_workers_are_gone_after_one_crashes():
    """(After close(): checked for every worker-based case in test_env_contract.py.)"""
    import signal

    from env_toys import gone

    from envs.workers import EnvWorkerError

    env = pushcube(num_envs=2, num_workers=2)
    env.reset(seed=0)
    env.chunk_step(torch.zeros(2, 2, env.spec.action_dim))
    pids = env.worker_pids
    os.kill(pids[1], signal.SIGKILL)  # a simulator crash
    with pytest.raises(EnvWorkerError, match=r"env worker 1 .* died \(exit code -9\)"):
        env.chunk_step(torch.zeros(2, 2, env.spec.action_dim))
    assert all(gone(p) for p in pids)
