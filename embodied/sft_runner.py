"""The supervised fine-tuning runner: SFT in straight-line code, on the runtime RL uses.

    until the optimizer-step budget is spent, one iteration (sft.steps_per_iteration steps) at a time:
        train on demonstration batches          (actor workers, FSDP2: the policy's own supervised loss)
        validation loss now and then            (held-out episodes, fixed noise)
        sync weights and evaluate now and then  (env + rollout workers: success in the simulator)
        checkpoint now and then                 (atomic; its policy/ loads as policy.pretrained of RL)

Every step is timed (`time/<step>`) and logged against the optimizer step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from embodied.checkpoint import Checkpointer
from embodied.components import Components
from embodied.interrupt import protected
from embodied.logger import MetricLogger, Progress
from embodied.sft_config import SFTConfig, SupervisedSection
from embodied.workers.sft_worker import SupervisedActorWorker

SFT_FIELDS = (
    ("train/sft/loss", "loss", "{:.4f}"),
    ("val/loss", "val", "{:.4f}"),
    ("eval/success_once", "eval", "{:.2f}"),
    ("throughput/samples_per_s", "samples/s", "{:.0f}"),
)


@dataclass
class SupervisedCounters:
    """Where supervised training stands; saved in every checkpoint."""

    iteration: int = 0
    steps: int = 0  # optimizer steps
    wall_seconds: float = 0.0  # training time before this process (resumed runs)


class SupervisedComponents(Components):
    """The worker groups of an RL run with supervised actor workers; one method per step of SFT."""

    actor_worker = SupervisedActorWorker

    def open_demos(self, sft: SupervisedSection, path: str) -> dict[str, int]:
        """Every actor rank opens the dataset; returns the sizes of the train/validation split."""
        return self.actor.open_demos(sft, path).wait()[0]

    def supervised_train(self, steps: int, done: int, total: int) -> dict[str, float]:
        """`steps` optimizer steps, `done` of `total` being done before (the learning-rate schedule)."""
        return self.actor.supervised_train(steps, done, total).wait()[0]

    def validation_loss(self) -> dict[str, float]:
        return self.actor.validation_loss().wait()[0]

    def untrained_modules(self) -> list[str]:
        return self.actor.call("untrained_modules", ranks=[0]).wait()[0]


class SupervisedRunner:
    def __init__(
        self,
        config: SFTConfig,
        config_tree: dict,
        run_dir: Path,
        workers: SupervisedComponents,
        logger: MetricLogger,
        counters: SupervisedCounters,
        total_steps: int,
        started: float,
    ) -> None:
        self.config, self.config_tree, self.run_dir = config, config_tree, Path(run_dir)
        self.workers, self.logger, self.counters = workers, logger, counters
        self.total_steps, self.started = total_steps, started
        self.checkpointer = Checkpointer(self.run_dir, config.checkpoint.keep)
        self.progress = Progress(total_steps, config.logger.console, counters.steps, SFT_FIELDS)
        self.last_eval: dict[str, float] = {}

    @contextmanager
    def timed(self, step: str, metrics: dict[str, float]):
        start = time.perf_counter()
        yield
        metrics[f"time/{step}"] = time.perf_counter() - start

    def run(self) -> dict[str, float]:
        """Train until the step budget is spent (or eval success reaches run.stop_at_eval_success); returns
        the last evaluation's metrics."""
        c, config, sft = self.counters, self.config, self.config.sft
        done_at = {"validation": None, "eval": None, "checkpoint": None}
        if c.steps == 0 and sft.val_fraction > 0:  # the starting point of the validation curve
            self.logger.log(self.workers.validation_loss(), step=0)
        while c.steps < self.total_steps:
            c.iteration += 1
            metrics: dict[str, float] = {}
            steps = min(sft.steps_per_iteration, self.total_steps - c.steps)
            with self.timed("train", metrics):
                metrics |= self.workers.supervised_train(steps, c.steps, self.total_steps)
            c.steps += steps
            metrics["throughput/samples_per_s"] = steps * sft.batch_size / metrics["time/train"]
            if self._due(sft.val_every_n_iterations):
                metrics |= self._step("validation", self.workers.validation_loss, done_at)
            if self._due(config.eval.every_n_iterations):
                metrics |= self._step("eval", self.evaluate, done_at)
            if self._due(config.checkpoint.every_n_iterations):
                metrics |= self._step("checkpoint", self.save_checkpoint, done_at)
            self._report(metrics)
            target = config.run.stop_at_eval_success
            if target is not None and self.last_eval.get("eval/success_once", -1.0) >= target:
                self.progress.message(
                    f"eval success_once {self.last_eval['eval/success_once']:.3f} >= {target}"
                )
                break
        self._finish(done_at)
        return self.last_eval

    def _due(self, every: int) -> bool:
        return every > 0 and self.counters.iteration % every == 0

    def _step(self, name: str, action, done_at: dict) -> dict[str, float]:
        """Run one of the periodic steps, timed; its metrics (a checkpoint has none)."""
        metrics: dict[str, float] = {}
        with self.timed(name, metrics):
            result = action()
        done_at[name] = self.counters.iteration
        return metrics | (result if isinstance(result, dict) else {})

    def _report(self, metrics: dict[str, float]) -> None:
        c = self.counters
        metrics["progress/iteration"] = float(c.iteration)
        metrics["progress/wall_minutes"] = (c.wall_seconds + time.monotonic() - self.started) / 60
        if c.iteration % self.config.run.log_every == 0 or "eval/success_once" in metrics:
            self.logger.log(metrics, step=c.steps)
            self.progress.update(c.iteration, c.steps, metrics)

    def evaluate(self) -> dict[str, float]:
        """The current weights to the rollout workers, then deterministic episodes from fixed initial states."""
        self.workers.sync_weights()
        eval_config = self.config.eval
        video_dir = self.run_dir / "videos" / f"step_{self.counters.steps:07d}" if eval_config.video else None
        metrics, videos = self.workers.evaluate(eval_config, video_dir)
        for i, path in enumerate(videos):
            self.logger.log_video(f"eval/video_{i}", path, step=self.counters.steps)
        self.last_eval = metrics
        return metrics

    def save_checkpoint(self) -> Path:
        """Written whole even when Ctrl-C comes meanwhile (the interruption follows the commit)."""
        c = self.counters
        with protected():
            folder = self.checkpointer.begin(c.iteration)
            self.workers.save_checkpoint(folder)
            wall = c.wall_seconds + time.monotonic() - self.started
            counters = {"optimizer_steps": c.steps, "env_steps": 0, "wall_seconds": wall}
            return self.checkpointer.commit(folder, c.iteration, counters, self.config_tree)

    def _finish(self, done_at: dict) -> None:
        c, config = self.counters, self.config
        metrics: dict[str, float] = {}
        if c.iteration > 0 and config.sft.val_fraction > 0 and done_at["validation"] != c.iteration:
            metrics |= self._step("validation", self.workers.validation_loss, done_at)
        if config.eval.at_end and done_at["eval"] != c.iteration:
            metrics |= self._step("eval", self.evaluate, done_at)
        if config.checkpoint.at_end and c.iteration > 0 and done_at["checkpoint"] != c.iteration:
            metrics |= self._step("checkpoint", self.save_checkpoint, done_at)
        if metrics:
            self.logger.log(metrics, step=c.steps)
            self.progress.update(c.iteration, c.steps, metrics)
        self.progress.close()
