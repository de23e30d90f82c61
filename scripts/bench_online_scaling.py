"""Online scaling: the same config with and without `cluster.online_scaling`, in one run, with the same seeds.

    python scripts/bench_online_scaling.py                              # math_grpo and maniskill_ppo_pushcube
    python scripts/bench_online_scaling.py --workloads math --iterations 40
    python scripts/bench_online_scaling.py --variants off ranks         # only the two that are compared

Per workload, training runs of a fixed number of iterations (no eval, no checkpoints), each holding the
measurement lock (/tmp/inflow_measure.lock, the one `flock` takes) for its own duration only:

    off      the config as it is (cluster=hybrid: env + rollout workers on both slots, the actor on slot 0)
    ranks    cluster.online_scaling=true: the rollout worker on slot 1 joins every update as a gloo rank
    threads  cluster.online_scaling=true cluster.scaling_cores_as=threads: the actor takes both cores
    static   the actor on both slots all along (two FSDP2 ranks): the static split online scaling must beat

`off` and `ranks` run twice, in the order off ranks ranks off (load drift hits both alike). Per run: the
median over the iterations after the first two of time/iteration, time/train, time/rollout and
time/scale_switch, and the load average at its start and end. Then the ratios of iteration time against `off`
and the switch time as a share of the iteration.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

LOCK = "/tmp/inflow_measure.lock"
WORKLOADS = {
    "math": ("math_grpo", 64, []),
    "pushcube": ("maniskill_ppo_pushcube", 1600, ["run.stop_at_eval_success=null"]),
}
VARIANTS = {
    "off": [],
    "ranks": ["cluster.online_scaling=true"],
    "threads": ["cluster.online_scaling=true", "cluster.scaling_cores_as=threads"],
    "static": ["cluster.component_placement.actor=all"],
}
QUIET = [
    "eval.every_n_iterations=0",
    "eval.at_end=false",
    "checkpoint.every_n_iterations=0",
    "checkpoint.at_end=false",
    "logger.wandb.mode=disabled",
    "logger.console=plain",
    "cluster.startup_timeout_s=900",  # simulators start slowly on a loaded machine; start-up is not timed
]
KEYS = ("time/iteration", "time/train", "time/rollout", "time/scale_switch")
SKIP = 2  # warm-up iterations left out of the medians


@contextmanager
def measurement_lock():
    """The lock `flock /tmp/inflow_measure.lock <command>` takes: recorded measurements never overlap."""
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return {k: [e.value for e in events.Scalars(k)] for k in KEYS if k in tags}


def run(config_name: str, overrides: list[str]) -> dict[str, float]:
    """One training run under the lock; the medians of its iterations after the warm-up."""
    from embodied.compose import load_config
    from embodied.train import train

    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as out:
        config, tree = load_config(config_name, [*overrides, f"run.output_dir={out}"])
        with measurement_lock():
            start_load, started = load(), time.perf_counter()
            train(config, tree)
            wall, end_load = time.perf_counter() - started, load()
        (run_dir,) = (Path(out) / config.run.name).iterdir()
        values = scalars(run_dir)
    result = {k: statistics.median(v[SKIP:] or v) for k, v in values.items()}
    return result | {"wall": wall, "load": f"{start_load} -> {end_load}"}


# -- the update alone: which way of using the freed core is fastest ---------------------------------------------
def real_batch(config, steps: int, path: str) -> None:
    """A training batch of the workload's own env and policy (`steps` chunk steps of all envs), saved."""
    import torch

    from embodied.trajectory import EnvStep, TrajectoryBuilder, build_train_batch
    from envs.base import make_env
    from policies.base import make_policy

    torch.manual_seed(0)
    with make_env(config.env.replace(num_workers=1)) as env:
        policy = make_policy(config.policy, env.spec)
        obs, builder = env.reset(seed=0), TrajectoryBuilder(0, version=0)
        for _ in range(steps):
            with torch.no_grad():
                out = policy.predict(obs)
            builder.add_output(out)
            obs, rewards, terms, truncs, _ = env.chunk_step(out.actions)
            valid = torch.ones_like(rewards, dtype=torch.bool)
            critic = None if out.values is None else torch.zeros(rewards.shape[0])
            builder.add_outcome(EnvStep(obs, rewards, terms, truncs, valid), critic)
        builder.add_bootstrap(None if out.values is None else torch.zeros(rewards.shape[0]))
    batch = build_train_batch(builder.build(), config.algorithm, config.env.group_size)
    torch.save({"batch": batch, "policy": policy.state_dict(), "spec": env.spec}, path)


def update_member(config, path: str, mechanism: str, member: int, port: int, repeats: int, results) -> None:
    """Times `ppo_update` on the saved batch: alone with 1 or 2 threads, or as one of two gloo members."""
    import torch
    import torch.distributed as dist

    from embodied.scaling import DataParallelCollectives
    from embodied.training import Collectives, build_optimizer, ppo_update
    from policies.base import make_policy

    saved = torch.load(path, weights_only=False)
    torch.set_num_threads(2 if mechanism == "threads" else 1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [0, 1] if mechanism == "threads" else [member])
    comm = Collectives()
    if mechanism == "ranks":
        store = dist.TCPStore("127.0.0.1", port, 2, member == 0)
        comm = DataParallelCollectives(Collectives(), dist.ProcessGroupGloo(store, member, 2), member, 2)
    policy = make_policy(config.policy, saved["spec"])
    policy.load_state_dict(saved["policy"])
    optimizer = build_optimizer(policy, config.actor)
    actor = config.actor.replace(target_kl=None)
    seconds = []
    for i in range(repeats + 1):
        if mechanism == "ranks":
            comm.begin(saved["batch"].version)
        start = time.perf_counter()
        ppo_update(
            policy, optimizer, saved["batch"], actor, config.algorithm, torch.Generator().manual_seed(i), comm
        )
        seconds.append(time.perf_counter() - start)
    results.put((member, statistics.median(seconds[1:])))


def update_only(workload: str, repeats: int) -> None:
    import multiprocessing as mp
    import socket

    from embodied.compose import load_config

    name, _, extra = WORKLOADS[workload]
    config, _ = load_config(name, [*extra, *QUIET])
    steps = config.rollout.num_steps
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/batch.pt"
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, 15)  # preparing is not measured: leave the cores to others
        real_batch(config, steps, path)
        os.setpriority(os.PRIO_PROCESS, 0, niceness)  # the timed processes start at the caller's priority
        rows = {}
        for mechanism, members in (("alone", 1), ("threads", 1), ("ranks", 2), ("alone", 1)):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            results = context.Queue()
            with measurement_lock():
                start_load = load()
                processes = [
                    context.Process(
                        target=update_member, args=(config, path, mechanism, m, port, repeats, results)
                    )
                    for m in range(members)
                ]
                for process in processes:
                    process.start()
                seconds = dict(results.get(timeout=1800) for _ in processes)[0]
                for process in processes:
                    process.join()
                end_load = load()
            rows.setdefault(mechanism, []).append((seconds, f"{start_load} -> {end_load}"))
            print(f"{workload} update {mechanism}: {seconds:.3f} s", flush=True)
    alone = statistics.median(s for s, _ in rows["alone"])
    print(
        f"\n{workload} ({name}): one update (ppo_update, {config.env.num_envs} envs x {steps} steps, "
        f"{config.actor.update_epochs} epochs x {config.actor.num_minibatches} mini-batches), median of {repeats}"
    )
    print("| how the update runs | seconds | vs alone, 1 thread | load |")
    print("|---|---|---|---|")
    labels = {
        "alone": "one process, 1 thread (off)",
        "threads": "one process, 2 threads (threads)",
        "ranks": "two processes of 1 thread, gloo (ranks)",
    }
    for mechanism, results in rows.items():
        for seconds, load_range in results:
            print(f"| {labels[mechanism]} | {seconds:.3f} | {alone / seconds:.2f}x | {load_range} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--iterations", type=int, default=None, help="per run (default: math 40, pushcube 12)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-only", action="store_true", help="time the update alone, by mechanism (no Ray)")
    p.add_argument("--repeats", type=int, default=5, help="--update-only: timed updates per mechanism")
    args = p.parse_args()
    if args.update_only:
        for workload in args.workloads:
            update_only(workload, args.repeats)
        return
    order = [v for v in ("off", "ranks", "ranks", "off", "threads", "static") if v in args.variants]
    for workload in args.workloads:
        name, steps, extra = WORKLOADS[workload]
        iterations = args.iterations or (40 if workload == "math" else 12)
        base = [*extra, *QUIET, f"run.total_env_steps={steps * iterations}", f"run.seed={args.seed}"]
        rows: dict[str, list[dict]] = {}
        for variant in order:
            result = run(name, [*base, *VARIANTS[variant]])
            rows.setdefault(variant, []).append(result)
            print(
                f"{workload} {variant}: "
                + "  ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                ),
                flush=True,
            )
        report(workload, name, iterations, rows)


def report(workload: str, name: str, iterations: int, rows: dict[str, list[dict]]) -> None:
    off = statistics.median(r["time/iteration"] for r in rows.get("off", [])) if "off" in rows else None
    print(
        f"\n{workload} ({name}, {iterations} iterations per run, medians of iterations {SKIP + 1}-{iterations})"
    )
    print(
        "| variant | run | load | iteration s | rollout s | train s | scale_switch s (% of iteration) | vs off |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, results in rows.items():
        for i, r in enumerate(results):
            switch = r.get("time/scale_switch")
            share = (
                f"{switch:.4f} ({100 * switch / r['time/iteration']:.1f} %)" if switch is not None else "-"
            )
            ratio = f"{off / r['time/iteration']:.2f}x" if off else "-"
            print(
                f"| {variant} | {i + 1} | {r['load']} | {r['time/iteration']:.3f} | {r['time/rollout']:.3f} | "
                f"{r['time/train']:.3f} | {share} | {ratio} |"
            )


if __name__ == "__main__":
    main()
