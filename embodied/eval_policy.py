"""Evaluate a policy in its simulator: `python -m embodied.eval_policy [CONFIG] ckpt=PATH [key=value ...]`
(what scripts/eval_policy.sh runs).

    CONFIG       a config name in configs/ or a YAML path; omitted: the training run's own config.yaml stored
                 in the checkpoint that ckpt= names
    ckpt=PATH    a training checkpoint (runs/<name>/<time>/checkpoints/iter_N), a run folder (its newest
                 checkpoint), a policy folder (config.json + model.safetensors), `latest` (the newest checkpoint
                 of run.name) or `none` (a freshly initialised policy)
    key=value    override any key (eval.num_episodes=10, env.task_ids=[0,3], eval.video=false, ...)
    --help       this text

Only env and rollout workers start (on the placement of `cluster`); actions are deterministic; every task of
the env runs `eval.num_episodes` episodes from the fixed initial states `eval.first_initial_state + 0, 1, ...`.
With `eval.tasks_per_pass` the tasks are evaluated a few at a time, each pass with fresh env workers (so suites
whose scenes need much memory fit); the rollout workers and the policy's weights are loaded once and serve
every pass. The report goes to <output_dir>/<run.name>/eval-<time>/: results.md (also
printed), results.csv, results.json, success_per_task.png, videos/ (one mp4 per episode with
`eval.video_mode=episodes`, the default here), and eval/* metrics in TensorBoard and W&B.

Exit codes: 0 done, 1 a worker failed, 2 a bad config or checkpoint, 130 interrupted (Ctrl-C), 143 stopped by
SIGTERM. Ctrl-C stops at once, keeps the report of the passes that finished, and shuts Ray down; a second
Ctrl-C force-exits.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from embodied.eval_checkpoint import PolicySource
from embodied.logger import MetricLogger
from envs.base import EnvConfig

EVAL_DEFAULTS = ("eval.video_mode=episodes",)  # before the user's overrides, which win


def _split_args(argv: list[str]) -> tuple[str | None, str | None, list[str]]:
    """(CONFIG or None, the ckpt= value or None, the other overrides)."""
    config = argv[0] if argv and "=" not in argv[0] else None
    rest = argv[1:] if config is not None else argv
    ckpt = next((a.split("=", 1)[1] for a in rest if a.startswith("ckpt=")), None)
    return config, ckpt, [a for a in rest if not a.startswith("ckpt=")]


def _output_root(config) -> Path:
    from embodied.compose import REPO

    root = Path(config.run.output_dir)
    return root if root.is_absolute() else REPO / root


def prepare(argv: list[str]):
    """The config, config tree and policy source of an evaluation, everything checked before Ray or any
    worker starts (the checkpoint against the policy config, the task passes); raises ConfigError or
    CheckpointError."""
    from algorithms.schema import ConfigError
    from embodied.compose import config_schema, load_config
    from embodied.eval_checkpoint import check_policy_matches, resolve_checkpoint
    from embodied.preflight import check_paths, check_slots

    name, ckpt, overrides = _split_args(argv)
    if ckpt is None:
        raise ConfigError(
            "give ckpt=PATH: a training checkpoint or run folder, a policy folder, `latest`, or `none` to evaluate "
            "a freshly initialised policy"
        )
    source = resolve_checkpoint(ckpt, None) if name is None or ckpt != "latest" else None
    if name is None:
        if source.config_file is None or not source.config_file.is_file():
            raise ConfigError(f"ckpt={ckpt} is not a training checkpoint with a config.yaml: name a CONFIG")
        name = str(source.config_file)
    config, tree = load_config(name, [*EVAL_DEFAULTS, *overrides], schema=config_schema(name))
    # group_size only matters for training (GRPO groups); in an evaluation every env is on its own
    config = config.replace(env=config.env.replace(group_size=1))
    tree = config.to_dict()
    if source is None:
        source = resolve_checkpoint(ckpt, _output_root(config) / config.run.name)
    if source.policy_dir is not None:
        _, differing = check_policy_matches(source.policy_dir, config.policy)
        for line in differing:
            print(f"note: the config differs from the checkpoint's policy config in {line}", flush=True)
    task_passes(config.env, config.eval.tasks_per_pass)  # a bad split fails before Ray starts
    check_paths(config)  # and the files the config names, and the placement on this machine's slots
    check_slots(config, components=("env", "rollout"))
    return config, tree, source


def task_passes(env: EnvConfig, tasks_per_pass: int | None, units: int = 1) -> list[EnvConfig]:
    """The env configs of the evaluation passes: the selected tasks, `tasks_per_pass` at a time (None: all at
    once), each pass with the envs that run its tasks when all run at once (as many per task), rounded up to a
    multiple of `units` (env workers x pipeline stages) so they split evenly."""
    from algorithms.schema import ConfigError

    tasks = env.selected_task_ids
    per_pass = tasks_per_pass or len(tasks)
    envs_of_task = Counter(env.task_of_env(i) for i in range(env.num_envs))
    passes = []
    for start in range(0, len(tasks), per_pass):
        chunk = tasks[start : start + per_pass]
        count = -(-sum(envs_of_task[t] for t in chunk) // units) * units
        try:
            passes.append(env.with_task_ids(chunk).replace(num_envs=count))
        except ConfigError as exc:
            raise ConfigError(f"evaluation pass over tasks {list(chunk)} with {count} envs: {exc}") from None
    return passes


class EvalProgress:
    """Episodes done out of all, with the ETA: a rich bar on a terminal, a plain line every 10 s otherwise."""

    def __init__(self, total: int, style: str) -> None:
        self.total, self.done, self.started, self._printed = total, 0, time.monotonic(), 0.0
        self._first_update: float | None = None
        self._bar = None
        if style == "rich" or (style == "auto" and sys.stdout.isatty()):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("episodes"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            )  # fmt: skip
            self._task = self._bar.add_task("eval", total=total)
            self._bar.start()

    def update(self, done: int) -> None:
        self.done = min(done, self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        self._first_update = self._first_update or now  # the rate counts from when episodes began to run
        if now - self._printed >= 10 or self.done == self.total:
            self._printed = now
            elapsed = now - self.started
            rate = self.done / max(now - self._first_update, 1e-9)
            eta = (self.total - self.done) / rate if self.done else None
            eta_text = "?" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
            print(f"[{elapsed:7.1f}s] eval {self.done}/{self.total} episodes  ETA {eta_text}", flush=True)

    def message(self, text: str) -> None:
        (self._bar.console.print if self._bar is not None else print)(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def evaluate_policy(config, tree: dict, source: PolicySource) -> tuple[Path, dict[str, float]]:
    """Run the evaluation and write its report; returns the report folder and the `eval/*` metrics."""
    import yaml

    from embodied.cluster import Cluster
    from embodied.eval_report import write_report
    from embodied.interrupt import protected

    out_dir = _output_root(config) / config.run.name / time.strftime("eval-%Y%m%d-%H%M%S")
    cluster = Cluster(config.cluster, components=("env", "rollout"))
    episodes: list[dict] = []
    logger = None
    try:
        print(cluster.describe(), flush=True)
        units = len(cluster.placement.slots["env"]) * config.rollout.pipeline_stages
        passes = task_passes(config.env, config.eval.tasks_per_pass, units)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        print(f"eval folder: {out_dir}\npolicy: {source.describe()}", flush=True)
        logger = MetricLogger(out_dir, config.logger, tree, f"{config.run.name}-eval")
        meta = _meta(config, source)
        try:
            _run_passes(
                cluster, config, source, passes, out_dir / "videos" if config.eval.video else None, episodes
            )
        except BaseException as exc:  # a failed or interrupted pass: the finished passes are not lost
            if isinstance(exc, KeyboardInterrupt):  # for the message of main(); also Python's own, raised
                exc.out_dir, exc.episodes = out_dir, episodes  # where Ray's code had the SIGINT handler
            if episodes:
                write_report(
                    out_dir, episodes, {**meta, "incomplete": "stopped early; the finished passes only"}
                )
                print(f"partial report of {len(episodes)} episodes: {out_dir}", file=sys.stderr, flush=True)
            raise
        with protected():  # a Ctrl-C now lets the report be written first
            table, metrics = write_report(out_dir, episodes, meta)
        print("\n" + table + f"\nreport: {out_dir}", flush=True)
        logger.log(metrics, step=source.env_steps)
        videos = sorted({e["video"] for e in episodes if "video" in e})
        for i, path in enumerate(videos[: config.eval.video_envs]):
            logger.log_video(f"eval/video_{i}", path, step=source.env_steps)
        return out_dir, metrics
    finally:
        with protected():  # a first Ctrl-C during the shutdown does not cut it short
            cluster.shutdown()
            if logger is not None:
                logger.close()


def interrupted_message(exc: KeyboardInterrupt, argv: list[str]) -> str:
    """One line: what stopped the evaluation, what it kept, and the command that runs it again."""
    from embodied.interrupt import signal_of
    from embodied.train import launch_command

    # None: a KeyboardInterrupt that no handler saw (Python's own SIGINT handler raised it)
    signum = signal_of(exc)
    what = f"interrupted by {signal.Signals(signum if signum is not None else signal.SIGINT).name}"
    out_dir, episodes = getattr(exc, "out_dir", None), getattr(exc, "episodes", [])
    again = shlex.join(launch_command(argv, "embodied.eval_policy"))
    if episodes:
        kept = (
            f"the report of the finished passes ({len(episodes)} episodes, marked incomplete) is in {out_dir}"
        )
    elif out_dir is not None:
        kept = f"no pass had finished, so there is no report; what was written so far is in {out_dir}"
    else:
        kept = "nothing was written"
    return f"{what}; {kept}. Evaluate again with: {again}"


def _meta(config, source: PolicySource) -> dict[str, str | int]:
    """What was evaluated, for the report's heading and JSON."""
    first = config.eval.first_initial_state
    return {
        "config": config.run.name,
        "checkpoint": source.describe(),
        "env": f"{config.env.name} (tasks {list(config.env.selected_task_ids)})",
        "episodes per task": config.eval.num_episodes,
        "initial states": f"{first} .. {first + config.eval.num_episodes - 1}",
    }


def _run_passes(
    cluster, config, source: PolicySource, passes: list, video_dir: Path | None, episodes: list[dict]
) -> None:
    """The rollout workers and the policy's weights are set up once; each pass gets fresh env workers for its
    tasks (`Components.replace_env`) and runs its episodes (appended to `episodes` pass by pass)."""
    from embodied.components import Components
    from embodied.worker import wait_all

    total = sum(len(p.selected_task_ids) for p in passes) * config.eval.num_episodes
    progress = EvalProgress(total, config.logger.console)
    workers = None
    try:
        for i, env in enumerate(passes):
            if len(passes) > 1:
                progress.message(f"pass {i + 1}/{len(passes)}: tasks {list(env.selected_task_ids)}")
            if workers is None:
                workers = Components(cluster, config.replace(env=env))
                _check_env(workers.env_spec, config.eval, source)
                _load(workers, source)
                rng_states = workers.rollout.get_rng_state().wait()
            else:
                if workers.replace_env(env):  # another spec: the policy was rebuilt for it
                    _check_env(workers.env_spec, config.eval, source)
                    _load(workers, source)
                # each pass starts from the same rollout RNG state, as on freshly started workers
                wait_all(
                    *[workers.rollout.call("set_rng_state", s, ranks=[r]) for r, s in enumerate(rng_states)]
                )
            before = len(episodes)
            found, _ = workers.evaluate_episodes(
                config.eval, video_dir, on_progress=lambda n, b=before: progress.update(b + n)
            )
            episodes += found
            progress.update(len(episodes))
    finally:
        progress.close()
        if workers is not None:
            workers.close()


def _load(workers, source: PolicySource) -> None:
    if source.policy_dir is not None:
        workers.load_policy(source.policy_dir)


def _check_env(spec, eval_config, source: PolicySource) -> None:
    """The initial states exist, and the checkpoint's policy was made for this env's actions."""
    from algorithms.schema import ConfigError
    from policies.base import read_saved_config

    last = eval_config.first_initial_state + eval_config.num_episodes - 1
    if spec.num_initial_states is not None and last >= spec.num_initial_states:
        raise ConfigError(
            f"eval.first_initial_state={eval_config.first_initial_state} with eval.num_episodes="
            f"{eval_config.num_episodes} needs initial states up to {last}, but the env has "
            f"{spec.num_initial_states} per task (ids 0..{spec.num_initial_states - 1}): e.g. "
            f"eval.first_initial_state=0 eval.num_episodes={min(eval_config.num_episodes, spec.num_initial_states)}"
        )
    if source.policy_dir is not None:
        saved = read_saved_config(source.policy_dir)[1]
        if saved.action_dim != spec.action_dim:
            raise ConfigError(
                f"the checkpoint's policy acts in {saved.action_dim} dimensions but this env takes "
                f"{spec.action_dim}: it was trained on another env (or control mode)"
            )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        from embodied.compose import named_configs

        print(__doc__)
        print("Named configs: " + ", ".join(named_configs()))
        return 0
    from algorithms.schema import ConfigError
    from embodied.cluster import ClusterError
    from embodied.eval_checkpoint import CheckpointError
    from embodied.interrupt import exit_code, handling_signals, shutdown_ray_if_left
    from embodied.worker import WorkerError

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        config, tree, source = prepare(argv)
        import torch

        torch.manual_seed(config.run.seed)
        with handling_signals():
            evaluate_policy(config, tree, source)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (WorkerError, ClusterError) as exc:
        print(f"evaluation failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        shutdown_ray_if_left()
        print(interrupted_message(exc, argv), file=sys.stderr, flush=True)
        return exit_code(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
