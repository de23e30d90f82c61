"""The SFT -> RL pipeline end to end, timed: collect demonstrations, supervised fine-tuning, then RL from its
checkpoint, each stage the command a user would run. Prints the exact commands, the wall-clock of each stage and
of the whole, eval success after SFT and over the RL run, the load average at the start and the end, and writes
<out>/result.json (docs/learning_results.md records these).

    python scripts/bench_sft_rl.py pickcube_state --out /tmp/bench/pickcube --budget-min 15
    python scripts/bench_sft_rl.py pushcube_state --out /tmp/bench/pushcube --budget-min 10
    python scripts/bench_sft_rl.py pickcube_state --out /tmp/b --demos /work/demos/pickcube_state   # reuse demos
    python scripts/bench_sft_rl.py pushcube_rgb_pi0 --out /tmp/b --demos DIR --budget-min 60 --extra 'env.num_envs=8'

The RL stage gets what is left of --budget-min after the first two (at least --min-rl-min) and is stopped with
Ctrl-C (SIGINT) when it runs out, or ends by itself at `run.stop_at_eval_success`. Recorded measurements are
taken under `flock /tmp/inflow_measure.lock` (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(frozen=True)
class Row:
    """One row of the table: how its demos are made, its SFT config and its RL config."""

    collect: list[str]  # scripts/collect_demos.py arguments (without --out)
    sft_config: str
    rl_config: str
    sft: list[str] = field(default_factory=list)  # overrides of the SFT run
    rl: list[str] = field(default_factory=list)  # overrides of the RL run


# The demos run longer than the tasks' default 50-step limit (PushCube 55..74 steps, PickCube up to 94 with
# ManiSkill's planner speed): SFT evaluation and RL get 100 steps an episode (docs/demos.md).
LONG_EPISODES = ["env.max_episode_steps=100"]
# RL from an SFT checkpoint (docs/learning_results.md, row 2): evaluate from the first iterations (the config's
# min_train_success would skip every evaluation while the sampled policy succeeds less than the deterministic
# one), and fit the new value head for 10 iterations before the policy moves. Measured for tiny OFT on PushCube:
# neither 4 nor 10 warm-up iterations left the critic better than a constant, and PPO took the SFT policy from
# 0.52 to 0.00-0.02 eval success either way (docs/learning_results.md, row 2): the row is open.
RL_FROM_SFT = ["eval.min_train_success=null", "actor.critic_warmup_iterations=10"]
ROWS = {
    "pickcube_state": Row(
        ["--env", "maniskill_pickcube", "--num-episodes", "100"],
        "sft_maniskill_pickcube",
        "maniskill_ppo_pickcube",
        sft=LONG_EPISODES,
        rl=[*LONG_EPISODES, "eval.every_n_iterations=5", "run.stop_at_eval_success=0.9"],
    ),
    "pushcube_state": Row(
        ["--env", "maniskill_pushcube", "--num-episodes", "100"],
        "sft_maniskill_pushcube",
        "maniskill_ppo_pushcube",
        sft=LONG_EPISODES,
        rl=[*LONG_EPISODES, "eval.min_train_success=null", "run.stop_at_eval_success=0.9"],
    ),
    "pushcube_rgb_pi0": Row(
        ["--env", "maniskill_pushcube_rgb", "--num-episodes", "100"],
        "sft_maniskill_pushcube_pi0",
        "maniskill_ppo_pi0",
        rl=[*LONG_EPISODES, *RL_FROM_SFT],
    ),
    "pushcube_rgb_openvla_oft": Row(
        ["--env", "maniskill_pushcube_rgb", "--num-episodes", "100"],
        "sft_maniskill_pushcube_openvla_oft",
        "maniskill_ppo_pushcube_openvla_oft",
        rl=[*LONG_EPISODES, *RL_FROM_SFT],
    ),
}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_stage(name: str, command: list[str], log: Path, timeout_s: float | None = None) -> float:
    """Run `command`, its output to `log`; SIGINT at `timeout_s` (the runs stop cleanly on Ctrl-C). Seconds."""
    print(f"\n[{name}] {shlex.join(command)}", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"[{name}] budget spent: stopping it with SIGINT", flush=True)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
    seconds = time.monotonic() - start
    print(f"[{name}] exit {process.returncode} after {seconds / 60:.1f} min (log: {log})", flush=True)
    if process.returncode not in (0, 130):
        raise SystemExit(f"{name} failed with exit code {process.returncode}; see {log}")
    return seconds


def eval_curve(run_dir: Path) -> list[tuple[float, int, float]]:
    """(wall minutes, step, eval success_once) of every evaluation of a run, from its TensorBoard files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    if "eval/success_once" not in events.Tags()["scalars"]:  # stopped before its first evaluation
        return []
    minutes = {e.step: e.value for e in events.Scalars("progress/wall_minutes")}
    return [(minutes.get(e.step, float("nan")), e.step, e.value) for e in events.Scalars("eval/success_once")]


def newest_run(root: Path) -> Path:
    return max(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith("eval")), key=lambda p: p.name
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("row", choices=sorted(ROWS))
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for demos, runs, logs and result.json"
    )
    parser.add_argument(
        "--demos", type=Path, help="use this dataset instead of collecting (its time not counted)"
    )
    parser.add_argument("--num-episodes", type=int, help="demos to collect (default: the row's)")
    parser.add_argument(
        "--speed", type=float, help="collect_demos.py --speed: the planner's joint speed (default: ManiSkill's)"
    )
    parser.add_argument("--budget-min", type=float, default=15.0, help="minutes for the whole pipeline")
    parser.add_argument("--min-rl-min", type=float, default=2.0, help="the RL stage gets at least this")
    parser.add_argument("--sft", nargs="*", default=[], help="more key=value overrides of the SFT run")
    parser.add_argument("--rl", nargs="*", default=[], help="more key=value overrides of the RL run")
    args = parser.parse_args()
    row, out = ROWS[args.row], args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.monotonic(), load_average()
    result: dict = {"row": args.row, "load_average_start": load_start, "commands": {}, "seconds": {}}
    common = [f"run.output_dir={out / 'runs'}", "logger.wandb.mode=disabled", "cluster.startup_timeout_s=900"]

    demos = args.demos
    if demos is None:
        demos = out / "demos"
        collect = [PY, "scripts/collect_demos.py", *row.collect, "--out", str(demos)]
        if args.num_episodes is not None:
            collect += ["--num-episodes", str(args.num_episodes)]
        if args.speed is not None:
            collect += ["--speed", str(args.speed)]
        result["commands"]["collect"] = shlex.join(collect)
        result["seconds"]["collect"] = run_stage("collect", collect, out / "collect.log")

    sft = [PY, "-m", "embodied.sft", row.sft_config, f"sft.demos={demos}", *common, *row.sft, *args.sft]
    result["commands"]["sft"] = shlex.join(sft)
    result["seconds"]["sft"] = run_stage("sft", sft, out / "sft.log")
    sft_run = newest_run(out / "runs" / row.sft_config)
    result["sft_eval"] = eval_curve(sft_run)
    checkpoint = sorted((sft_run / "checkpoints").glob("iter_*"))[-1] / "policy"

    left_min = max(args.budget_min - (time.monotonic() - started) / 60, args.min_rl_min)
    rl = [
        PY,
        "-m",
        "embodied.train",
        row.rl_config,
        f"policy.pretrained={checkpoint}",
        *common,
        *row.rl,
        *args.rl,
    ]
    result["commands"]["rl"] = shlex.join(rl)
    result["seconds"]["rl"] = run_stage("rl", rl, out / "rl.log", timeout_s=left_min * 60)
    result["rl_eval"] = eval_curve(newest_run(out / "runs" / row.rl_config))
    result["seconds"]["total"] = time.monotonic() - started
    result["load_average_end"] = load_average()
    (out / "result.json").write_text(json.dumps(result, indent=2))

    before = sum(result["seconds"].get(k, 0.0) for k in ("collect", "sft")) / 60
    print(f"\nload average: {load_start} at the start, {result['load_average_end']} at the end")
    print(f"SFT eval success (step, success): {[(s, round(v, 3)) for _, s, v in result['sft_eval']]}")
    for minutes, step, value in result["rl_eval"]:
        print(f"  RL eval at {before + minutes:5.1f} min of the pipeline ({step:,} env steps): {value:.3f}")
    print("stages (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in result["seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
