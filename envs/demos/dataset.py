"""Demonstrations in memory, indexed by frame: what SFT samples mini-batches from.

Every reader (LeRobot folders, ManiSkill .h5 files) builds a `DemoDataset`. States, actions and indices are
numpy arrays held whole (a few MB for hundreds of episodes); images are decoded on first use and kept, so
random mini-batches cost an array gather after each frame has been seen once.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from envs.demos.info import DemoFormatError, DemoInfo


class PngFrames:
    """Frames stored as PNG bytes, decoded on demand into a cache: `frames[indices]` -> uint8 [B, H, W, 3]."""

    def __init__(self, encoded: Sequence[bytes], height: int, width: int) -> None:
        self.encoded = encoded
        self.cache = np.zeros((len(encoded), height, width, 3), np.uint8)
        self.decoded = np.zeros(len(encoded), bool)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        for i in np.unique(indices[~self.decoded[indices]]).tolist():
            image = np.asarray(Image.open(io.BytesIO(self.encoded[i])).convert("RGB"))
            if image.shape != self.cache.shape[1:]:
                raise DemoFormatError(
                    f"frame {i}: image of shape {image.shape}, the dataset declares {self.cache.shape[1:]}"
                )
            self.cache[i] = image
            self.decoded[i] = True
        return self.cache[indices]


class DemoDataset:
    """Episodes of (observation, action) frames; frame i of the dataset is `frames([i])`.

    Args:
        info: what the dataset holds.
        states: float32 [N, D]; actions: float32 [N, A], the action taken in the observation of the same frame.
        episode_index, frame_index: int64 [N]; frames of an episode are contiguous and in order.
        task_index: int64 [N] into `tasks` (the language instructions).
        main_images: uint8 [N, H, W, 3] or `PngFrames`, None for state datasets.
        episode_seeds: the reset seed of each episode; episode_success: whether it ended in success.
    """

    def __init__(
        self,
        info: DemoInfo,
        states: np.ndarray,
        actions: np.ndarray,
        episode_index: np.ndarray,
        frame_index: np.ndarray,
        task_index: np.ndarray,
        tasks: list[str],
        episode_seeds: list[int],
        episode_success: list[bool],
        main_images: np.ndarray | PngFrames | None = None,
    ) -> None:
        n = len(states)
        for name, array in (
            ("actions", actions),
            ("episode_index", episode_index),
            ("frame_index", frame_index),
        ):
            if len(array) != n:
                raise DemoFormatError(f"{name} has {len(array)} frames, states has {n}")
        if (main_images is None) == info.has_images or (main_images is not None and len(main_images) != n):
            raise DemoFormatError(
                f"obs_mode={info.obs_mode!r} but the frames {'lack' if main_images is None else 'carry'} images "
                f"({0 if main_images is None else len(main_images)} for {n} frames)"
            )
        self.info = info
        self.states = np.ascontiguousarray(states, np.float32)
        self.actions = np.ascontiguousarray(actions, np.float32)
        self.episode_index = np.asarray(episode_index, np.int64)
        self.frame_index = np.asarray(frame_index, np.int64)
        self.task_index = np.asarray(task_index, np.int64)
        self.tasks = list(tasks)
        self.main_images = main_images
        self.episode_seeds = [int(s) for s in episode_seeds]
        self.episode_success = [bool(s) for s in episode_success]
        self.episode_ranges = _episode_ranges(self.episode_index, self.frame_index)
        if len(self.episode_ranges) != len(self.episode_seeds):
            raise DemoFormatError(
                f"{len(self.episode_ranges)} episodes in the frames but {len(self.episode_seeds)} episode seeds"
            )

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ranges)

    @property
    def num_frames(self) -> int:
        return len(self.states)

    def frames(self, indices: np.ndarray) -> dict:
        """The frames at `indices` [B]: states [B, D], actions [B, A], main_images [B, H, W, 3] (rgb only),
        task_descriptions (B str), episode_index and frame_index int64 [B]."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_frames):
            raise IndexError(
                f"frame indices must lie in [0, {self.num_frames}); got {idx.min()}..{idx.max()}"
            )
        batch = {
            "states": self.states[idx],
            "actions": self.actions[idx],
            "task_descriptions": [self.tasks[t] for t in self.task_index[idx].tolist()],
            "episode_index": self.episode_index[idx],
            "frame_index": self.frame_index[idx],
        }
        if self.main_images is not None:
            batch["main_images"] = self.main_images[idx]
        return batch

    def episode(self, k: int) -> dict:
        """All frames of episode `k` (the k-th episode in storage order), as `frames` returns them."""
        start, end = self.episode_ranges[k]
        return self.frames(np.arange(start, end))

    def __repr__(self) -> str:
        return (
            f"DemoDataset({self.info.env_id}, {self.info.obs_mode}, {self.info.control_mode}: "
            f"{self.num_episodes} episodes, {self.num_frames} frames)"
        )


def _episode_ranges(episode_index: np.ndarray, frame_index: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of equal episode_index, checking that each run counts frames from 0."""
    if len(episode_index) == 0:
        return []
    starts = np.flatnonzero(np.diff(episode_index) != 0) + 1
    bounds = np.concatenate([[0], starts, [len(episode_index)]]).tolist()
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if len(set(episode_index[bounds[:-1]].tolist())) != len(ranges):
        raise DemoFormatError(
            "the frames of an episode are not contiguous (episode_index repeats after a gap)"
        )
    for start, end in ranges:
        if not np.array_equal(frame_index[start:end], np.arange(end - start)):
            raise DemoFormatError(
                f"episode {int(episode_index[start])}: frame_index is not 0..{end - start - 1} in order"
            )
    return [(int(a), int(b)) for a, b in ranges]
