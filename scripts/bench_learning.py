"""Learning speed and stability of the suite's default config against the strong single-process baseline.

For each seed, one after the other on this machine: the suite (`python -m embodied.train <config>`) and
`scripts/baseline_cleanrl_ppo.py` (CleanRL-style PPO, gymnasium AsyncVectorEnv over 8 ManiSkill CPU envs), both
with the same evaluation (64 deterministic episodes from the fixed initial states 1,000,000 + 0..63, every
`--eval-every-steps` env steps from the start). Each run continues until `--past-evals` evaluations followed
the first one >= `--threshold` (the suite is stopped with Ctrl-C then; its own stop at eval success 0.95 is
overridden), or until its env-step budget ends. Each run takes the measurement lock (`--lock`, flock) for
itself only, so other measurements interleave; `uptime` is recorded before and after.

    python scripts/bench_learning.py                              # PushCube-v1, 3 seeds each
    python scripts/bench_learning.py --task pickcube --seeds 0 1  # PickCube-v1 (~40 min a run)
    python scripts/bench_learning.py --report runs/bench_learning/pushcube-<timestamp>   # table and plot again

Prints per seed and as medians: seconds from the command to the first eval >= threshold, env steps to it, the
lowest eval after it (and how many followed); the ratio of the medians (suite / baseline). Writes
results.json and the runs' logs to the output folder, the curves to `--plot`, and the table into
docs/benchmarks.md between the markers `<!-- bench_learning:<task> -->` and `<!-- /bench_learning:<task> -->`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from plot_curves import csv_curve, plot, run_curve  # noqa: E402

TASKS = {  # the suite's config per task and its env-step budget (run.total_env_steps of the config)
    "pushcube": {"id": "PushCube-v1", "config": "maniskill_ppo_pushcube", "eval_every": 8000},
    "pickcube": {"id": "PickCube-v1", "config": "maniskill_ppo_pickcube", "eval_every": 32000},
}
SUITE_EVAL = re.compile(r"\beval (\d\.\d+)")
BASELINE_EVAL = re.compile(r"success_once (\d\.\d+)")


@dataclass
class Run:
    """One system's run with one seed: its evaluations and the machine's load around it."""

    system: str
    seed: int
    command: list[str]
    folder: str
    seconds: list[float] = field(
        default_factory=list
    )  # from the command's start to the eval line, measured here
    env_steps: list[int] = field(default_factory=list)
    success: list[float] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    exit_code: int | None = None

    def summary(self, threshold: float) -> dict:
        """Time and env steps to the first eval >= threshold, and the lowest eval after it (None: never)."""
        first = next((k for k, s in enumerate(self.success) if s >= threshold), None)
        if first is None:
            return {"seconds": None, "env_steps": None, "lowest_after": None, "evals_after": 0}
        after = self.success[first + 1 :]
        return {
            "seconds": self.seconds[first],
            "env_steps": self.env_steps[first],
            "lowest_after": min(after) if after else None,
            "evals_after": len(after),
        }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="pushcube")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--systems", nargs="+", choices=("suite", "baseline"), default=["suite", "baseline"])
    p.add_argument("--threshold", type=float, default=0.9, help="the success that counts as learned")
    p.add_argument(
        "--past-evals", type=int, default=10, help="evaluations to watch after the first >= threshold"
    )
    p.add_argument("--eval-every-steps", type=int, default=None, help="default: the suite config's interval")
    p.add_argument("--max-env-steps", type=int, default=None, help="baseline budget; default: 2x the suite's")
    p.add_argument("--suite-args", nargs="*", default=[], help="extra key=value overrides for the suite")
    p.add_argument("--baseline-args", nargs="*", default=[], help="extra flags for the baseline")
    p.add_argument("--lock", default="/tmp/inflow_measure.lock", help="flock file taken per run; '' for none")
    p.add_argument("--nice", type=int, default=0, help="niceness of the runs (investigations: 15, no lock)")
    p.add_argument("--out", default=None, help="output folder; default runs/bench_learning/<task>-<time>")
    p.add_argument("--plot", default=None, help="PNG of the curves; default docs/learning_curves_<task>.png")
    p.add_argument("--docs", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file; '' for none")
    p.add_argument("--report", default=None, help="only re-read an output folder's results.json and report")
    return p.parse_args()


def suite_command(args, task: dict, seed: int, out: Path, batch: int) -> list[str]:
    """`batch`: env steps per iteration (env.num_envs x rollout.num_steps of the config)."""
    every = args.eval_every_steps or task["eval_every"]
    if every % batch:
        raise SystemExit(
            f"--eval-every-steps {every} is not a multiple of the suite's {batch} env steps per iteration"
        )
    return [
        sys.executable,
        "-m",
        "embodied.train",
        task["config"],
        f"run.seed={seed}",
        "run.stop_at_eval_success=null",  # the stability check needs the evaluations after success
        f"eval.every_n_iterations={every // batch}",
        "eval.min_train_success=null",  # evaluate from the start, as the baseline does
        f"run.output_dir={out}",
        f"run.name=suite_s{seed}",
        "logger.console=plain",
        "cluster.startup_timeout_s=900",  # a busy machine starts Ray's workers slowly (a timeout, not behaviour)
        *args.suite_args,
    ]


def baseline_command(args, task: dict, seed: int, out: Path, suite_budget: int) -> list[str]:
    return [
        sys.executable,
        str(REPO / "scripts" / "baseline_cleanrl_ppo.py"),
        f"--task={task['id']}",
        f"--seed={seed}",
        f"--eval-every-steps={args.eval_every_steps or task['eval_every']}",
        f"--total-steps={args.max_env_steps or 2 * suite_budget}",
        "--stop-after-evals-past",
        str(args.threshold),
        str(args.past_evals),
        f"--out={out / f'baseline_s{seed}.csv'}",
        *args.baseline_args,
    ]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def execute(run: Run, args, log: Path) -> None:
    """Run `run.command` (under the lock), timing each eval line from the command's start; Ctrl-C the suite
    once `--past-evals` evaluations followed the first >= threshold."""
    lock = open(args.lock, "a") if args.lock else None  # noqa: SIM115 - held for the run
    if lock is not None:
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        run.load_before = uptime()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        start = time.monotonic()
        proc = subprocess.Popen(
            run.command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=(lambda: os.nice(args.nice)) if args.nice else None,
        )
        seen: list[float] = []
        with open(log, "w") as f:
            for line in proc.stdout:
                f.write(line)
                match = (SUITE_EVAL if run.system == "suite" else BASELINE_EVAL).search(line)
                if match:
                    run.seconds.append(round(time.monotonic() - start, 2))
                    seen.append(float(match.group(1)))
                    done = past_enough(seen, args.threshold, args.past_evals)
                    if done and run.system == "suite" and proc.poll() is None:
                        proc.send_signal(
                            signal.SIGINT
                        )  # Ctrl-C: the suite stops cleanly (the baseline by itself)
        run.exit_code = proc.wait()
        run.load_after = uptime()
    finally:
        if lock is not None:
            lock.close()


def past_enough(success: list[float], threshold: float, evals: int) -> bool:
    first = next((k for k, s in enumerate(success) if s >= threshold), None)
    return first is not None and len(success) - 1 - first >= evals


def fill_from_files(run: Run) -> None:
    """Eval success and env steps at full precision from the run's own records (TensorBoard / CSV)."""
    try:
        if run.system == "suite":
            (folder,) = Path(run.folder).iterdir()
            _, steps, success = run_curve(folder)
        else:
            _, steps, success = csv_curve(Path(run.folder))
    except (KeyError, FileNotFoundError, ValueError) as exc:  # a run that failed before its first evaluation
        print(f"   {run.system} seed {run.seed}: no evaluations recorded ({exc!r}); see its log")
        steps, success = [], []
    if len(success) != len(run.seconds):
        raise RuntimeError(
            f"{run.system} seed {run.seed}: {len(run.seconds)} eval lines but {len(success)} recorded evals"
        )
    run.env_steps, run.success = [int(s) for s in steps], list(success)


def median(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def report(runs: list[Run], args, task: dict) -> str:
    """The markdown table (per seed and medians) and the ratio line."""
    lines = [
        f"| system | seed | seconds to first eval >= {args.threshold} | env steps to it | lowest eval after it "
        "(evals after) | load before -> after |",
        "|---|---|---|---|---|---|",
    ]
    medians = {}
    for system in ("suite", "baseline"):
        mine = [r for r in runs if r.system == system]
        if not mine:
            continue
        sums = [r.summary(args.threshold) for r in mine]
        for r, s in zip(mine, sums):
            lowest = "-" if s["lowest_after"] is None else f"{s['lowest_after']:.3f}"
            lines.append(
                f"| {system} | {r.seed} | {fmt(s['seconds'], '{:.0f}')} | {fmt(s['env_steps'], '{:,}')} | "
                f"{lowest} ({s['evals_after']}) | {load_avg(r.load_before)} -> {load_avg(r.load_after)} |"
            )
        medians[system] = {k: median([s[k] for s in sums]) for k in ("seconds", "env_steps", "lowest_after")}
        m = medians[system]
        lines.append(
            f"| **{system}, median** | | **{fmt(m['seconds'], '{:.0f}')}** | {fmt(m['env_steps'], '{:,.0f}')} | "
            f"{fmt(m['lowest_after'], '{:.3f}')} | |"
        )
    if all(medians.get(s, {}).get("seconds") for s in ("suite", "baseline")):
        ratio = medians["suite"]["seconds"] / medians["baseline"]["seconds"]
        lines.append("")
        lines.append(f"Median time to {args.threshold}: suite / baseline = **{ratio:.2f}x**.")
    return "\n".join(lines)


def fmt(value, pattern: str) -> str:
    return "never" if value is None else pattern.format(value)


def load_avg(line: str) -> str:
    """The 1-minute load average of an `uptime` line."""
    match = re.search(r"load average: ([\d.]+)", line)
    return match.group(1) if match else "?"


def write_docs(path: str, key: str, text: str) -> None:
    start, end = f"<!-- bench_learning:{key} -->", f"<!-- /bench_learning:{key} -->"
    doc = Path(path).read_text()
    if start not in doc or end not in doc:
        print(f"{path} has no {start} ... {end} markers; the table is not written there")
        return
    head, rest = doc.split(start, 1)
    Path(path).write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
    print(f"wrote the table into {path}")


def plot_runs(runs: list[Run], out: str, task: dict, threshold: float) -> None:
    colors = {"suite": "tab:blue", "baseline": "tab:orange"}
    curves = [(f"{r.system} s{r.seed}", ([s / 60 for s in r.seconds], r.env_steps, r.success)) for r in runs]
    title = f"ManiSkill {task['id']} (state), PPO + MLP, 2-core CPU: suite vs CleanRL-style baseline"
    plot(curves, out, title, goal=threshold, colors=[colors[r.system] for r in runs])


def main() -> None:
    args = parse_args()
    task = TASKS[args.task]
    if args.report:
        out = Path(args.report)
        runs = [Run(**r) for r in json.loads((out / "results.json").read_text())["runs"]]
    else:
        out = Path(
            args.out or REPO / "runs" / "bench_learning" / f"{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        out.mkdir(parents=True, exist_ok=True)
        runs = []
        from embodied.compose import load_config

        config, _ = load_config(task["config"], args.suite_args)
        budget, batch = config.run.total_env_steps, config.env.num_envs * config.rollout.num_steps
        for seed in args.seeds:
            for system in args.systems:
                if system == "suite":
                    folder = out / f"suite_s{seed}"
                    run = Run(system, seed, suite_command(args, task, seed, out, batch), str(folder))
                else:
                    command = baseline_command(args, task, seed, out, budget)
                    run = Run(system, seed, command, str(out / f"baseline_s{seed}.csv"))
                print(f"== {system} seed {seed}: {' '.join(run.command)}", flush=True)
                execute(run, args, out / f"{system}_s{seed}.log")
                fill_from_files(run)
                runs.append(run)
                s = run.summary(args.threshold)
                print(f"   {s}  exit {run.exit_code}  {run.load_before} -> {run.load_after}", flush=True)
                (out / "results.json").write_text(
                    json.dumps({"args": vars(args), "runs": [asdict(r) for r in runs]})
                )
    table = report(runs, args, task)
    print(table)
    plot_runs(
        runs, args.plot or str(REPO / "docs" / f"learning_curves_{args.task}.png"), task, args.threshold
    )
    if args.docs:
        write_docs(args.docs, args.task, table)


if __name__ == "__main__":
    main()
