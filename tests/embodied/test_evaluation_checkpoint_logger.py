"""Evaluation episodes (fixed initial states, first episode per env, padded rounds), atomic checkpoints and
resume look-up, and the metric logger's TensorBoard output; in one process, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embodied.checkpoint import (
    LAYOUT_VERSION,
    Checkpointer,
    CheckpointError,
    find_resume,
    latest_checkpoint,
    list_checkpoints,
)
from embodied.config import LoggerConfig
from embodied.evaluation import EvalEpisodes, evaluate_in_process, split_ids, summarize
from envs.base import EnvConfig, make_env
from policies.base import PolicyConfig, make_policy


def colour_env(num_envs: int = 3, seed: int = 0):
    config = {"name": "colour_targets", "num_envs": num_envs, "max_episode_steps": 6, "seed": seed}
    return make_env(EnvConfig.from_dict(config, path="env"))


def test_split_ids_is_contiguous_and_balanced():
    assert split_ids(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_ids([1, 2], 4) == [[1], [2], [], []]


def test_eval_episodes_cover_every_initial_state_once_in_padded_rounds():
    env = colour_env(num_envs=3)
    ids = [100, 101, 102, 103, 104]  # two rounds: 3 envs, then 2 (+ 1 padding env whose result is dropped)
    episodes = EvalEpisodes(env, ids)
    obs, chunks = episodes.start(), 0
    while obs is not None:
        obs, _ = episodes.step(torch.zeros(3, 1, env.spec.action_dim))
        chunks += 1
    assert sorted(e["initial_state_id"] for e in episodes.episodes) == ids
    assert all(e["episode_len"] <= 6 for e in episodes.episodes)
    assert chunks <= 12  # at most the time limit per round
    env.close()


def test_deterministic_evaluation_repeats_exactly():
    env = colour_env(num_envs=2)
    torch.manual_seed(0)
    policy = make_policy(
        PolicyConfig.from_dict({"name": "cnn", "channels": [4, 4, 4], "feature_dim": 8, "head_hidden": 8}),
        env.spec,
    )
    first = evaluate_in_process(policy, env, [7, 8, 9])
    again = evaluate_in_process(policy, env, [7, 8, 9])
    assert first == again and len(first) == 3
    metrics = summarize(first)
    assert metrics["eval/num_episodes"] == 3.0
    assert metrics["eval/return"] == pytest.approx(np.mean([e["return"] for e in first]))
    env.close()


def commit(checkpointer: Checkpointer, iteration: int) -> None:
    folder = checkpointer.begin(iteration)
    (folder / "weights.bin").write_bytes(b"x" * 10)
    checkpointer.commit(folder, iteration, {"env_steps": iteration * 10}, {"run": {"name": "t"}})


def test_checkpoints_are_complete_pruned_and_found(tmp_path):
    run = tmp_path / "runs" / "t" / "20250101-000000"
    checkpointer = Checkpointer(run, keep=2)
    for iteration in (1, 2, 3):
        commit(checkpointer, iteration)
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["iter_000002", "iter_000003"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "iter_000003"
    latest = latest_checkpoint(run)
    state = json.loads((latest / "state.json").read_text())
    assert state["iteration"] == 3 and state["env_steps"] == 30 and state["layout"] == LAYOUT_VERSION
    assert state["files"]["weights.bin"] == 10 and state["files"]["config.yaml"] > 0
    assert (latest / "config.yaml").is_file() and (latest / "rng_driver.pt").is_file()
    # a half-written checkpoint (killed before the rename) is invisible
    checkpointer.begin(4)
    assert latest_checkpoint(run) == latest
    assert find_resume("auto", tmp_path / "runs" / "t") == (run, latest)
    assert find_resume(str(run), tmp_path / "runs" / "t") == (run, latest)
    assert find_resume(str(list_checkpoints(run)[0]), tmp_path / "runs" / "t")[1].name == "iter_000002"


def test_resume_lookups_that_find_nothing(tmp_path):
    assert find_resume("auto", tmp_path / "nothing") is None
    with pytest.raises(CheckpointError, match="no complete checkpoint there"):
        find_resume(str(tmp_path), tmp_path)


def test_logger_writes_scalars_config_and_videos_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from embodied.logger import MetricLogger
    from envs.video import write_mp4

    config = LoggerConfig.from_dict({"wandb": {"mode": "disabled"}})
    logger = MetricLogger(tmp_path, config, {"run": {"name": "t"}}, "t")
    logger.log({"env/return": 1.5, "time/rollout": 0.2}, step=100)
    video = tmp_path / "clip.mp4"
    write_mp4(video, [np.full((32, 32, 3), i * 20, np.uint8) for i in range(5)], fps=10)
    logger.log_video("eval/video_0", str(video), step=100)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("env/return")] == [1.5]
    image = events.Images("eval/video_0")[0]
    assert image.encoded_image_string[:6] == b"GIF89a" and image.width == 32
    assert "config/text_summary" in events.Tags()["tensors"]


def test_eval_grid_video_of_the_first_episodes(tmp_path):
    import imageio.v2 as imageio

    from embodied.workers.env_worker import GridRecorder

    env = colour_env(num_envs=3)
    recorder = GridRecorder(env, count=2)
    episodes = EvalEpisodes(env, [5, 6, 7, 8])
    obs = episodes.start()
    recorder.instruction = obs["task_descriptions"][0]
    while obs is not None:
        obs, infos = episodes.step(torch.zeros(3, 1, env.spec.action_dim))
        recorder.add(infos)
    (path,) = recorder.write(tmp_path)
    frames = imageio.mimread(path, memtest=False)
    lengths = [len(f) for f in recorder.frames]
    assert len(frames) == max(lengths) and max(lengths) <= 6  # first episodes only, time limit 6
    assert frames[0].shape[1] == 2 * 256  # two envs side by side, 256 px wide each
    env.close()
