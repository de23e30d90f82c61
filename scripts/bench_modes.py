"""Rollout throughput of collocated vs disaggregated placement with pipeline_stages 1, 2, 4.

Env and rollout workers only (no training): ManiSkill PushCube-v1 with rgb observations and the `cnn` policy
at a width whose inference time is comparable to the env step, so that pipelining has something to overlap.

    collocated:     env and rollout workers on every slot (a worker pair per CPU core, taking turns)
    disaggregated:  the env worker on slot 0 (core 0), the rollout worker on slot 1 (core 1)

For each run it prints env steps/s, the measured stage times per chunk step (T_env: simulating all envs of an
env worker; T_infer: inferring all of a rollout worker's units), the speedup over running those stage times
one after the other, and the ideal pipelining bound (T_env + T_infer) / max(T_env, T_infer).

    python scripts/bench_modes.py                       # calibrates the CNN width, then runs all modes
    python scripts/bench_modes.py --channels 64,128,128 --stages 1 2 --modes disaggregated
    python scripts/bench_modes.py policy=... key=value  # any other config override (e.g. a VLA policy)
"""

from __future__ import annotations

import argparse
import time

import torch

MODES = {
    "collocated": [
        "cluster.num_slots=2",
        "cluster.component_placement.env=all",
        "cluster.component_placement.rollout=all",
    ],
    "disaggregated": [
        "cluster.num_slots=2",
        "cluster.component_placement.env=0",
        "cluster.component_placement.rollout=1",
    ],
}
WIDTHS = [(32, 64, 64), (64, 128, 128), (128, 256, 256), (256, 512, 512), (384, 768, 768), (512, 1024, 1024)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="maniskill_ppo_pushcube_rgb")
    p.add_argument("--envs", type=int, default=8, help="envs in all (per disaggregated env worker)")
    p.add_argument("--steps", type=int, default=24, help="chunk steps per timed rollout epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed rollout epochs per run (after one warm-up)")
    p.add_argument("--stages", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--channels", default="auto", help="CNN widths 'a,b,c', or auto (calibrate)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    return p.parse_args()


def calibrate(config, stage_envs: int) -> tuple[int, int, int]:
    """The CNN width whose inference on `stage_envs` observations takes about as long as one env step of
    `stage_envs` envs (both measured here, on one thread)."""
    from envs.base import make_env
    from policies.base import make_policy

    torch.set_num_threads(1)
    env = make_env(config.env.replace(num_envs=stage_envs, num_workers=1))
    try:
        obs = env.reset(seed=0)
        actions = torch.zeros(stage_envs, 1, env.spec.action_dim)
        env.chunk_step(actions)
        start = time.perf_counter()
        for _ in range(5):
            obs, *_ = env.chunk_step(actions)
        t_env = (time.perf_counter() - start) / 5
        best, best_gap = WIDTHS[0], float("inf")
        for width in WIDTHS:
            policy = make_policy(config.policy.replace(channels=width), env.spec)
            policy.predict(obs)
            start = time.perf_counter()
            for _ in range(5):
                policy.predict(obs)
            t_infer = (time.perf_counter() - start) / 5
            print(
                f"  calibration: channels {width}: infer {t_infer * 1e3:.1f} ms vs env step {t_env * 1e3:.1f} ms"
            )
            if abs(t_infer - t_env) < best_gap:
                best, best_gap = width, abs(t_infer - t_env)
    finally:
        env.close()
    return best


def run(base: list[str], mode: str, stages: int, epochs: int) -> dict[str, float]:
    from embodied.cluster import Cluster
    from embodied.components import Components
    from embodied.compose import load_config

    config, _ = load_config(base[0], [*base[1:], *MODES[mode], f"rollout.pipeline_stages={stages}"])
    cluster = Cluster(config.cluster, components=("env", "rollout"))
    try:
        workers = Components(cluster, config)
        workers.rollout_epoch()  # warm-up: first resets, lazy initialisation
        start = time.perf_counter()
        results = [workers.rollout_epoch() for _ in range(epochs)]
        seconds = time.perf_counter() - start
    finally:
        cluster.shutdown()
    steps = config.rollout.num_steps * epochs
    t_env = sum(r["sim_seconds"] for r in results) / steps
    t_infer = sum(r["infer_seconds"] for r in results) / steps
    t_step = seconds / steps
    return {
        "steps_per_s": sum(r["env_steps"] for r in results) / seconds,
        "t_env": t_env,
        "t_infer": t_infer,
        "speedup": (t_env + t_infer) / t_step,
        "bound": (t_env + t_infer) / max(t_env, t_infer),
    }


def main() -> None:
    args = parse_args()
    import ray

    from embodied.compose import load_config

    base = [
        args.config,
        f"env.num_envs={args.envs}",
        f"rollout.num_steps={args.steps}",
        "logger.wandb.mode=disabled",
        *args.overrides,
    ]
    if args.channels == "auto":
        config, _ = load_config(base[0], base[1:])
        channels = calibrate(config, args.envs // 2)
    else:
        channels = tuple(int(c) for c in args.channels.split(","))
    base.append(f"policy.channels=[{','.join(map(str, channels))}]")
    print(
        f"policy channels {channels}; {args.envs} envs; {args.steps} chunk steps x {args.epochs} epochs per run"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for mode in args.modes:
            for stages in args.stages:
                r = run(base, mode, stages, args.epochs)
                rows.append((mode, stages, r))
                print(f"  {mode:14s} stages {stages}: {r['steps_per_s']:6.1f} env steps/s", flush=True)
    finally:
        ray.shutdown()
    reference = rows[0][2]["steps_per_s"]
    print(
        f"\n| mode | pipeline_stages | env steps/s | vs {rows[0][0]} S={rows[0][1]} | T_env ms | T_infer ms | "
        "speedup over sequential stages | ideal bound | % of bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, stages, r in rows:
        print(
            f"| {mode} | {stages} | {r['steps_per_s']:.1f} | {r['steps_per_s'] / reference:.2f}x | "
            f"{r['t_env'] * 1e3:.0f} | {r['t_infer'] * 1e3:.0f} | {r['speedup']:.2f}x | {r['bound']:.2f}x | "
            f"{100 * r['speedup'] / r['bound']:.0f} % |"
        )


if __name__ == "__main__":
    main()
