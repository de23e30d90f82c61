"""Env steps per second through the env API against raw simulator stepping, measured in the same run.

    python scripts/bench_env.py                       # ManiSkill PushCube-v1, state and rgb
    python scripts/bench_env.py --modes state --num-envs 8 --workers 2 --seconds 5 --rounds 3
    python scripts/bench_env.py --sims libero         # LIBERO libero_spatial task 0 (see its block)

ManiSkill block: for each observation mode,
  raw        gym.make(task) + step loop in this process (the baseline; resets on time limit / termination)
  api-1      the env API, 1 env in this process (make_env, num_workers=1), chunks of --chunk actions
  api-N      N envs in this process, stepped one after the other
  workers-N  N envs over --workers processes (ProcessVectorEnv), one message per worker per chunk
  async-N    gymnasium's AsyncVectorEnv over --workers processes, one message per step (for comparison)
Each measurement runs --seconds and the kinds take turns for --rounds rounds, so that load from other processes
hits all kinds alike; ratios are medians over rounds of the ratio within a round. The in-process kinds also
report steps per CPU second of this process, which other processes disturb less. Steps count env steps
actually simulated (not the idle rest of a chunk after an episode ended).
Goals: api-1 / raw >= 0.95 (overhead <= 5 %), workers-N / api-N >= 1.5 with 2 workers for state obs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

Stepper = Callable[[], int]  # runs a bit of simulation, returns the env steps it simulated


def timed(stepper: Stepper, seconds: float) -> tuple[float, float]:
    """(env steps per wall second, env steps per CPU second of this process) over about `seconds`."""
    steps, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        steps += stepper()
    return steps / (time.perf_counter() - wall), steps / max(time.process_time() - cpu, 1e-9)


# -- steppers ------------------------------------------------------------------------------------------------
def raw_maniskill(task: str, obs_mode: str, control_mode: str, image_size: int):
    import gymnasium as gym
    import mani_skill.envs  # noqa: F401

    kwargs = dict(obs_mode=obs_mode, control_mode=control_mode, sim_backend="physx_cpu", render_backend="cpu")
    if obs_mode == "rgb":
        kwargs["sensor_configs"] = dict(width=image_size, height=image_size)
    env = gym.make(task, **kwargs)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(256, *env.action_space.shape)).astype(np.float32)
    state = {"t": 0}

    def step() -> int:
        _, _, terminated, truncated, _ = env.step(actions[state["t"] % 256])
        state["t"] += 1
        if bool(terminated) or bool(truncated):
            env.reset()
        return 1

    return step, env.close


def api_stepper(config, chunk: int):
    from envs import make_env

    env = make_env(config)
    env.reset(seed=0)
    g = torch.Generator().manual_seed(0)
    low, high = torch.tensor(env.spec.action_low), torch.tensor(env.spec.action_high)
    actions = [
        low + (high - low) * torch.rand(env.num_envs, chunk, env.spec.action_dim, generator=g)
        for _ in range(8)
    ]
    state = {"t": 0}

    def step() -> int:
        _, _, terms, truncs, infos = env.chunk_step(actions[state["t"] % 8])
        state["t"] += 1
        ends = (terms | truncs).float().argmax(1) + 1
        return int(torch.where(infos["episode_done"], ends, torch.full_like(ends, chunk)).sum())

    return step, env.close


def async_gymnasium(task: str, obs_mode: str, control_mode: str, image_size: int, num_envs: int):
    import gymnasium as gym

    kwargs = dict(obs_mode=obs_mode, control_mode=control_mode, sim_backend="physx_cpu", render_backend="cpu")
    if obs_mode == "rgb":
        kwargs["sensor_configs"] = dict(width=image_size, height=image_size)
    env = gym.vector.AsyncVectorEnv([_GymFactory(task, kwargs)] * num_envs, context="spawn")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(64, *env.action_space.shape)).astype(np.float32)
    state = {"t": 0}

    def step() -> int:
        env.step(actions[state["t"] % 64])
        state["t"] += 1
        return num_envs

    return step, env.close


class _GymFactory:
    """A picklable env factory for AsyncVectorEnv workers (ManiSkill's own CPU wrapper, auto-reset by gym)."""

    def __init__(self, task: str, kwargs: dict) -> None:
        self.task, self.kwargs = task, kwargs

    def __call__(self):
        import gymnasium as gym
        import mani_skill.envs  # noqa: F401
        from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper

        import envs.maniskill  # noqa: F401  (the project's asset folder)

        return CPUGymWrapper(gym.make(self.task, **self.kwargs))


# -- the ManiSkill block -----------------------------------------------------------------------------------------
def bench_maniskill(args) -> list[str]:
    import envs.maniskill  # noqa: F401  (sets MS_ASSET_DIR before mani_skill is imported)

    lines = []
    for mode in args.modes:
        n = args.num_envs if mode == "state" else args.rgb_num_envs
        seconds = args.seconds if mode == "state" else args.seconds * 2
        rounds = args.rounds if mode == "state" else max(3, args.rounds // 2)
        samples = measure(maniskill_makers(args, mode, n), seconds, rounds)
        title = f"maniskill {args.task} {mode} {args.control_mode} chunk={args.chunk}"
        lines += report(title, samples, n, args, mode)
    return lines


def maniskill_makers(args, mode: str, n: int) -> dict[str, Callable]:
    from envs import EnvConfig

    base = {
        "name": "maniskill",
        "task": args.task,
        "obs_mode": mode,
        "control_mode": args.control_mode,
        "image_size": args.image_size,
    }

    def api(**overrides):
        return api_stepper(EnvConfig.from_dict({**base, **overrides}, path="env"), args.chunk)

    makers = {
        "raw": partial(raw_maniskill, args.task, mode, args.control_mode, args.image_size),
        "api-1": partial(api, num_envs=1),
        f"api-{n}": partial(api, num_envs=n),
        f"workers-{n}": partial(api, num_envs=n, num_workers=args.workers),
    }
    if args.async_baseline:
        makers[f"async-{n}"] = partial(
            async_gymnasium, args.task, mode, args.control_mode, args.image_size, n
        )
    return makers


def measure(makers: dict[str, Callable], seconds: float, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per kind, one (wall, cpu) rate per round; the kinds take turns within each round."""
    steppers = {}
    try:
        for name, make in makers.items():
            steppers[name] = make()
            timed(steppers[name][0], min(1.0, seconds / 2))  # warm-up
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
        for _ in range(rounds):
            for name, (step, _) in steppers.items():
                samples[name].append(timed(step, seconds))
        return samples
    finally:
        for _, close in steppers.values():
            close()


def ratio(samples: dict, a: str, b: str, cpu: bool = False) -> float:
    """Median over rounds of rate(a) / rate(b): each round's two figures were measured seconds apart."""
    k = 1 if cpu else 0
    return statistics.median(x[k] / y[k] for x, y in zip(samples[a], samples[b]))


def report(title: str, samples: dict, n: int, args, mode: str) -> list[str]:
    lines = [f"## {title} ({len(samples['raw'])} rounds)"]
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        lines.append(
            f"  {name:<12} {wall:9.1f} env steps/s (median; min {min(v[0] for v in values):.1f}, "
            f"max {max(v[0] for v in values):.1f})"
        )
    api, cpu_api = ratio(samples, "api-1", "raw"), ratio(samples, "api-1", "raw", cpu=True)
    verdict = "PASS" if 1 - api <= 0.05 else "FAIL"
    lines.append(
        f"  api-1 / raw            = {api:.3f} wall, {cpu_api:.3f} per CPU second  "
        f"(overhead {1 - api:+.1%}; goal <= 5 %: {verdict})"
    )
    speedup = ratio(samples, f"workers-{n}", f"api-{n}")
    goal = (
        f"; goal >= 1.5x: {'PASS' if speedup >= 1.5 else 'FAIL'}"
        if mode == "state" and args.workers == 2
        else ""
    )
    lines.append(
        f"  workers-{n} / api-{n}    = {speedup:.2f}x  ({args.workers} workers over 1 process{goal})"
    )
    lines.append(f"  workers-{n} / raw       = {ratio(samples, f'workers-{n}', 'raw'):.2f}x")
    if f"async-{n}" in samples:
        lines.append(
            f"  async-{n} / api-{n}      = {ratio(samples, f'async-{n}', f'api-{n}'):.2f}x  "
            "(gymnasium AsyncVectorEnv, one step per message)"
        )
    return lines


# -- the LIBERO block ------------------------------------------------------------------------------------------
# raw     LIBERO's own OffScreenRenderEnv stepped in this process (the baseline): hard reset with numpy's RNG
#         seeded 0, set_init_state(init_states[0]), 10 no-op settle steps, then env.step per action
# api-1   the env API, 1 env in this process, reset to initial state 0 (the same scene), chunk_step of --chunk
# Both follow the same trajectory (same scene, same actions) with both cameras, taking turns chunk by chunk
# (--chunk raw steps, then one API chunk), for LIBERO's scenes as shipped (no light casts a shadow) and with
# every light casting shadows. Ratios are of summed times, wall-clock and CPU of this process; the API's own
# share (chunk_step time outside LIBERO's env.step) is measured inside the same calls. Episodes never end
# (the time limit is out of reach); resets are timed apart: LIBERO's own loop (hard reset, set_init_state,
# 10 settle steps) against the API's reset.
def libero_config(args, shadows: bool, **overrides):
    from envs import EnvConfig

    base = {
        "name": "libero",
        "suite": args.libero_suite,
        "task_ids": [args.libero_task],
        "num_envs": 1,
        "image_size": args.libero_image_size,
        "shadows": shadows,
        "max_episode_steps": 10**6,
    }
    return EnvConfig.from_dict({**base, **overrides}, path="env")


def raw_libero_env(args, shadows: bool):
    """LIBERO's own env at initial state 0 after its usual start (the scene the API's initial state 0 gives)."""
    from envs.libero.convert import NO_OP_ACTION
    from envs.libero.offline import load_libero
    from envs.libero.tasks import load_task

    task, size = load_task(args.libero_suite, args.libero_task), args.libero_image_size
    env = load_libero().OffScreenRenderEnv(
        bddl_file_name=task.bddl_file, camera_heights=size, camera_widths=size
    )
    np.random.seed(0)  # LIBERO places the fixtures from numpy's global RNG; the API seeds it with the id
    env.reset()  # a hard reset rebuilds the model: shadows are switched on after it
    if shadows:
        env.sim.model.light_castshadow[:] = 1
    env.set_init_state(task.init_states[0])
    for _ in range(10):
        env.step(NO_OP_ACTION)
    return env


class _Clock:
    """Summed wall-clock and CPU seconds of the blocks it timed."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def time(self, fn, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args)
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


def bench_libero_pair(args, shadows: bool) -> dict[str, float]:
    """Raw and API in turns over the same trajectory; steps/s and the ratios."""
    from envs import make_env

    raw, api = raw_libero_env(args, shadows), make_env(libero_config(args, shadows))
    try:
        api.reset(initial_state_ids=[0])
        scene = api.batch.sims[0].env
        clocks = {"raw": _Clock(), "api": _Clock(), "inside": _Clock()}
        libero_step = scene.step
        scene.step = lambda action: clocks["inside"].time(
            libero_step, action
        )  # LIBERO's part of the API's time
        raw_gl = raw.sim._render_context_offscreen.gl_ctx

        def raw_step(action):
            raw_gl.make_current()  # several scenes share this process, each renders in its own context
            raw.step(action)

        rng = np.random.default_rng(0)
        for i in range(args.libero_chunks + 1):  # the first pair warms up
            chunk = torch.from_numpy(rng.uniform(-1, 1, size=(1, args.chunk, 7))).float()
            if i == 1:
                clocks = {name: _Clock() for name in clocks}
            for action in chunk[0].double().numpy():
                clocks["raw"].time(raw_step, action)
            clocks["api"].time(api.chunk_step, chunk)
    finally:
        raw.close()
        api.close()
    steps = args.libero_chunks * args.chunk
    raw_c, api_c, inside = clocks["raw"], clocks["api"], clocks["inside"]
    return {
        "raw": steps / raw_c.wall,
        "api": steps / api_c.wall,
        "wall": raw_c.wall / api_c.wall,
        "cpu": raw_c.cpu / api_c.cpu,
        "own": 1 - inside.cpu / api_c.cpu,
    }


def libero_reset_seconds(args, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one reset: LIBERO's own loop (hard reset + set_init_state + 10 settle steps), the API."""
    from envs import make_env
    from envs.libero.convert import NO_OP_ACTION
    from envs.libero.offline import load_libero
    from envs.libero.tasks import load_task

    task, size = load_task(args.libero_suite, args.libero_task), args.libero_image_size
    raw = load_libero().OffScreenRenderEnv(
        bddl_file_name=task.bddl_file, camera_heights=size, camera_widths=size
    )
    api = make_env(libero_config(args, shadows=False))
    raw_times, api_times = [], []
    try:
        for k in range(repeats):
            start = time.perf_counter()
            raw.reset()
            raw.set_init_state(task.init_states[k])
            for _ in range(10):
                raw.step(NO_OP_ACTION)
            raw_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            api.reset(initial_state_ids=[k])
            api_times.append(time.perf_counter() - start)
    finally:
        raw.close()
        api.close()
    return statistics.median(raw_times), statistics.median(api_times)


def bench_libero(args) -> list[str]:
    import envs.libero  # noqa: F401  (headless rendering and LIBERO's config file before LIBERO is imported)

    size = args.libero_image_size
    lines = [
        f"## libero {args.libero_suite} task {args.libero_task}, {size}x{size} agent view + wrist, "
        f"chunk={args.chunk}, {args.libero_chunks} chunks each, in turns"
    ]
    rates = {}
    for shadows in (False, True):
        tag = "shadows" if shadows else "no shadows"
        r = rates[shadows] = bench_libero_pair(args, shadows)
        verdict = "PASS" if 1 - r["wall"] <= 0.05 else "FAIL"
        lines += [
            f"  {tag:<10}  raw {r['raw']:6.2f} env steps/s, api-1 {r['api']:6.2f} env steps/s",
            f"  {tag:<10}  api-1 / raw = {r['wall']:.3f} wall, {r['cpu']:.3f} per CPU second "
            f"(overhead {1 - r['wall']:+.1%}; goal <= 5 %: {verdict}); the API's own share of its CPU time "
            f"{r['own']:.2%}",
        ]
    lines.append(f"  raw, no shadows / shadows = {rates[False]['raw'] / rates[True]['raw']:.2f}x")
    raw_reset, api_reset = libero_reset_seconds(args)
    lines.append(
        f"  reset: LIBERO's own loop {raw_reset:.2f} s, the API {api_reset:.2f} s ({raw_reset / api_reset:.1f}x)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="PushCube-v1")
    parser.add_argument("--modes", nargs="+", default=["state", "rgb"], choices=["state", "rgb"])
    parser.add_argument("--control-mode", default="pd_joint_delta_pos")
    parser.add_argument("--num-envs", type=int, default=8, help="N for state observations")
    parser.add_argument("--rgb-num-envs", type=int, default=2, help="N for rgb observations")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=8, help="actions per chunk_step")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (rgb: twice this)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of turns (rgb: half, at least 3)")
    parser.add_argument("--no-async-baseline", dest="async_baseline", action="store_false")
    parser.add_argument("--sims", nargs="+", default=["maniskill"], choices=["maniskill", "libero"])
    parser.add_argument("--libero-suite", default="libero_spatial")
    parser.add_argument("--libero-task", type=int, default=0)
    parser.add_argument("--libero-image-size", type=int, default=128)
    parser.add_argument("--libero-chunks", type=int, default=12, help="LIBERO: chunks of each kind, in turns")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(
        f"cores: {os.cpu_count()}, load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True
    )
    lines = bench_maniskill(args) if "maniskill" in args.sims else []
    lines += bench_libero(args) if "libero" in args.sims else []
    print("\n".join(lines))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":  # worker processes start with spawn and re-import this file
    main()
