"""Demo collection with ManiSkill's motion-planning solutions: the screw planner's math, the CLI's errors, and
(sim) demos that replay to success through the suite's own env with exactly the observations stored."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import expm

from envs.maniskill.planner import screw_coordinates

sim = pytest.mark.sim
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "collect_demos.py"


def collect_demos_cli():
    """scripts/collect_demos.py as a module (its `main(argv)` returns the exit status)."""
    spec = importlib.util.spec_from_file_location("collect_demos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def twist_matrix(twist: np.ndarray) -> np.ndarray:
    """[v, w] -> the 4x4 matrix of se(3) whose exponential is the rigid motion."""
    v, w = twist[:3], twist[3:]
    matrix = np.zeros((4, 4))
    matrix[:3, :3] = [[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]
    matrix[:3, 3] = v
    return matrix


@pytest.mark.parametrize(
    "twist", [[0.1, -0.2, 0.05, 0.3, -0.4, 0.2], [0.2, 0.1, -0.3, 0, 0, 0], [0, 0, 0, 0, 1.2, 0]]
)
def test_screw_coordinates_invert_the_exponential(twist):
    motion = expm(twist_matrix(np.array(twist)))
    np.testing.assert_allclose(screw_coordinates(motion), twist, atol=1e-9)


def test_screw_coordinates_refuse_a_half_turn():
    assert screw_coordinates(expm(twist_matrix(np.array([0.1, 0, 0, 0, 0, np.pi])))) is None


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "PushCub-v1"], "unknown ManiSkill task 'PushCub-v1'. Did you mean \"PushCube-v1\"?"),
        (["--task", "PokeCube-v1"], "no motion-planning solution for 'PokeCube-v1'. Tasks with one: "),
        (["--control-mode", "pd_joint_vel"], "control_mode='pd_joint_vel' is not allowed"),
        (["--obs-mode", "depth"], "obs_mode='depth' is not allowed. Allowed: 'state', 'rgb'"),
        (["--env", "libero_10"], "is for env 'libero'; demos are made for maniskill envs"),
    ],
)
def test_bad_requests_exit_2_with_what_is_available(tmp_path, capsys, flags, message):
    pytest.importorskip("mani_skill")
    assert collect_demos_cli().main(["--out", str(tmp_path / "demos"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "demos").exists()


@sim  # no simulator, but ~10 s of imports in a fresh process
def test_the_script_itself_exits_2_without_a_traceback(tmp_path):
    pytest.importorskip("mani_skill")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "demos"), "--task", "PokeCube-v1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "error: ManiSkill has no motion-planning solution for 'PokeCube-v1'" in run.stderr


def test_control_modes_without_a_conversion_are_refused():
    pytest.importorskip("mani_skill")
    from envs.maniskill.demos import DemoRequestError, check_request

    with pytest.raises(
        DemoRequestError, match="cannot be converted from the planner's pd_joint_pos; available: "
    ):
        check_request("PushCube-v1", "state", "pd_joint_target_delta_pos")
    with pytest.raises(
        DemoRequestError, match="obs mode 'pointcloud' is not supported; available: state, rgb"
    ):
        check_request("PushCube-v1", "pointcloud", "pd_joint_delta_pos")


@sim
def test_planned_demos_replay_to_success_through_make_env(tmp_path):
    """2 PushCube demos, planned and converted to pd_joint_delta_pos, stored and read back: stepping the suite's
    env (make_env) from each demo's seed with its actions shows exactly the stored states and succeeds at the
    demo's last action, not before."""
    import torch

    from envs import EnvConfig, make_env
    from envs.demos import DemoWriter, open_demos
    from envs.maniskill.demos import DemoCollector

    config = EnvConfig.from_dict(
        {"name": "maniskill", "task": "PushCube-v1", "obs_mode": "state", "control_mode": "pd_joint_delta_pos",
         "num_envs": 1, "num_workers": 1, "max_episode_steps": 200},
        path="env",
    )  # fmt: skip
    collector = DemoCollector(config)
    try:
        with DemoWriter(tmp_path / "demos", collector.info) as writer:
            summary = collector.collect(writer, num_episodes=2, first_seed=0, max_attempts=6)
    finally:
        collector.close()
    assert summary.kept == 2 and summary.planned >= 2
    demos = open_demos(tmp_path / "demos")
    assert demos.num_episodes == 2 and demos.info.control_mode == "pd_joint_delta_pos"
    with make_env(config) as env:
        assert (demos.info.state_dim, demos.info.action_dim) == (env.spec.state_dim, env.spec.action_dim)
        for k, seed in enumerate(demos.episode_seeds):
            episode = demos.episode(k)
            obs = env.reset(initial_state_ids=[seed])
            assert episode["task_descriptions"][0] == obs["task_descriptions"][0]
            for t, action in enumerate(episode["actions"]):
                np.testing.assert_array_equal(obs["states"][0].numpy(), episode["states"][t])
                obs, _, terminated, _, infos = env.step(torch.from_numpy(action)[None])
                last = t == len(episode["actions"]) - 1
                assert bool(infos["success"][0]) == last and bool(terminated[0]) == last
