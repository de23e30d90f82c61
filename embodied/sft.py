"""Supervised fine-tuning on demonstrations: `python -m embodied.sft CONFIG [key=value ...]` (what
scripts/run_sft.sh runs).

    CONFIG       an SFT config in configs/ (e.g. sft_maniskill_pickcube) or a path to a YAML file
    key=value    override any key (sft.demos=/data/demos, sft.steps=2000, policy.pretrained=..., resume=auto)
    --help       this text and the named configs;  describe CONFIG [key=value ...]: every key, its value and help

The run trains the policy's own supervised loss on the actor workers (FSDP2), evaluates it in the simulator
through the env and rollout workers, and writes checkpoints whose policy/ folder an RL config loads as
`policy.pretrained=<checkpoint>/policy` (or evaluates: scripts/eval_policy.sh ckpt=<run folder>).
Exit codes: 0 done, 1 a worker failed, 2 a bad config or dataset, 130 interrupted (Ctrl-C), 143 SIGTERM.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from algorithms.schema import ConfigError
from envs.base import EnvConfig, EnvSpec

MODULE = "embodied.sft"
# (DemoInfo field, env config field): the dataset must have been recorded where the policy will act
DEMO_ENV_FIELDS = (("env_id", "task"), ("obs_mode", "obs_mode"), ("control_mode", "control_mode"))


def demos_location(value: str) -> Path:
    """The dataset path a `*.demos` key names (relative paths: to the repository root)."""
    from embodied.compose import REPO

    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO / path


def read_demo_info(value: str, key: str):
    """(path, DemoInfo) of the dataset that config key `key` = `value` names; ConfigError naming the key when it
    does not exist or cannot be read."""
    from envs.demos import open_demos

    path = demos_location(value)
    if not path.exists():
        raise ConfigError(
            f"{key}={value}: {path} does not exist; give a LeRobot dataset folder or a ManiSkill .h5 file "
            "(scripts/collect_demos.py makes them)"
        )
    try:
        return path, open_demos(path).info
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{key}={value}: {path} cannot be read as demonstrations: {exc}") from exc


def check_demos_for_env(info, env: EnvConfig, path: Path, key: str = "sft.demos") -> None:
    """The dataset was recorded for this env: same task, observation and control mode (where the env has them);
    `key` names the config key in the error."""
    for demo_key, env_key in DEMO_ENV_FIELDS:
        if hasattr(env, env_key) and getattr(info, demo_key) != getattr(env, env_key):
            raise ConfigError(
                f"{key}={path} was recorded with {demo_key}={getattr(info, demo_key)!r} but "
                f"env.{env_key}={getattr(env, env_key)!r}: use demonstrations of this env, or set "
                f"env.{env_key}={getattr(info, demo_key)}"
            )


def check_demos_for_spec(info, spec: EnvSpec, path: Path) -> None:
    """The dataset's states, actions and images have the sizes the policy is built for."""
    problems = []
    if info.state_dim != spec.state_dim:
        problems.append(f"states have {info.state_dim} dims, the env's {spec.state_dim}")
    if info.action_dim != spec.action_dim:
        problems.append(f"actions have {info.action_dim} dims, the env's {spec.action_dim}")
    images = (info.image_size, info.image_size) if info.image_size is not None else None
    if spec.image_size is not None and images != tuple(spec.image_size):
        problems.append(f"images are {images}, the env's {tuple(spec.image_size)} (env.image_size)")
    if spec.has_wrist_image:
        problems.append("the env has a wrist camera but demonstrations carry main_images only")
    if problems:
        raise ConfigError(f"sft.demos={path} does not fit the env: {'; '.join(problems)}")


def supervise(config, config_tree: dict, started: float | None = None) -> dict[str, float]:
    """Run a whole SFT job for a validated `SFTConfig`; returns the last evaluation's metrics. A
    KeyboardInterrupt leaves with the run folder in its `run_dir` (as `embodied.train.train`)."""
    from embodied.checkpoint import find_resume
    from embodied.train import _output_root

    runs_of_name = _output_root(config) / config.run.name
    resume_target = find_resume(config.resume, runs_of_name) if config.resume else None
    run_dir = resume_target[0] if resume_target else runs_of_name / time.strftime("%Y%m%d-%H%M%S")
    try:
        return _supervise(config, config_tree, run_dir, resume_target, started)
    except KeyboardInterrupt as exc:  # an `Interrupted`, or the plain one Ray's get makes of it
        exc.run_dir = run_dir
        raise


def _supervise(config, config_tree, run_dir: Path, resume_target, started: float | None) -> dict[str, float]:
    import yaml

    from embodied.checkpoint import read_counters, restore_driver_rng
    from embodied.cluster import Cluster
    from embodied.interrupt import protected
    from embodied.logger import MetricLogger
    from embodied.sft_runner import SupervisedComponents, SupervisedCounters, SupervisedRunner

    path, info = read_demo_info(config.sft.demos, "sft.demos")
    check_demos_for_env(info, config.env, path)
    cluster = Cluster(config.cluster)
    logger = None
    try:
        ranks = len(cluster.placement.slots["actor"])
        if config.sft.batch_size % ranks:
            raise ConfigError(
                f"sft.batch_size={config.sft.batch_size} does not split over {ranks} actor ranks"
            )
        print(cluster.describe(), flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_tree, sort_keys=False))
        print(f"run folder: {run_dir}", flush=True)
        with ThreadPoolExecutor(1) as pool:
            pending_logger = pool.submit(MetricLogger, run_dir, config.logger, config_tree, config.run.name)
            try:
                workers = SupervisedComponents(cluster, config)
            finally:
                logger = pending_logger.result()
        check_demos_for_spec(info, workers.env_spec, path)
        split = workers.open_demos(config.sft, str(path))
        total = config.sft.total_steps(split["train_frames"])
        print(
            f"demos: {path} ({split['train_episodes']} training episodes, {split['train_frames']:,} frames; "
            f"{split['val_episodes']} validation episodes); {total:,} optimizer steps of {config.sft.batch_size}",
            flush=True,
        )
        counters = SupervisedCounters()
        if resume_target is not None:
            checkpoint = resume_target[1]
            workers.load_checkpoint(checkpoint)
            saved = read_counters(checkpoint)
            counters = SupervisedCounters(saved["iteration"], saved["optimizer_steps"], saved["wall_seconds"])
            restore_driver_rng(checkpoint)
            print(f"resumed from {checkpoint} (iteration {counters.iteration}, {counters.steps:,} steps)")
        else:
            workers.sync_weights()
        runner = SupervisedRunner(
            config, config_tree, run_dir, workers, logger, counters, total,
            time.monotonic() if started is None else started,
        )  # fmt: skip
        return runner.run()
    finally:
        with protected():
            cluster.shutdown()
            if logger is not None:
                logger.close()


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        from embodied.compose import named_configs

        print(__doc__)
        print("SFT configs: " + ", ".join(c for c in named_configs() if c.startswith("sft_")))
        return 0 if argv else 2
    describe_only = argv[0] == "describe"
    argv = argv[1:] if describe_only else argv
    if not argv or "=" in argv[0]:
        print("config error: name an SFT config first (e.g. sft_maniskill_pickcube), then key=value overrides",
              file=sys.stderr)  # fmt: skip
        return 2
    from embodied.compose import describe, load_config
    from embodied.sft_config import SFTConfig
    from embodied.train import interrupted_message

    try:
        config, tree = load_config(argv[0], argv[1:], schema=SFTConfig)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if describe_only:
        print("\n".join(describe(config)))
        return 0
    import torch

    from embodied.cluster import ClusterError
    from embodied.interrupt import exit_code, handling_signals, shutdown_ray_if_left
    from embodied.worker import WorkerError

    torch.manual_seed(config.run.seed)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        with handling_signals():
            metrics = supervise(config, tree, started)
    except (ConfigError, FileNotFoundError) as exc:  # FileNotFoundError: a resume= without a checkpoint
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (WorkerError, ClusterError) as exc:
        print(f"supervised fine-tuning failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        shutdown_ray_if_left()
        print(interrupted_message(exc, argv, MODULE), file=sys.stderr, flush=True)
        return exit_code(exc)
    if metrics:
        print("final eval: " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
