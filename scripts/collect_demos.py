"""Collect successful demonstrations for a ManiSkill3 task with ManiSkill's motion-planning solutions.

    python scripts/collect_demos.py --task PushCube-v1 --num-episodes 100 --out /work/demos/pushcube_state
    python scripts/collect_demos.py --env maniskill_pickcube --num-episodes 100 --out demos/pickcube_state
    python scripts/collect_demos.py --env maniskill_pushcube_rgb --out demos/pushcube_rgb      # 64x64 images
    python scripts/collect_demos.py --task StackCube-v1 --control-mode pd_ee_delta_pose --out demos/stack_ee

Each seed (--seed, --seed + 1, ...) is one episode: ManiSkill's solution plans it in pd_joint_pos, the plan is
converted to the control mode of the suite's env with ManiSkill's trajectory conversion, and the observations
the suite's ManiSkill env gives a policy (`states`, `main_images` at `image_size`, the instruction) are recorded
before each action, up to the first success. Seeds whose plan or conversion fails are skipped (and listed).
The dataset is a LeRobot v3.0 folder (envs/demos; `open_demos(path)` reads it), with the collection's summary in
meta/inflow_collection.json. `--env` takes task, obs_mode, control_mode, image_size, robot and instruction from
an env config (configs/env/<name>.yaml, or a path), so the demos match an RL config; flags override it.
Details: docs/demos.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="new dataset folder (must not exist or be empty)"
    )
    parser.add_argument(
        "--env", help="env config to match: configs/env/<name>.yaml or a YAML path (maniskill)"
    )
    parser.add_argument("--task", help="ManiSkill task id (default: the env config's, else PushCube-v1)")
    parser.add_argument("--obs-mode", help="state | rgb (default: the env config's, else state)")
    parser.add_argument(
        "--control-mode",
        help="pd_joint_delta_pos | pd_joint_pos | pd_ee_delta_pos | pd_ee_delta_pose "
        "(default: the env config's, else pd_joint_delta_pos, as the RL configs)",
    )
    parser.add_argument(
        "--image-size", type=int, help="rgb image height = width (default: the env config's, else 128)"
    )
    parser.add_argument("--num-episodes", type=int, default=100, help="successful demos to keep")
    parser.add_argument(
        "--seed", type=int, default=0, help="first reset seed; episodes use seed, seed + 1, ..."
    )
    parser.add_argument("--max-attempts", type=int, help="seeds to try at most (default: 2 x episodes + 20)")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="scales the planner's joint speed limits (1: ManiSkill's)"
    )
    args = parser.parse_args(argv)
    for name in ("num_episodes", "speed"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def env_tree(args: argparse.Namespace) -> dict:
    """The env section: the --env config (if any), the RL configs' defaults, then the flags."""
    import yaml

    tree = {
        "name": "maniskill",
        "task": "PushCube-v1",
        "obs_mode": "state",
        "control_mode": "pd_joint_delta_pos",
    }
    if args.env:
        path = (
            Path(args.env)
            if args.env.endswith((".yaml", ".yml"))
            else REPO / "configs" / "env" / f"{args.env}.yaml"
        )
        if not path.is_file():
            known = sorted(p.stem for p in (REPO / "configs" / "env").glob("maniskill_*.yaml"))
            raise ValueError(
                f"env config {args.env!r} not found ({path}); ManiSkill env configs: {', '.join(known)}"
            )
        tree.update(yaml.safe_load(path.read_text()))
        if tree.get("name") != "maniskill":
            raise ValueError(
                f"env config {path} is for env {tree.get('name')!r}; demos are made for maniskill envs"
            )
    flags = {"task": args.task, "obs_mode": args.obs_mode, "control_mode": args.control_mode}
    tree.update({k: v for k, v in {**flags, "image_size": args.image_size}.items() if v is not None})
    # one simulator in this process; where the config's envs would run does not change an observation
    tree.update(num_envs=1, num_workers=1, sim_backend="physx_cpu", render_backend="auto")
    return tree


class Progress:
    """A tqdm bar over kept demos, with the planner's success rate, the conversions' and the attempts."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, unit="demo", mininterval=0.5 if sys.stderr.isatty() else 10, dynamic_ncols=True
        )

    def __call__(self, summary) -> None:
        self.bar.set_postfix(
            planner=f"{summary.planned}/{summary.attempts} ({summary.planner_success_rate:.0%})",
            converted=f"{summary.conversion_success_rate:.0%}",
            refresh=False,
        )
        self.bar.update(summary.kept - self.bar.n)  # redraws at most every mininterval (10 s into a log file)

    def close(self) -> None:
        self.bar.close()


class ProtectedWriter:
    """A DemoWriter whose episodes are written whole: a signal during `add_episode` takes effect after it."""

    def __init__(self, writer) -> None:
        self.writer = writer

    def add_episode(self, **episode) -> None:
        from embodied.interrupt import protected

        with protected():
            self.writer.add_episode(**episode)


def report(args, config, summary, interrupted: bool) -> dict:
    """Print the collection's summary; return it for meta/inflow_collection.json."""
    import numpy as np
    from mani_skill.utils.registration import REGISTERED_ENVS

    size_mb = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 2**20
    lengths = np.array(summary.lengths or [0])
    limit = int(REGISTERED_ENVS[config.task].max_episode_steps or 0)
    data = {
        "command": "python " + shlex.join(sys.argv),
        "env": config.to_dict(),
        "episodes_kept": summary.kept,
        "seeds_tried": summary.attempts,
        "planner_success_rate": round(summary.planner_success_rate, 4),
        "conversion_success_rate": round(summary.conversion_success_rate, 4),
        "seconds": round(summary.seconds, 1),
        "demos_per_minute": round(summary.demos_per_minute, 2),
        "episode_length": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "disk_mb": round(size_mb, 2),
        "failures": {str(seed): why for seed, why in summary.failures.items()},
        "interrupted": interrupted,
    }
    print(
        f"\n{'interrupted: ' if interrupted else ''}{summary.kept} demos of {config.task} ({config.obs_mode}, "
        f"{config.control_mode}) in {args.out}\n"
        f"  seeds tried {summary.attempts}: planner success {summary.planned}/{summary.attempts} "
        f"({summary.planner_success_rate:.1%}), conversion success {summary.kept}/{summary.planned} "
        f"({summary.conversion_success_rate:.1%})\n"
        f"  time {summary.seconds:.1f} s ({summary.demos_per_minute:.1f} demos/min); episode length "
        f"{lengths.min()}..{lengths.max()} (mean {lengths.mean():.1f}) steps; {size_mb:.2f} MB on disk "
        f"({size_mb / max(summary.kept, 1):.3f} MB per episode)"
    )
    for seed, why in list(summary.failures.items())[:10]:
        print(f"  seed {seed}: {why}")
    if summary.kept and lengths.max() > limit:
        print(
            f"  note: demos run up to {lengths.max()} steps, past {config.task}'s default time limit of {limit}; "
            f"train and evaluate on them with env.max_episode_steps >= {lengths.max()}"
        )
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import envs.maniskill  # noqa: F401  (points ManiSkill at the project's assets before it is imported)
    from embodied.interrupt import exit_code, handling_signals
    from envs import EnvConfig
    from envs.demos import DemoFormatError, DemoWriter
    from envs.maniskill import ManiSkillSetupError
    from envs.maniskill.demos import DemoCollector, check_request

    try:
        config = EnvConfig.from_dict(env_tree(args), path="env")
        check_request(config.task, config.obs_mode, config.control_mode)
        if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
            raise DemoFormatError(f"--out {args.out} already exists and is not empty; pass a new folder")
    except ValueError as exc:  # ConfigError, DemoRequestError, DemoFormatError: bad input, said in one line
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        collector = DemoCollector(config, speed=args.speed)
    except ManiSkillSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    max_attempts = args.max_attempts or 2 * args.num_episodes + 20
    print(
        f"collecting {args.num_episodes} demos of {config.task}: {collector.info.source}; seeds from {args.seed}"
    )
    progress, interrupted = Progress(args.num_episodes), 0
    try:
        with handling_signals(), DemoWriter(args.out, collector.info) as writer:
            try:
                collector.collect(
                    ProtectedWriter(writer), args.num_episodes, args.seed, max_attempts, progress
                )
            except (
                KeyboardInterrupt
            ) as exc:  # Ctrl-C or SIGTERM: the writer still closes, keeping the demos so far
                interrupted = exit_code(exc)
    finally:
        progress.close()
        collector.close()
    summary = collector.summary
    data = report(args, config, summary, bool(interrupted))
    if summary.kept:
        (args.out / "meta" / "inflow_collection.json").write_text(json.dumps(data, indent=2))
    if interrupted:
        return interrupted
    if summary.kept < args.num_episodes:
        print(
            f"error: only {summary.kept} of {args.num_episodes} demos after {summary.attempts} seeds",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
