"""Metrics to TensorBoard and a CSV file (always) and Weights & Biases, and progress on the console.

W&B runs offline by default (files under the run folder, `wandb sync` uploads them later) and online when
WANDB_API_KEY is set or `logger.wandb.mode=online`. The resolved config goes to both (TensorBoard: as text).
Eval videos (mp4) go to W&B as videos and to TensorBoard as animated GIFs in the images tab.

A resumed run continues after its checkpoint's step (env steps): what the stopped run logged after that step
is dropped from TensorBoard (its purge at the first new step) and from metrics.csv (those rows removed), so
each step appears once. W&B cannot rewind a run (its rewind is in private preview): it keeps the first value
logged at a step, so the steps between the checkpoint and the stop show the stopped run's values there; the
steps a killed driver had not yet handed to W&B are sent again on resume (`_replay_to_wandb`).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from embodied.config import LoggerConfig


def wandb_mode(config: LoggerConfig) -> str:
    mode = config.wandb.mode
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


CSV_FILE = "metrics.csv"
WANDB_REPLAY_STEPS = 50  # steps a resumed run sends W&B again (see MetricLogger._replay_to_wandb)


class CsvMetrics:
    """metrics.csv: one row per scalar (`step,key,value`; step: the env steps, as in TensorBoard and W&B),
    written as it is logged (a killed run keeps every row up to its last log)."""

    HEADER = ("step", "key", "value")

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.kept: list[list[str]] = []  # the rows up to a resumed run's checkpoint
        if resume_step is not None and path.is_file():
            self.kept = self._keep_until(resume_step)
        fresh = not path.is_file() or path.stat().st_size == 0
        self.file = open(path, "a", newline="")  # noqa: SIM115 - open for the run, closed by close()
        self.writer = csv.writer(self.file)
        if fresh:
            self.writer.writerow(self.HEADER)

    def _keep_until(self, step: int) -> list[list[str]]:
        """Drop the rows after `step` (and a last row a kill cut short), atomically; returns those kept."""
        with open(self.path, newline="") as f:
            rows = [r for r in csv.reader(f) if len(r) == 3 and r[0].isdigit() and int(r[0]) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([self.HEADER, *rows])
        os.replace(tmp, self.path)
        return rows

    def last_steps(self, count: int) -> dict[int, dict[str, float]]:
        """The metrics of the last `count` steps kept on resume, by step."""
        by_step: dict[int, dict[str, float]] = {}
        for step, key, value in self.kept:
            by_step.setdefault(int(step), {})[key] = float(value)
        return {s: by_step[s] for s in sorted(by_step)[-count:]}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.writer.writerows((step, key, repr(float(value))) for key, value in metrics.items())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _after_existing_event_files(logdir: Path) -> None:
    """Wait until the clock is past the second of the newest event file in `logdir`.

    TensorBoard reads a folder's event files in the order of their names, `events.out.tfevents.<second>.<host>.
    <pid>.<counter>`: a resumed run's file must sort after the stopped run's, or its purge comes first and the
    stopped run's steps are read after it. Within one second the order falls to the pid and a per-process
    counter compared as text (`.10` before `.9`), so a resume within the same second waits for the next one."""
    names = (p.name.split(".") for p in logdir.glob("events.out.tfevents.*"))
    newest = max((int(parts[3]) for parts in names if parts[3:4] and parts[3].isdigit()), default=None)
    while newest is not None and int(time.time()) == newest:
        time.sleep(1.0 - time.time() % 1.0 + 0.01)


class MetricLogger:
    """Scalars and videos of one run folder. `resume_step`: the env steps of the checkpoint a resumed run
    starts from (see the module docstring)."""

    def __init__(
        self,
        run_dir: Path,
        config: LoggerConfig,
        config_tree: dict,
        run_name: str,
        resume_step: int | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        purge = None if resume_step is None else resume_step + 1
        if resume_step is not None:
            _after_existing_event_files(self.run_dir / "tensorboard")
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        self.csv = CsvMetrics(self.run_dir / CSV_FILE, resume_step)
        self.tensorboard.add_text(
            "config", "```\n" + yaml.safe_dump(config_tree, sort_keys=False) + "\n```", 0
        )
        self.wandb = None
        mode = wandb_mode(config)
        if mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=config.wandb.project,
                entity=config.wandb.entity,
                name=f"{run_name}-{self.run_dir.name}",
                dir=str(self.run_dir),
                mode=mode,
                config=config_tree,
                resume="allow",
                id=f"{run_name}-{self.run_dir.name}".replace("/", "-"),
            )
            if resume_step is not None:
                self._replay_to_wandb()

    def _replay_to_wandb(self) -> None:
        """A driver killed with SIGKILL loses the W&B rows its client and W&B's service still buffered (seconds'
        worth; metrics.csv and TensorBoard write as they go). A resumed run sends the last logged steps up to
        its checkpoint again, from metrics.csv: W&B keeps the first value it has at a step (online, the client
        skips the steps the run already has), so only the lost ones are added."""
        for step, metrics in self.csv.last_steps(WANDB_REPLAY_STEPS).items():
            if step > self.wandb.step:
                self.wandb.log(metrics, step=step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step)
        self.csv.log(metrics, step)
        if self.wandb is not None:
            self.wandb.log(dict(metrics), step=step)

    def log_video(self, key: str, path: str, step: int, fps: int = 10) -> None:
        self._tensorboard_gif(key, path, step, fps)
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Video(path, format="mp4")}, step=step)

    def _tensorboard_gif(self, key: str, path: str, step: int, fps: int) -> None:
        import imageio.v2 as imageio
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        frames = [Image.fromarray(f) for f in imageio.mimread(path, memtest=False)]
        if not frames:
            return
        buffer = io.BytesIO()
        frames[0].save(
            buffer, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0
        )
        image = Summary.Image(
            height=frames[0].height,
            width=frames[0].width,
            colorspace=3,
            encoded_image_string=buffer.getvalue(),
        )
        self.tensorboard._get_file_writer().add_summary(
            Summary(value=[Summary.Value(tag=key, image=image)]), step
        )

    def close(self) -> None:
        self.tensorboard.close()
        self.csv.close()
        if self.wandb is not None:
            self.wandb.finish()


# (metric key, label, format) of the progress line of a training run
TRAINING_FIELDS = (
    ("env/success_once", "success", "{:.2f}"),
    ("env/return", "return", "{:.2f}"),
    ("eval/success_once", "eval", "{:.2f}"),
    ("throughput/env_steps_per_s", "steps/s", "{:.0f}"),
)


class Progress:
    """Iteration, steps (env steps; optimizer steps in supervised runs), the metrics of `fields` and the ETA:
    a rich bar on a terminal, plain lines otherwise."""

    def __init__(
        self,
        total_env_steps: int,
        style: str,
        start_steps: int = 0,
        fields: tuple[tuple[str, str, str], ...] = TRAINING_FIELDS,
    ) -> None:
        self.total = total_env_steps
        self.start_steps = start_steps
        self.fields = fields
        self.started = time.monotonic()
        self.rich = style == "rich" or (style == "auto" and sys.stdout.isatty())
        self._bar = None
        if self.rich:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
            )
            self._task = self._bar.add_task(
                "train", total=total_env_steps, completed=start_steps, stats="", eta="?"
            )
            self._bar.start()

    def eta_seconds(self, env_steps: int) -> float | None:
        done = env_steps - self.start_steps
        if done <= 0:
            return None
        rate = done / (time.monotonic() - self.started)
        return max(0.0, (self.total - env_steps) / rate)

    def update(self, iteration: int, env_steps: int, metrics: dict[str, Any]) -> None:
        eta = self.eta_seconds(env_steps)
        eta_text = (
            "?" if eta is None else time.strftime("%M:%S" if eta < 3600 else "%H:%M:%S", time.gmtime(eta))
        )
        parts = [f"it {iteration}", f"steps {env_steps:,}"]
        for key, label, fmt in self.fields:
            if key in metrics:
                parts.append(f"{label} {fmt.format(metrics[key])}")
        stats = "  ".join(parts)
        if self._bar is not None:
            self._bar.update(self._task, completed=min(env_steps, self.total), stats=stats, eta=eta_text)
        else:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:7.1f}s] {stats}  ETA {eta_text}", flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
