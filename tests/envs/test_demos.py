"""Demonstration datasets: LeRobot v3.0 round trips, the layout LeRobot reads, ManiSkill .h5 files, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from envs.demos import DemoFormatError, DemoInfo, DemoWriter, open_demos
from envs.demos import lerobot as lerobot_format
from envs.demos.stats import aggregate_stats, feature_stats

STATE_INFO = DemoInfo(
    env_id="PushCube-v1",
    obs_mode="state",
    control_mode="pd_joint_delta_pos",
    fps=20,
    state_dim=5,
    action_dim=3,
    instruction="push the cube",
)
RGB_INFO = DemoInfo(**{**STATE_INFO.to_dict(), "obs_mode": "rgb", "image_size": 16})


def make_episodes(info: DemoInfo, lengths: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    episodes = []
    for k, t in enumerate(lengths):
        episode = {
            "states": rng.normal(size=(t, info.state_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, size=(t, info.action_dim)).astype(np.float32),
            "seed": 100 + k,
            "task": info.instruction if k % 2 == 0 else "another instruction",
            "success": k != 1,
        }
        if info.has_images:
            episode["main_images"] = rng.integers(0, 256, (t, info.image_size, info.image_size, 3), np.uint8)
        episodes.append(episode)
    return episodes


def write(path, info: DemoInfo, episodes: list[dict]):
    with DemoWriter(path, info) as writer:
        for episode in episodes:
            writer.add_episode(**episode)
    return open_demos(path)


@pytest.mark.parametrize("info", [STATE_INFO, RGB_INFO], ids=["state", "rgb"])
def test_round_trip_gives_back_every_frame(tmp_path, info):
    episodes = make_episodes(info, [4, 7, 1])
    demos = write(tmp_path / "demos", info, episodes)
    assert demos.info == info
    assert demos.num_episodes == 3 and demos.num_frames == 12
    assert demos.episode_ranges == [(0, 4), (4, 11), (11, 12)]
    assert demos.episode_seeds == [100, 101, 102] and demos.episode_success == [True, False, True]
    indices = np.array([11, 0, 5, 5, 3])  # random order, a repeat, an episode of one frame
    batch = demos.frames(indices)
    episode_of = np.array([0] * 4 + [1] * 7 + [2])
    start_of = np.array([0, 4, 11])
    for row, i in enumerate(indices.tolist()):
        k, t = episode_of[i], i - start_of[episode_of[i]]
        np.testing.assert_array_equal(batch["states"][row], episodes[k]["states"][t])
        np.testing.assert_array_equal(batch["actions"][row], episodes[k]["actions"][t])
        assert batch["task_descriptions"][row] == episodes[k]["task"]
        assert batch["episode_index"][row] == k and batch["frame_index"][row] == t
        if info.has_images:  # PNG is lossless: exactly the images given
            np.testing.assert_array_equal(batch["main_images"][row], episodes[k]["main_images"][t])
    assert batch["states"].dtype == np.float32 and batch["episode_index"].dtype == np.int64
    assert ("main_images" in batch) == info.has_images
    if info.has_images:
        assert batch["main_images"].dtype == np.uint8 and batch["main_images"].shape == (5, 16, 16, 3)


def test_layout_is_lerobot_v3(tmp_path):
    """The files and columns LeRobot 0.4's LeRobotDataset reads (checked against lerobot itself by
    scripts/check_lerobot_readable.py in a separate venv)."""
    demos_path = tmp_path / "demos"
    write(demos_path, RGB_INFO, make_episodes(RGB_INFO, [3, 2]))
    info = json.loads((demos_path / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2 and info["total_frames"] == 5
    assert info["features"]["observation.images.main"]["dtype"] == "image"
    assert info["features"]["observation.state"]["shape"] == [5] and info["inflow"]["env_id"] == "PushCube-v1"
    data = pq.read_table(demos_path / "data" / "chunk-000" / "file-000.parquet")
    assert str(data.schema.field("observation.state").type) == "fixed_size_list<element: float>[5]"
    assert data.column("index").to_pylist() == [0, 1, 2, 3, 4]
    assert data.column("timestamp").to_pylist() == pytest.approx([0, 0.05, 0.1, 0, 0.05])
    assert b"huggingface" in data.schema.metadata
    episodes = pq.read_table(demos_path / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 3), (3, 5)]
    assert episodes[1]["tasks"] == ["another instruction"] and episodes[1][
        "stats/observation.state/count"
    ] == [2]
    tasks = pq.read_table(demos_path / "meta" / "tasks.parquet")
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert tasks.column("__index_level_0__").to_pylist() == ["push the cube", "another instruction"]
    stats = json.loads((demos_path / "meta" / "stats.json").read_text())
    assert np.array(stats["observation.images.main"]["mean"]).shape == (3, 1, 1)


def test_large_datasets_are_split_over_data_files(tmp_path, monkeypatch):
    monkeypatch.setattr(lerobot_format, "DATA_FILE_MB", 1e-4)  # ~100 bytes: a new file after every episode
    episodes = make_episodes(STATE_INFO, [3, 5, 2])
    demos = write(tmp_path / "demos", STATE_INFO, episodes)
    assert len(list((tmp_path / "demos" / "data").glob("chunk-000/file-*.parquet"))) == 3
    np.testing.assert_array_equal(
        demos.frames(np.arange(10))["states"], np.concatenate([e["states"] for e in episodes])
    )


def test_aggregated_stats_equal_those_of_all_frames():
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(t, 4)) for t in (3, 8, 5)]
    whole, pooled = feature_stats(np.concatenate(parts)), aggregate_stats([feature_stats(p) for p in parts])
    for name in ("min", "max", "mean", "std", "count"):
        np.testing.assert_allclose(pooled[name], whole[name], rtol=1e-12)


@pytest.mark.parametrize(
    "episode, message",
    [
        ({"states": np.zeros((3, 4)), "actions": np.zeros((3, 3))}, r"states must be float32 \[T>0, 5\]"),
        ({"states": np.zeros((3, 5)), "actions": np.zeros((2, 3))}, r"actions must be float32 \[3, 3\]"),
        ({"states": np.full((1, 5), np.nan), "actions": np.zeros((1, 3))}, "must be finite"),
        (
            {
                "states": np.zeros((1, 5)),
                "actions": np.zeros((1, 3)),
                "main_images": np.zeros((1, 8, 8, 3), np.uint8),
            },
            "main_images given for a state dataset",
        ),
    ],
)
def test_writer_names_what_is_wrong_with_an_episode(tmp_path, episode, message):
    with DemoWriter(tmp_path / "demos", STATE_INFO) as writer, pytest.raises(DemoFormatError, match=message):
        writer.add_episode(**episode)


def test_writer_checks_images_and_folders(tmp_path):
    with DemoWriter(tmp_path / "rgb", RGB_INFO) as writer:
        with pytest.raises(DemoFormatError, match=r"main_images must be uint8 \[2, 16, 16, 3\]"):
            writer.add_episode(np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((2, 8, 8, 3), np.uint8))
        writer.add_episode(np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(DemoFormatError, match="is closed"):
        writer.add_episode(np.zeros((2, 5)), np.zeros((2, 3)), np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(DemoFormatError, match="already exists and is not an empty folder"):
        DemoWriter(tmp_path / "rgb", RGB_INFO)
    with pytest.raises(DemoFormatError, match="rgb datasets need an image size"):
        DemoInfo(**{**STATE_INFO.to_dict(), "obs_mode": "rgb"})


def test_open_demos_says_what_it_reads(tmp_path):
    with pytest.raises(DemoFormatError, match="does not exist; demonstrations are a LeRobot dataset folder"):
        open_demos(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(DemoFormatError, match="no meta/info.json"):
        open_demos(tmp_path / "half")
    DemoWriter(tmp_path / "empty", STATE_INFO).close()  # no episode: no dataset
    with pytest.raises(DemoFormatError, match="no meta/info.json"):
        open_demos(tmp_path / "empty")
    write(tmp_path / "old", STATE_INFO, make_episodes(STATE_INFO, [2]))
    info_path = tmp_path / "old" / "meta" / "info.json"
    info_path.write_text(info_path.read_text().replace('"v3.0"', '"v2.1"'))
    with pytest.raises(DemoFormatError, match="format v2.1; this reader reads v3.0"):
        open_demos(tmp_path / "old")


# ----------------------------------------------------------------------------------------------------------
# ManiSkill's .h5 trajectory files, written here in the layout of its RecordEpisode wrapper


def write_maniskill_h5(path, obs_mode: str, lengths: list[int]) -> list[dict]:
    """A trajectory file as ManiSkill records it: traj_<id> groups with T actions and T + 1 observations."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(2)
    episodes, meta = [], []
    with h5py.File(path, "w") as f:
        for k, t in enumerate(lengths):
            group = f.create_group(f"traj_{k}", track_order=True)
            actions = rng.uniform(-1, 1, (t, 8)).astype(np.float32)
            group.create_dataset("actions", data=actions)
            group.create_dataset("success", data=np.arange(t) == t - 1)
            episode = {"actions": actions}
            if obs_mode == "state":
                episode["states"] = rng.normal(size=(t + 1, 6)).astype(np.float32)
                group.create_dataset("obs", data=episode["states"])
            elif obs_mode == "rgb":
                qpos, qvel = rng.normal(size=(t + 1, 9)), rng.normal(size=(t + 1, 9))
                tcp, grasped = rng.normal(size=(t + 1, 7)), rng.integers(0, 2, t + 1).astype(bool)
                rgb = rng.integers(0, 256, (t + 1, 12, 12, 3), np.uint8)
                obs = group.create_group("obs", track_order=True)
                agent = obs.create_group("agent", track_order=True)
                agent.create_dataset("qpos", data=qpos.astype(np.float32))
                agent.create_dataset("qvel", data=qvel.astype(np.float32))
                extra = obs.create_group("extra", track_order=True)
                extra.create_dataset("tcp_pose", data=tcp.astype(np.float32))
                extra.create_dataset("is_grasped", data=grasped)
                camera = obs.create_group("sensor_data", track_order=True).create_group("base_camera")
                camera.create_dataset("rgb", data=rgb, compression="gzip")
                episode["states"] = np.concatenate([qpos, qvel, tcp, grasped[:, None]], axis=1).astype(
                    np.float32
                )
                episode["main_images"] = rgb
            episodes.append(episode)
            meta.append(
                {
                    "episode_id": k,
                    "episode_seed": 7 + k,
                    "reset_kwargs": {"seed": 7 + k},
                    "control_mode": "pd_joint_pos",
                    "elapsed_steps": t,
                    "success": True,
                }
            )
    env_kwargs = {"obs_mode": obs_mode, "control_mode": "pd_joint_pos", "sim_backend": "physx_cpu"}
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "env_info": {"env_id": "PickCube-v1", "env_kwargs": env_kwargs, "max_episode_steps": 50},
                "source_type": "motionplanning",
                "episodes": meta,
            }
        )
    )
    return episodes


@pytest.mark.parametrize("obs_mode", ["state", "rgb"])
def test_maniskill_h5_reads_as_the_suite_observes(tmp_path, obs_mode):
    episodes = write_maniskill_h5(tmp_path / "trajectory.h5", obs_mode, [3, 5])
    demos = open_demos(tmp_path / "trajectory.h5")
    assert demos.info.env_id == "PickCube-v1" and demos.info.control_mode == "pd_joint_pos"
    assert demos.info.obs_mode == obs_mode and demos.info.image_size == (12 if obs_mode == "rgb" else None)
    assert demos.episode_ranges == [(0, 3), (3, 8)] and demos.episode_seeds == [7, 8]
    batch = demos.frames(np.arange(8))
    # T actions, the T observations they were taken in (the last observation has no action)
    np.testing.assert_array_equal(batch["states"], np.concatenate([e["states"][:-1] for e in episodes]))
    np.testing.assert_array_equal(batch["actions"], np.concatenate([e["actions"] for e in episodes]))
    assert batch["task_descriptions"][0] == "pick up the red cube and move it to the goal position"
    if obs_mode == "rgb":
        np.testing.assert_array_equal(
            batch["main_images"], np.concatenate([e["main_images"][:-1] for e in episodes])
        )


def test_maniskill_h5_without_observations_says_how_to_get_them(tmp_path):
    write_maniskill_h5(tmp_path / "plan.h5", "none", [2])
    meta = json.loads((tmp_path / "plan.json").read_text())
    meta["env_info"]["env_kwargs"]["obs_mode"] = "state"
    (tmp_path / "plan.json").write_text(json.dumps(meta))
    with pytest.raises(DemoFormatError, match="holds no observations .*replay_trajectory --traj-path"):
        open_demos(tmp_path / "plan.h5")
    meta["env_info"]["env_kwargs"]["obs_mode"] = "pointcloud"
    (tmp_path / "plan.json").write_text(json.dumps(meta))
    with pytest.raises(DemoFormatError, match="obs_mode 'pointcloud'; readable are state, state_dict, rgb"):
        open_demos(tmp_path / "plan.h5")
    (tmp_path / "plan.json").unlink()
    with pytest.raises(DemoFormatError, match="its metadata plan.json is missing"):
        open_demos(tmp_path / "plan.h5")
