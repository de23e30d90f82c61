"""Train a policy: `python -m embodied.train [CONFIG] [key=value ...]` (what scripts/run_maniskill_ppo.sh runs).

    CONFIG       a config name in configs/ (default: maniskill_ppo_pushcube) or a path to a YAML file
    key=value    override any key (actor.lr=1e-4, env.num_envs=16, cluster=disaggregated, resume=auto)
    --help       this text and the named configs;  describe [CONFIG] [key=value ...]: every key, its value and help

Exit codes: 0 done, 1 a worker failed (or a checkpoint could not be written), 2 a bad config or checkpoint
(checked before Ray starts: embodied/preflight.py), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
Ctrl-C stops the run at once (a checkpoint being written is completed first), shuts the workers and Ray down
and prints the command that resumes from the last complete checkpoint; a second Ctrl-C force-exits.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_CONFIG = "maniskill_ppo_pushcube"
LAUNCHER_ENV = "INFLOW_LAUNCHER"  # set by scripts/run_maniskill_ppo.sh: the script as the user called it


def _split_args(argv: list[str]) -> tuple[str, list[str]]:
    if argv and "=" not in argv[0]:
        return argv[0], argv[1:]
    return DEFAULT_CONFIG, argv


def _output_root(config) -> Path:
    from embodied.compose import REPO

    root = Path(config.run.output_dir)
    return root if root.is_absolute() else REPO / root


def train(config, config_tree: dict, started: float | None = None) -> dict[str, float]:
    """Run a whole training job for a validated config; returns the last evaluation's metrics. `started`
    (time.monotonic()) is when the job began, for `progress/wall_minutes`; default: now. A KeyboardInterrupt
    (Ctrl-C, SIGTERM; see embodied.interrupt) leaves with the run folder in its `run_dir`."""
    from embodied.checkpoint import find_resume
    from embodied.preflight import check_before_start

    runs_of_name = _output_root(config) / config.run.name
    resume_target = find_resume(config.resume, runs_of_name) if config.resume else None
    check_before_start(config, resume_target)  # before Ray or a simulator starts
    run_dir = resume_target[0] if resume_target else runs_of_name / time.strftime("%Y%m%d-%H%M%S")
    try:
        return _train(config, config_tree, run_dir, resume_target, started)
    except KeyboardInterrupt as exc:  # an `Interrupted`, or the plain one Ray's get makes of it
        exc.run_dir = run_dir
        raise


def _train(
    config, config_tree: dict, run_dir: Path, resume_target: tuple[Path, Path] | None, started: float | None
) -> dict[str, float]:
    import yaml

    from embodied.checkpoint import read_counters, restore_driver_rng
    from embodied.cluster import Cluster
    from embodied.components import Components
    from embodied.interrupt import protected
    from embodied.logger import MetricLogger
    from embodied.runner import Counters, Runner
    from embodied.worker import WorkerError
    from policies.base import supervised_note

    plan = None
    if config.cluster.auto:  # profile the workers on a cluster of their own; the run joins its Ray
        from embodied.plan import choose

        config, plan = choose(config)
        config_tree = config.to_dict()
    cluster = Cluster(config.cluster)  # first: a placement that does not fit fails before any file is written
    cluster.started_ray |= plan is not None and plan.started_ray
    logger = None
    try:
        print(cluster.describe(), flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config_tree, sort_keys=False))
        print(f"run folder: {run_dir}", flush=True)
        if config.policy.pretrained and (note := supervised_note(config.policy.pretrained)):
            print(note, flush=True)  # e.g. the value head, which SFT did not train, starts untrained
        # TensorBoard and W&B start (seconds) while the workers start
        with ThreadPoolExecutor(1) as pool:
            resume_step = read_counters(resume_target[1])["env_steps"] if resume_target is not None else None
            pending_logger = pool.submit(
                MetricLogger, run_dir, config.logger, config_tree, config.run.name, resume_step
            )
            try:
                workers = Components(cluster, config)
            finally:
                logger = pending_logger.result()
        counters = Counters()
        if resume_target is not None:
            checkpoint = resume_target[1]
            workers.load_checkpoint(checkpoint)
            saved = read_counters(checkpoint)
            counters = Counters(saved["iteration"], saved["env_steps"], saved["wall_seconds"])
            restore_driver_rng(checkpoint)
            print(
                f"resumed from {checkpoint} (iteration {counters.iteration}, {counters.env_steps:,} env steps)"
            )
        else:
            workers.sync_weights()
        runner = Runner(
            config,
            config_tree,
            run_dir,
            workers,
            logger,
            counters,
            resumed=resume_target is not None,
            started=time.monotonic() if started is None else started,
        )
        if plan is not None:
            from embodied.plan import PlanMonitor

            runner.observers.append(PlanMonitor(plan.chosen, runner.progress.message))
        try:
            metrics = runner.run()
        except WorkerError as exc:  # the worker names its rank and what failed; the driver knows when
            raise WorkerError(f"at iteration {runner.counters.iteration}: {exc}") from None
        if workers.scaling is not None:  # which component held which slots when: scripts/plot_slots.py
            workers.scaling.timeline.save(run_dir / "slots.json")
        return metrics
    finally:
        with protected():  # a first Ctrl-C during the shutdown does not cut it short
            cluster.shutdown()
            if logger is not None:
                logger.close()


def launch_command(argv: list[str], module: str) -> list[str]:
    """The command that ran this process with `argv`: the script that called it (its INFLOW_LAUNCHER), or
    `python -m <module>` (the full interpreter path when `python` on PATH is another one)."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher:
        return ["bash", launcher, *argv]
    python = shutil.which("python")
    same = python is not None and os.path.realpath(python) == os.path.realpath(sys.executable)
    return ["python" if same else sys.executable, "-m", module, *argv]


def interrupted_message(exc: KeyboardInterrupt, argv: list[str], module: str = "embodied.train") -> str:
    """One line: what stopped the run, its last complete checkpoint and the exact command that resumes it
    (`module`: the one `python -m` runs, when no launcher script set INFLOW_LAUNCHER)."""
    from embodied.checkpoint import latest_checkpoint, read_counters
    from embodied.interrupt import signal_of

    signum = signal_of(exc)
    what = "interrupted" if signum is None else f"interrupted by {signal.Signals(signum).name}"
    run_dir = getattr(exc, "run_dir", None)
    checkpoint = latest_checkpoint(run_dir) if run_dir is not None else None
    if checkpoint is None:
        again = shlex.join(launch_command(argv, module))
        return f"{what} before the first checkpoint was written; nothing to resume. Start again with: {again}"
    state = read_counters(checkpoint)
    resume = [a for a in argv if not a.startswith("resume=")] + [f"resume={run_dir}"]
    # supervised runs count optimizer steps (embodied/sft.py), RL runs env steps
    done = (
        f"{state['optimizer_steps']:,} optimizer steps"
        if "optimizer_steps" in state
        else f"{state['env_steps']:,} env steps"
    )
    return (
        f"{what}; the last checkpoint is intact: {checkpoint} (iteration {state['iteration']}, {done}). "
        f"Resume with: {shlex.join(launch_command(resume, module))}"
    )


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        from embodied.compose import named_configs

        print(__doc__)
        print("Named configs: " + ", ".join(named_configs()))
        return 0
    describe_only = bool(argv) and argv[0] == "describe"
    if describe_only:
        argv = argv[1:]
    from algorithms.schema import ConfigError
    from embodied.compose import describe, load_config

    name, overrides = _split_args(argv)
    try:
        config, tree = load_config(name, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if describe_only:
        print("\n".join(describe(config)))
        return 0
    import torch

    from embodied.checkpoint import CheckpointError, CheckpointWriteError
    from embodied.cluster import ClusterError
    from embodied.interrupt import exit_code, handling_signals, shutdown_ray_if_left
    from embodied.worker import WorkerError

    torch.manual_seed(config.run.seed)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        with handling_signals():
            metrics = train(config, tree, started)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"checkpoint error: {exc}", file=sys.stderr)
        return 2
    except (WorkerError, ClusterError, CheckpointWriteError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        shutdown_ray_if_left()
        print(interrupted_message(exc, argv), file=sys.stderr, flush=True)
        return exit_code(exc)
    if metrics:
        print("final eval: " + "  ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
