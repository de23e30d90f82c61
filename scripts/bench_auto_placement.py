"""Auto placement against every candidate, measured: does `cluster=auto` pick the fastest, and how close are
its predictions?

    python scripts/bench_auto_placement.py                         # the three workloads
    python scripts/bench_auto_placement.py --workloads training --iterations 5
    python scripts/bench_auto_placement.py --candidates 4          # only the 4 predicted fastest (quicker)
    python scripts/bench_auto_placement.py --rounds 1              # each candidate once (half the time)

Workloads whose bottleneck differs:
    env        ManiSkill3 PushCube-v1 rgb (64x64, CPU rendering) + the small CNN: simulation dominates
    inference  the built-in colour_targets env (numpy, fast) + a wide CNN on 32 envs: the rollout is inference
    training   colour_targets + the MLP with 32 update epochs: the update dominates

Per workload, each step holding the measurement lock (/tmp/inflow_measure.lock, the one `flock` takes) for
its own duration only: the plan (`embodied.plan.plan`: the profile on the real workers, then the cost model's
prediction of every candidate), then every candidate (or the predicted fastest `--candidates`) trained for a
fixed number of iterations with its placement, slot count and pipeline stages, exactly as `cluster=auto` would
run it, in `--rounds` rounds (the second in reverse order). Measured: the median `time/iteration` of iterations
2..n of a run, the lowest over the rounds (a run that a passing job slowed throughout does not decide). Report: candidates by measured time with
their predictions, auto's choice against the best measured (goal: within 5 %), and the prediction error of
the choice (goal: within 15 %) and of all candidates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_online_scaling import QUIET, load, measurement_lock, scalars

WORKLOADS = {
    "env": (
        "maniskill_ppo_pushcube_rgb",
        [
            "env.num_envs=8",
            "rollout.num_steps=10",
            "policy.channels=[16,32,32]",
            "policy.feature_dim=128",
            "policy.head_hidden=128",
            "actor.update_epochs=1",
            "actor.num_minibatches=2",
        ],
    ),
    "inference": (
        "maniskill_ppo_pushcube",
        [
            "env=colour_targets",
            "policy=cnn",
            "env.num_envs=32",
            "rollout.num_steps=10",
            "policy.channels=[128,256,256]",
            "actor.update_epochs=1",
            "actor.num_minibatches=2",
            "actor.bootstrap_on_termination=false",
        ],
    ),
    "training": (
        "maniskill_ppo_pushcube",
        [
            "env=colour_targets",
            "env.num_envs=16",
            "rollout.num_steps=50",
            "actor.update_epochs=32",
            "actor.target_kl=null",
            "actor.bootstrap_on_termination=false",
        ],
    ),
}


def measure_candidate(config_name: str, overrides: list[str], candidate, iterations: int) -> dict:
    from embodied.compose import load_config
    from embodied.plan import apply
    from embodied.train import train

    with tempfile.TemporaryDirectory(prefix="bench_auto_") as out:
        config, _ = load_config(config_name, [*overrides, f"run.output_dir={out}"])
        config = apply(config, candidate)
        steps = config.env.num_envs * config.rollout.num_steps * iterations
        config = config.replace(run=config.run.replace(total_env_steps=steps))
        with measurement_lock():
            start_load = load()
            train(config, config.to_dict())
            end_load = load()
        (run_dir,) = (Path(out) / config.run.name).iterdir()
        seconds = scalars(run_dir)["time/iteration"]
    return {"measured": statistics.median(seconds[1:] or seconds), "load": f"{start_load} -> {end_load}"}


def bench(workload: str, iterations: int, top: int | None, rounds: int) -> None:
    from embodied.cluster import stop_ray
    from embodied.compose import load_config
    from embodied.plan import plan

    name, overrides = WORKLOADS[workload]
    overrides = [*overrides, *QUIET, "run.stop_at_eval_success=null", "cluster=auto"]
    config, _ = load_config(name, overrides)
    with measurement_lock():
        start_load, began = load(), time.perf_counter()
        result = plan(config, log=lambda line: print(f"  {line}", flush=True))
        profiled = f"{time.perf_counter() - began:.0f} s, load {start_load} -> {load()}"
    stop_ray()
    predictions = result.predictions[:top] if top else result.predictions
    runs: list[list[dict]] = [[] for _ in predictions]
    order = list(range(len(predictions)))
    for r in range(rounds):
        for i in order if r % 2 == 0 else order[::-1]:
            p, m = predictions[i], measure_candidate(name, overrides, predictions[i].candidate, iterations)
            runs[i].append(m)
            print(
                f"  round {r + 1}: {p.candidate.name}: predicted {p.iteration:.3f} s, measured "
                f"{m['measured']:.3f} s ({m['load']})",
                flush=True,
            )
    rows = []
    for p, measured in zip(predictions, runs):
        fastest = min(measured, key=lambda m: m["measured"])
        rows.append((p, fastest | {"rounds": " / ".join(f"{m['measured']:.3f}" for m in measured)}))
    report(workload, name, overrides, iterations, rounds, profiled, result.chosen, rows)


def report(workload, name, overrides, iterations, rounds, profiled, chosen, rows) -> None:
    rows = sorted(rows, key=lambda r: r[1]["measured"])
    best = rows[0][1]["measured"]
    print(f"\n### {workload}: `{name} {' '.join(o for o in overrides if o not in QUIET)}`")
    print(
        f"profile + plan: {profiled}; {iterations} iterations per candidate run, median of iterations "
        f"2-{iterations}, lowest of {rounds} round(s)\n"
    )
    print("| candidate | predicted s | measured s | rounds s | prediction error | vs best measured | load |")
    print("|---|---|---|---|---|---|---|")
    for p, m in rows:
        mark = " **(auto)**" if p is chosen else ""
        print(
            f"| {p.candidate.name}{mark} | {p.iteration:.3f} | {m['measured']:.3f} | {m['rounds']} | "
            f"{p.iteration / m['measured'] - 1:+.0%} | {m['measured'] / best:.2f}x | {m['load']} |"
        )
    auto = next((m for p, m in rows if p is chosen), None)
    errors = [abs(p.iteration / m["measured"] - 1) for p, m in rows]
    if auto is not None:
        print(
            f"\nauto's choice: {auto['measured'] / best - 1:+.1%} vs the best measured (goal <= +5 %); its "
            f"prediction {chosen.iteration / auto['measured'] - 1:+.1%} (goal within 15 %); median |error| over "
            f"all candidates {statistics.median(errors):.0%}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--iterations", type=int, default=5, help="per candidate (the first is left out)")
    p.add_argument("--candidates", type=int, default=None, help="only the predicted fastest N")
    p.add_argument("--rounds", type=int, default=2, help="runs per candidate; the lowest median counts")
    args = p.parse_args()
    for workload in args.workloads:
        bench(workload, args.iterations, args.candidates, args.rounds)


if __name__ == "__main__":
    main()
