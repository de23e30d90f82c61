"""The runner: the training algorithm in straight-line code.

    repeat until the env-step budget is spent:
        roll out one epoch on all envs             (env + rollout workers, pipelined)
        ... again while the batch lacks groups     (DAPO dynamic sampling: same weights, every round counted)
        compute advantages                         (actor workers, the configured estimator)
        train for the configured epochs            (actor workers, FSDP2)
        sync weights to the rollout workers        (versioned)
        evaluate now and then                      (deterministic, fixed initial states)
        checkpoint now and then                    (atomic)

Every step is timed (`time/<step>`) and logged with the env, train and throughput metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embodied.checkpoint import Checkpointer
from embodied.components import Components
from embodied.config import TrainConfig
from embodied.interrupt import protected
from embodied.logger import MetricLogger, Progress
from embodied.workers.env_worker import unit_seed
from envs.base import EPISODE_METRICS


@dataclass
class Counters:
    """Where training stands; saved in every checkpoint."""

    iteration: int = 0
    env_steps: int = 0
    wall_seconds: float = 0.0  # training time before this process (resumed runs)


def episode_metrics(episodes: list[dict[str, float]], prefix: str = "env") -> dict[str, float]:
    if not episodes:
        return {}
    out = {f"{prefix}/{k}": float(np.mean([e[k] for e in episodes])) for k in EPISODE_METRICS}
    out[f"{prefix}/episodes"] = float(len(episodes))
    return out


def merge_rounds(rounds: list[dict]) -> dict:
    """One step's generation rounds (`Components.rollout_epoch` results) as one: episodes, env steps and
    seconds add up, so the budget and the throughput count every round."""
    out = {"episodes": [e for r in rounds for e in r["episodes"]]}
    for key in ("env_steps", "sim_seconds", "infer_seconds"):
        out[key] = sum(r[key] for r in rounds)
    return out


class Runner:
    def __init__(
        self,
        config: TrainConfig,
        config_tree: dict,
        run_dir: Path,
        workers: Components,
        logger: MetricLogger,
        counters: Counters,
        resumed: bool,
        started: float,
    ) -> None:
        self.config, self.config_tree, self.run_dir = config, config_tree, Path(run_dir)
        self.workers, self.logger, self.counters = workers, logger, counters
        self.checkpointer = Checkpointer(self.run_dir, config.checkpoint.keep)
        self.started = started  # time.monotonic() when the job began (start-up counts as wall time)
        self.progress = Progress(config.run.total_env_steps, config.logger.console, counters.env_steps)
        self.reset_seed = unit_seed(config.run.seed, counters.iteration) if resumed else None
        self.last_eval: dict[str, float] = {}
        # called with (iteration, metrics) before each report, e.g. auto placement's predicted vs measured
        self.observers: list[Callable[[int, dict[str, float]], None]] = []

    @contextmanager
    def timed(self, step: str, metrics: dict[str, float]):
        start = time.perf_counter()
        yield
        metrics[f"time/{step}"] = time.perf_counter() - start

    def run(self) -> dict[str, float]:
        """Train until the budget is spent (or the eval success target is reached); returns the last eval."""
        c, config = self.counters, self.config
        evaluated_at = checkpointed_at = None
        while c.env_steps < config.run.total_env_steps:
            c.iteration += 1
            metrics: dict[str, float] = {}
            start = time.perf_counter()
            with self.timed("rollout", metrics):
                rounds = [self.workers.rollout_epoch(self.reset_seed)]
                self.reset_seed = None
                while self.workers.needs_another_round():
                    rounds.append(self.workers.rollout_epoch())
            rollout = merge_rounds(rounds)
            with self.timed("advantages", metrics):
                metrics |= self.workers.compute_advantages()
            with self.timed("train", metrics):
                metrics |= self.workers.train(c.env_steps / config.run.total_env_steps)
            with self.timed("weight_sync", metrics):
                self.workers.sync_weights()
            c.env_steps += rollout["env_steps"]
            metrics |= episode_metrics(rollout["episodes"])
            metrics |= (
                self._throughput(rollout, metrics, time.perf_counter() - start) | self.workers.timings()
            )
            if self._due(config.eval.every_n_iterations) and self._worth_evaluating(metrics):
                with self.timed("eval", metrics):
                    metrics |= self.evaluate()
                evaluated_at = c.iteration
            self._report(metrics)  # before the checkpoint: a run resumed from it has logged this iteration
            if self._due(config.checkpoint.every_n_iterations):
                timing: dict[str, float] = {}
                with self.timed("checkpoint", timing):
                    self.save_checkpoint()
                self.logger.log(timing, step=c.env_steps)
                checkpointed_at = c.iteration
            target = config.run.stop_at_eval_success
            if target is not None and self.last_eval.get("eval/success_once", -1.0) >= target:
                self.progress.message(
                    f"eval success_once {self.last_eval['eval/success_once']:.3f} >= {target}: done"
                )
                break
        self._finish(evaluated_at, checkpointed_at)
        return self.last_eval

    def _due(self, every: int) -> bool:
        return every > 0 and self.counters.iteration % every == 0

    def _worth_evaluating(self, metrics: dict[str, float]) -> bool:
        floor = self.config.eval.min_train_success
        return floor is None or metrics.get("env/success_once", 0.0) >= floor

    def _throughput(self, rollout: dict, metrics: dict[str, float], seconds: float) -> dict[str, float]:
        out = {
            "throughput/env_steps_per_s": rollout["env_steps"] / seconds,
            "throughput/rollout_env_steps_per_s": rollout["env_steps"] / metrics["time/rollout"],
            "time/env/simulate": rollout["sim_seconds"],
            "time/rollout/infer": rollout["infer_seconds"],
            "time/iteration": seconds,
        }
        if "rollout/response_length" in metrics:  # policies that count their tokens (causal LMs)
            tokens = metrics["rollout/response_length"] * rollout["env_steps"]
            out["throughput/tokens_per_s"] = tokens / seconds
            out["throughput/rollout_tokens_per_s"] = tokens / metrics["time/rollout"]
        return out

    def _report(self, metrics: dict[str, float]) -> None:
        c = self.counters
        metrics["progress/iteration"] = float(c.iteration)
        metrics["progress/wall_minutes"] = (c.wall_seconds + time.monotonic() - self.started) / 60
        for observe in self.observers:
            observe(c.iteration, metrics)
        if c.iteration % self.config.run.log_every == 0 or "eval/success_once" in metrics:
            self.logger.log(metrics, step=c.env_steps)
            self.progress.update(c.iteration, c.env_steps, metrics)

    def evaluate(self) -> dict[str, float]:
        eval_config = self.config.eval
        video_dir = (
            self.run_dir / "videos" / f"iter_{self.counters.iteration:06d}" if eval_config.video else None
        )
        metrics, videos = self.workers.evaluate(eval_config, video_dir)
        for i, path in enumerate(videos):
            self.logger.log_video(f"eval/video_{i}", path, step=self.counters.env_steps)
        self.last_eval = metrics
        return metrics

    def save_checkpoint(self) -> Path:
        """Written whole even when Ctrl-C comes meanwhile (the interruption follows the commit); a full disk
        raises CheckpointWriteError and leaves the previous checkpoint as it was."""
        c = self.counters
        with protected():
            counters = {
                "env_steps": c.env_steps,
                "wall_seconds": c.wall_seconds + time.monotonic() - self.started,
                "weight_version": self.workers.version,
            }
            write = self.workers.save_checkpoint
            return self.checkpointer.save(c.iteration, write, counters, self.config_tree)

    def _finish(self, evaluated_at: int | None, checkpointed_at: int | None) -> None:
        c, config = self.counters, self.config
        metrics: dict[str, float] = {}
        if config.eval.at_end and evaluated_at != c.iteration:
            with self.timed("eval", metrics):
                metrics |= self.evaluate()
        if config.checkpoint.at_end and checkpointed_at != c.iteration and c.iteration > 0:
            with self.timed("checkpoint", metrics):
                self.save_checkpoint()
        if metrics:
            self.logger.log(metrics, step=c.env_steps)
            self.progress.update(c.iteration, c.env_steps, metrics)
        self.progress.close()
