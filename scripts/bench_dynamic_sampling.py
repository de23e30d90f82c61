"""DAPO's dynamic sampling on the math path: what refilling the batch costs in generation, against one round per
step (the generation of dynamic sampling without refill: the uniform groups of that round leave the gradient).

    python scripts/bench_dynamic_sampling.py --rounds 10 [--seed 0] [--env-steps 12800] [overrides ...]
    python scripts/bench_dynamic_sampling.py --rounds 1  ...

Each call trains `math_dapo` (in-process Ray) for the same env-step budget, every generation round counted, with
`algorithm.max_num_gen_batches=ROUNDS`, and prints one line: steps, mean generation rounds per step, mean mixed
groups trained on (of the batch's 8) and padded uniform ones, seconds of rollout per step and in all, wall
minutes, and the final greedy accuracy on the first 256 training problems. Run each call under the measurement
lock (`flock /tmp/inflow_measure.lock python scripts/bench_dynamic_sampling.py ...`): the rounds' costs are
seconds of a shared CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from embodied.compose import load_config
from embodied.train import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, required=True, help="algorithm.max_num_gen_batches (1: no refill)"
    )
    parser.add_argument("--seed", type=int, default=0, help="run.seed")
    parser.add_argument("--env-steps", type=int, default=12800, help="run.total_env_steps (responses)")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides of math_dapo")
    return parser.parse_args()


def summarize(run_dir: Path) -> dict[str, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()

    def values(tag: str) -> list[float]:
        return [e.value for e in events.Scalars(tag)]

    rollout_seconds = values("time/rollout")
    return {
        "steps": len(rollout_seconds),
        "rounds_mean": statistics.mean(values("rollout/gen_rounds")),
        "rounds_max": max(values("rollout/gen_rounds")),
        "kept_mean": statistics.mean(values("rollout/groups_kept")),
        "padded_mean": statistics.mean(values("rollout/groups_padded")),
        "rollout_s_per_step": statistics.mean(rollout_seconds),
        "rollout_s_total": sum(rollout_seconds),
        "iteration_s_per_step": statistics.mean(values("time/iteration")),
        "accuracy": values("eval/success_once")[-1],
    }


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        config, tree = load_config(
            "math_dapo",
            [
                f"algorithm.max_num_gen_batches={args.rounds}",
                f"run.seed={args.seed}",
                f"run.total_env_steps={args.env_steps}",
                "eval.every_n_iterations=0",
                "eval.at_end=true",
                "checkpoint.every_n_iterations=0",
                "checkpoint.at_end=false",
                "logger.wandb.mode=disabled",
                "logger.console=plain",
                f"run.output_dir={out}",
                *args.overrides,
            ],
        )
        started = time.monotonic()
        train(config, tree)
        minutes = (time.monotonic() - started) / 60
        (run_dir,) = (Path(out) / config.run.name).iterdir()
        stats = summarize(run_dir)
    print(
        f"max_num_gen_batches={args.rounds} seed={args.seed} env_steps={args.env_steps}: "
        f"{stats['steps']} steps, rounds/step {stats['rounds_mean']:.2f} (max {stats['rounds_max']:.0f}), "
        f"mixed groups trained on {stats['kept_mean']:.2f} of {config.env.num_envs // config.env.group_size} "
        f"(padded {stats['padded_mean']:.2f}), rollout {stats['rollout_s_per_step']:.2f} s/step "
        f"({stats['rollout_s_total']:.0f} s in all), iteration {stats['iteration_s_per_step']:.2f} s/step, "
        f"{minutes:.1f} min, greedy accuracy {stats['accuracy']:.3f}; "
        f"load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
