"""Per-step frames through the API (in-process and from workers) and the mp4 files VideoRecorder writes."""

from __future__ import annotations

import dataclasses

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from env_toys import CountdownConfig
from env_toys import colour_oracle_actions as oracle_actions

from envs import make_env
from envs.colour_targets import ColourTargetsConfig
from envs.video import GREEN, GREY, VideoRecorder, annotate


def read_mp4(path) -> list[np.ndarray]:
    with imageio.get_reader(path) as reader:
        return [frame for frame in reader]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_step_frames_hold_every_step_and_repeat_after_an_episode_ends(num_workers):
    env = make_env(CountdownConfig(num_envs=2, num_workers=num_workers, period=8))
    try:
        env.record_step_frames(True)
        env.reset(initial_state_ids=[1, 7])  # episodes of 2 and 8 steps
        *_, infos = env.chunk_step(torch.zeros(2, 4, 2))
        frames = infos["frames"]  # the toy draws the step count t into every pixel
        assert frames.shape == (2, 4, 4, 4, 3) and frames.dtype == torch.uint8
        assert frames[0, :, 0, 0, 0].tolist() == [1, 2, 2, 2]
        assert frames[1, :, 0, 0, 0].tolist() == [1, 2, 3, 4]
        env.record_step_frames(False)
        *_, infos = env.chunk_step(torch.zeros(2, 1, 2))
        assert "frames" not in infos
    finally:
        env.close()


def test_episode_videos_are_named_by_outcome_and_show_the_success_flag(tmp_path):
    env = make_env(ColourTargetsConfig(num_envs=2))
    recorder = VideoRecorder(env, tmp_path, env_ids=[1], frame_size=128, max_videos=2)
    recorder.reset(seed=3)
    lengths = []
    while len(recorder.written) < 2:
        *_, infos = recorder.chunk_step(oracle_actions(env).repeat(1, 3, 1))
        if infos["episode_done"][1]:
            lengths.append(int(infos["episode"]["episode_len"][1]))
    recorder.close()
    assert [p.name for p in recorder.written] == ["env1_ep0_success.mp4", "env1_ep1_success.mp4"]
    frames = read_mp4(recorder.written[0])
    assert len(frames) == lengths[0] + 1  # the reset frame, then one per step up to the end
    assert frames[0].shape[0] % 16 == 0 and frames[0].shape[1] == 128
    border = frames[-1][1, 64].astype(int)  # the frame is green once the cursor is on the target
    assert np.abs(border - GREEN).max() < 40 and np.abs(frames[0][1, 64].astype(int) - GREY).max() < 40


def test_grid_video_tiles_the_envs(tmp_path):
    recorder = VideoRecorder(
        make_env(ColourTargetsConfig(num_envs=4)), tmp_path, env_ids=[0, 1, 2], grid=True, frame_size=64
    )
    recorder.reset(seed=0)
    for _ in range(3):
        recorder.chunk_step(torch.zeros(4, 2, 2))
    recorder.close()
    (path,) = recorder.written
    frames = read_mp4(path)
    one = annotate(np.zeros((64, 64, 3), np.uint8), "x", False, "running", size=64)
    assert len(frames) == 1 + 3 * 2 and frames[0].shape == (2 * one.shape[0], 2 * one.shape[1], 3)


def test_envs_without_images_cannot_be_recorded(tmp_path):
    env = make_env(CountdownConfig(num_envs=2))
    env.spec = dataclasses.replace(env.spec, image_size=None)  # as a state-only env
    with pytest.raises(ValueError, match="obs_mode=rgb"):
        VideoRecorder(env, tmp_path)
    with pytest.raises(ValueError, match="no main_images"):
        env.record_step_frames(True)
