"""Demonstrations as supervised batches: a split by episode, action chunks from consecutive frames, and each
actor rank's share of every epoch.

A sample is one frame t of an episode [start, end): its observation, and the actions of frames t .. t + C - 1
(C = the policy's `action_horizon`). Frames past the episode's end repeat its last action and are masked
(`action_mask` False), as LeRobot pads `action_is_pad`; the policy's loss ignores them. Training and validation
hold whole episodes, so no validation frame shares an episode with a training frame.

Every actor rank draws the same seeded permutation of the training frames each epoch and takes every
world_size-th of them, so together the ranks see each frame once per epoch; all ranks take equal shares (the
few frames left over by the division are skipped for that epoch), as FSDP2 needs every rank to run the same
number of forward passes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) episode ids, each sorted: a seeded permutation holds out round(val_fraction * n)
    episodes (at least one when val_fraction > 0, and never all of them)."""
    held = int(round(val_fraction * num_episodes))
    if val_fraction > 0:
        held = min(max(held, 1), num_episodes - 1)
    order = np.random.default_rng(seed).permutation(num_episodes)
    return np.sort(order[held:]), np.sort(order[:held])


def frames_of(episode_ranges: Sequence[Sequence[int]], episodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices [F], the end index of each frame's episode [F]) of `episodes`, in episode order."""
    frames = [np.arange(episode_ranges[e][0], episode_ranges[e][1]) for e in episodes]
    ends = [np.full(episode_ranges[e][1] - episode_ranges[e][0], episode_ranges[e][1]) for e in episodes]
    if not frames:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(frames).astype(np.int64), np.concatenate(ends).astype(np.int64)


def action_windows(frames: np.ndarray, ends: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices [B, C] of the actions t .. t + C - 1 of each frame t [B], clamped to the last frame of its
    episode (`ends` [B] is one past it), and the mask [B, C] of those within the episode."""
    window = frames[:, None] + np.arange(horizon)[None, :]
    inside = window < ends[:, None]
    return np.minimum(window, ends[:, None] - 1), inside


class DemoBatches:
    """Supervised batches of one actor rank from a demonstration dataset (`envs.demos.DemoDataset`)."""

    def __init__(
        self,
        dataset,
        horizon: int,
        val_fraction: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_episodes: int | None = None,
    ) -> None:
        """`num_episodes`: use only the dataset's first N episodes (None: all)."""
        self.dataset, self.horizon, self.seed = dataset, horizon, seed
        self.rank, self.world_size = rank, world_size
        available = dataset.num_episodes
        if num_episodes is not None and num_episodes > available:
            raise ValueError(f"sft.num_episodes={num_episodes} but the dataset holds {available} episodes")
        train, val = split_episodes(num_episodes or available, val_fraction, seed)
        self.train_episodes, self.val_episodes = train, val
        self.train_frames, self.train_ends = frames_of(dataset.episode_ranges, train)
        if len(self.train_frames) < world_size:
            raise ValueError(
                f"{len(train)} training episodes with {len(self.train_frames)} frames are too few for {world_size} "
                "actor rank(s): use more demonstrations or a smaller sft.val_fraction"
            )
        val_frames, val_ends = frames_of(dataset.episode_ranges, val)
        share = len(val_frames) // world_size
        self.val_frames = val_frames[rank::world_size][:share]
        self.val_ends = val_ends[rank::world_size][:share]
        self.actions = dataset.actions  # [num_frames, A] float32, held whole: chunks index into it
        self.epoch, self.cursor = 0, 0  # where this rank is in its share of the current epoch
        self._order = self._epoch_order(0)

    @property
    def epoch_size(self) -> int:
        """Training frames per epoch, all ranks together."""
        return len(self.train_frames) // self.world_size * self.world_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_frames))
        share = len(perm) // self.world_size
        return perm[self.rank :: self.world_size][:share]

    def train_batch(self, size: int) -> dict:
        """The next `size` training samples of this rank (epochs follow one another without a gap)."""
        picked = []
        while size > 0:
            if self.cursor >= len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            take = self._order[self.cursor : self.cursor + size]
            picked.append(take)
            self.cursor += len(take)
            size -= len(take)
        rows = np.concatenate(picked)
        return self.batch(self.train_frames[rows], self.train_ends[rows])

    def val_batches(self, size: int) -> Iterator[dict]:
        """This rank's validation samples (the same count on every rank) in batches of at most `size`."""
        for start in range(0, len(self.val_frames), size):
            yield self.batch(self.val_frames[start : start + size], self.val_ends[start : start + size])

    def batch(self, frames: np.ndarray, ends: np.ndarray) -> dict:
        """Observations of `frames` plus their action chunks: the `Policy.supervised_loss` batch."""
        window, mask = action_windows(frames, ends, self.horizon)
        data = self.dataset.frames(frames)
        batch = {"task_descriptions": list(data["task_descriptions"])}
        for key in ("states", "main_images"):
            if key in data:
                batch[key] = torch.as_tensor(np.asarray(data[key]))
        batch["actions"] = torch.as_tensor(self.actions[window])
        batch["action_mask"] = torch.as_tensor(mask)
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._epoch_order(self.epoch)
