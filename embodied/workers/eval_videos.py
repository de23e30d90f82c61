"""One mp4 per evaluation episode: the reset frame, then one frame per env step, with the instruction, a
frame that is green while the task's success flag holds, and the outcome on the last frame.

`EpisodeVideos` follows an `EvalEpisodes` tracker on one `VectorEnv`: it records the envs whose first episode
of the round is still running (padding episodes and the episodes after the first are not recorded), so an
episode of length L gives L + 1 frames.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from embodied.evaluation import EvalEpisodes
from envs.base import Obs
from envs.video import annotate, write_mp4


class EpisodeVideos:
    """Videos of the tracked episodes of `tracker.env`, written to `folder` as `<name(row)>_<outcome>.mp4`
    (`name` is asked at the start of each round)."""

    def __init__(
        self, tracker: EvalEpisodes, folder: Path, name: Callable[[int], str], fps: int = 10
    ) -> None:
        tracker.env.record_step_frames(True)
        self.tracker, self.folder, self.name, self.fps = tracker, Path(folder), name, fps
        self.frames: dict[int, list[np.ndarray]] = {}
        self.names: dict[int, str] = {}
        self.written: dict[int, str] = {}  # env row -> the video of its episode that ended in the last chunk

    def start_round(self, obs: Obs) -> None:
        """The reset frame of every tracked env (call after the tracker's start of a round)."""
        rows = [int(i) for i in np.flatnonzero(self.tracker.tracked)]
        self.frames = {
            i: [annotate(obs["main_images"][i].numpy(), obs["task_descriptions"][i], False, "running")]
            for i in rows
        }
        self.names = {i: self.name(i) for i in rows}  # now: the tracker moves on to the next round's ids

    def add(self, infos: dict, tracked: np.ndarray) -> dict[int, str]:
        """The frames of one chunk for the envs `tracked` before it; writes the episodes that ended and returns
        their paths by env row."""
        done = infos["episode_done"].numpy()
        self.written = {}
        for i in np.flatnonzero(tracked):
            frames = self.frames[int(i)]
            text = self.tracker.descriptions[int(i)]
            steps = (
                int(infos["episode"]["episode_len"][i]) + 1 - len(frames)
                if done[i]
                else infos["frames"].shape[1]
            )
            success_once = bool(done[i]) and bool(infos["episode"]["success_once"][i])
            for c in range(steps):
                status = "running"
                if done[i] and c == steps - 1:
                    status = "success" if success_once else "failed"
                frames.append(
                    annotate(infos["frames"][i, c].numpy(), text, bool(infos["success"][i, c]), status)
                )
            if done[i]:
                path = self.folder / f"{self.names[int(i)]}_{'success' if success_once else 'fail'}.mp4"
                write_mp4(path, frames, self.fps)
                self.written[int(i)] = str(path)
                del self.frames[int(i)]
        return self.written

    def close(self) -> None:
        self.tracker.env.record_step_frames(False)
