"""Videos of rollouts: one mp4 per episode of chosen envs, or one mp4 of a grid of envs.

`VideoRecorder` wraps any `VectorEnv` with `main_images` and passes every call through. It asks the env for
per-step frames (`record_step_frames`), so a chunk of C actions gives C frames. Each frame is scaled up,
framed green while the task's success flag holds (grey otherwise), and captioned with the instruction and
the episode's status (running / success / failed). Files are named
`<prefix>env<i>_ep<k>_<success|fail>.mp4` (per episode) or `<prefix>grid_<k>.mp4`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from envs.base import Obs, VectorEnv

GREEN, GREY, RED, WHITE = (40, 200, 60), (110, 110, 110), (220, 50, 50), (235, 235, 235)
BORDER = 4
CAPTION_HEIGHT = 40


def annotate(
    frame: np.ndarray, instruction: str, success_now: bool, status: str, size: int = 256
) -> np.ndarray:
    """`frame` uint8 [H, W, 3] scaled to `size` wide, framed by the success flag, captioned; uint8 [H', size, 3].

    The output height and width are multiples of 16 (what H.264 encoders want).
    """
    from PIL import Image, ImageDraw, ImageFont

    h, w = frame.shape[:2]
    height = int(round(size * h / w / 16)) * 16 or 16
    image = Image.fromarray(frame).resize((size, height), Image.NEAREST)
    canvas = Image.new("RGB", (size, height + CAPTION_HEIGHT + (16 - CAPTION_HEIGHT % 16) % 16), (20, 20, 20))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, size - 1, height - 1], outline=GREEN if success_now else GREY, width=BORDER)
    font = ImageFont.load_default(size=12)
    colour = {"success": GREEN, "failed": RED}.get(status, WHITE)
    draw.text((4, height + 3), status, fill=colour, font=font)
    draw.text((4, height + 19), _fit(draw, instruction, font, size - 8), fill=WHITE, font=font)
    return np.asarray(canvas)


def _fit(draw, text: str, font, width: int) -> str:
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def tile(frames: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Frames of equal shape [H, W, 3] laid out in a grid with `columns` columns (blank cells at the end)."""
    rows = -(-len(frames) // columns)
    blank = np.zeros_like(frames[0])
    cells = list(frames) + [blank] * (rows * columns - len(frames))
    return np.concatenate(
        [np.concatenate(cells[r * columns : (r + 1) * columns], axis=1) for r in range(rows)]
    )


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=7, macro_block_size=16) as writer:
        for frame in frames:
            writer.append_data(frame)


class VideoRecorder(VectorEnv):
    """Records `env_ids` of `env` (see the module docstring); `grid=True` tiles them into one video."""

    def __init__(
        self,
        env: VectorEnv,
        folder: str | Path,
        env_ids: Sequence[int] = (0,),
        grid: bool = False,
        fps: int = 10,
        frame_size: int = 256,
        prefix: str = "",
        max_videos: int | None = None,
    ) -> None:
        if env.spec.image_size is None:
            raise ValueError(
                "VideoRecorder needs main_images; use an image observation mode (e.g. obs_mode=rgb)"
            )
        if any(not 0 <= i < env.num_envs for i in env_ids):
            raise ValueError(f"env_ids {list(env_ids)} must lie in [0, {env.num_envs})")
        self.env, self.folder, self.env_ids, self.grid = env, Path(folder), list(env_ids), grid
        self.fps, self.frame_size, self.prefix, self.max_videos = fps, frame_size, prefix, max_videos
        self.num_envs, self.spec = env.num_envs, env.spec
        self.auto_reset = env.config.auto_reset  # EpisodeVectorEnv and ProcessVectorEnv carry their config
        self.written: list[Path] = []
        env.record_step_frames(True)
        self._frames: dict[int, list[np.ndarray]] = {i: [] for i in self.env_ids}
        self._episodes = dict.fromkeys(self.env_ids, 0)
        self._success_once = dict.fromkeys(self.env_ids, False)
        self._text: list[str] = [""] * env.num_envs

    # -- frames -------------------------------------------------------------------------------------------------
    def _add(self, i: int, image: torch.Tensor, success_now: bool, status: str) -> None:
        frame = annotate(image.cpu().numpy(), self._text[i], success_now, status, self.frame_size)
        self._frames[i].append(frame)

    def _start(self, obs: Obs, rows: Sequence[int]) -> None:
        for i in rows:
            self._text[i] = obs["task_descriptions"][i]
            self._success_once[i] = False
            self._frames[i] = [] if not self.grid else self._frames[i]
            self._add(i, obs["main_images"][i], False, "running")

    def _room(self) -> bool:
        return self.max_videos is None or len(self.written) < self.max_videos

    def _finish_episode(self, i: int) -> None:
        if not self.grid and self._room():
            outcome = "success" if self._success_once[i] else "fail"
            path = self.folder / f"{self.prefix}env{i}_ep{self._episodes[i]}_{outcome}.mp4"
            write_mp4(path, self._frames[i], self.fps)
            self.written.append(path)
        self._episodes[i] += 1

    def _flush_grid(self) -> None:
        if self.grid and self._room() and any(self._frames[i] for i in self.env_ids):
            length = max(len(self._frames[i]) for i in self.env_ids)
            padded = [
                self._frames[i] + [self._frames[i][-1]] * (length - len(self._frames[i]))
                for i in self.env_ids
            ]
            columns = int(np.ceil(np.sqrt(len(self.env_ids))))
            path = self.folder / f"{self.prefix}grid_{len(self.written)}.mp4"
            write_mp4(path, [tile([p[t] for p in padded], columns) for t in range(length)], self.fps)
            self.written.append(path)
        for i in self.env_ids:
            self._frames[i] = []

    # -- the API --------------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, initial_state_ids: Sequence[int] | None = None) -> Obs:
        self._flush_grid()
        obs = self.env.reset(seed=seed, initial_state_ids=initial_state_ids)
        self._start(obs, self.env_ids)
        return obs

    def chunk_step(self, actions: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        obs, rewards, terminations, truncations, infos = self.env.chunk_step(actions)
        ends = (terminations | truncations).float().argmax(1)
        for i in self.env_ids:
            done = bool(infos["episode_done"][i])
            last = int(ends[i]) if done else actions.shape[1] - 1
            for c in range(last + 1):
                success_now = bool(infos["success"][i, c])
                self._success_once[i] |= success_now
                status = "running"
                if done and c == last:
                    status = "success" if self._success_once[i] else "failed"
                self._add(i, infos["frames"][i, c], success_now, status)
            if done:
                self._finish_episode(i)
                if self.auto_reset:
                    self._start(obs, [i])
        return obs, rewards, terminations, truncations, infos

    def close(self) -> None:
        self._flush_grid()
        self.env.close()
