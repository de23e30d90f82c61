"""The profiler of auto placement: a run's costs measured at start-up, on the real workers and the real config.

    measurement = measure(config)    # a short-lived cluster in the profiling placement; Ray stays up

It starts the run's own env, rollout and actor workers in the collocated placement (one of each per slot,
`rollout.pipeline_stages=1`; when the envs do not split that way, env + rollout on all slots with one actor
rank, or everything on one slot) and measures, in a bounded number of steps:

1. rollout: a warm-up epoch, then epochs of k1 < k2 <= 12 chunk steps, twice in turns (of T steps when
   T <= 2). The env workers' simulation seconds give the **env step time per env** (beside a rollout
   worker); the wall time, set against the cost model's cycle, gives the messages' cost per unit and chunk
   step with env and rollout worker on one compute unit, and the per-epoch overhead (resets, trajectories,
   advantages).
2. **inference time per batch size**: `predict` (train mode) on every unit size the candidates use, on
   observations of the env tiled to that size; one warm-up and three calls each (the median).
3. **training time per sample**: `minibatch_step` (the real update step, target KL off) on the last epoch's
   batch tiled to the real mini-batch size and to half of it, on all actor ranks (FSDP2 over every slot)
   and on a one-rank copy built on rank 0 (sharded as a one-rank run is: `embodied.fsdp.shard`), three
   times in turns after a warm-up (medians: a change of load hits both rank counts alike); t(m) = m x
   per-sample + per-step solves both.
4. **weight sync**: twice with all ranks (gather, load into every rollout worker); the one-rank sync is the
   copy's gather plus the rollout workers' load.
5. **memory per component**: each worker's resident memory (CPU; with its simulator processes) or peak GPU
   memory, and the policy's and optimizer's bytes, from which the cost model's linear memory terms follow.

6. **apart** (two or more slots): the same rollout epochs with one env worker on slot 0 and one rollout
   worker on slot 1: the env worker's simulation seconds there give the env step time per env on a core
   without a rollout worker (collocated, the two contend: its seconds there are the other env step time),
   and the wall time the messages' cost per unit and chunk step between two compute units.

Steps 2, 3 and 5 run inside the workers (`embodied.profiler_probes`). The workers are then stopped (their
weights took optimizer steps); the run starts fresh in the chosen placement. Everything is reported in the log
(`Measurement.lines`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from algorithms.schema import ConfigError
from embodied import cost_model
from embodied.config import TrainConfig
from embodied.cost_model import GIB, Candidate, Machine, MemoryProfile, Profile, Workload
from embodied.profiler_probes import latest_observations, memory_use, time_inference, time_training

MAX_PROFILE_STEPS = 12
MAX_PROFILE_SAMPLES = 256  # per timed mini-batch when the run's own has no micro-batch size
GPU_CONTEXT_BYTES = 0.5 * GIB  # a CUDA context, which torch's allocator does not count


def workload_of(config: TrainConfig) -> Workload:
    return Workload(
        num_envs=config.env.num_envs,
        num_steps=config.rollout.num_steps,
        group_size=config.env.group_size,
        update_epochs=config.actor.update_epochs,
        num_minibatches=config.actor.num_minibatches,
    )


# -- on the driver -------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """A profile, the machine and workload it applies to, and what the log says about it."""

    profile: Profile
    machine: Machine
    workload: Workload
    placement: Candidate
    seconds: float
    started_ray: bool  # the profiling started Ray (the run's cluster then owns it)
    lines: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # seconds of each profiling step


def _profiling_configs(config: TrainConfig) -> list[TrainConfig]:
    """The placements to profile in, in order of preference (the first whose envs split is used)."""
    base = config.replace(
        rollout=config.rollout.replace(pipeline_stages=1),
        algorithm=config.algorithm.replace(dynamic_sampling=False),
    )
    placements = [("all", "all", "all", None), ("all", "all", "0", None), ("0", "0", "0", 1)]
    return [
        base.replace(
            cluster=base.cluster.replace(
                auto=False,
                online_scaling=False,
                num_slots=slots,
                component_placement={"env": e, "rollout": r, "actor": a},
            )
        )
        for e, r, a, slots in placements
    ]


def _start(config: TrainConfig):
    """(cluster, workers, config) of the first profiling placement whose envs split over its workers."""
    from embodied.cluster import Cluster
    from embodied.components import Components

    last_error: ConfigError | None = None
    for candidate in _profiling_configs(config):
        cluster = Cluster(candidate.cluster)
        try:
            return cluster, Components(cluster, candidate), candidate
        except ConfigError as exc:
            last_error = exc
            cluster.started_ray = False  # keep Ray up for the next attempt (measure() stops it on failure)
            cluster.shutdown()
    raise ConfigError(f"no profiling placement fits this config: {last_error}")


def measure(config: TrainConfig, log: Callable[[str], None] = print) -> Measurement:
    """Profile `config` (see the module docstring). Ray stays up for the run; `started_ray` says whether
    this started it."""
    import ray

    began = time.perf_counter()
    had_ray = ray.is_initialized()
    try:
        cluster, workers, profiled = _start(config)
        try:
            result = _measure(cluster, workers, config, profiled)
        finally:
            cluster.started_ray = False  # keep Ray up: the run's cluster joins it
            cluster.shutdown()
        skipped = _measure_apart(result, profiled)
    except BaseException:
        if not had_ray:
            from embodied.cluster import stop_ray

            stop_ray()
        raise
    result.seconds = time.perf_counter() - began
    result.started_ray = not had_ray
    result.lines = [
        f"auto placement: profiled in {result.seconds:.1f} s, start-up included ({result.placement.name})",
        *_report(result.profile, result.machine),
    ]
    if skipped is not None:
        result.lines.append(
            f"  apart placement not profiled ({skipped}): messages between compute units as on one"
        )
    result.lines.append(
        "  profiling steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.phases.items())
    )
    for line in result.lines:
        log(line)
    return result


def _measure(cluster, workers, config: TrainConfig, profiled: TrainConfig) -> Measurement:
    slots = cluster.placement.slots
    here = Candidate(
        cluster.placement.num_slots, slots["env"], slots["rollout"], slots["actor"], pipeline_stages=1
    )
    workload = workload_of(config)
    machine = Machine(cores=max(1, int(cluster.num_cpus)), gpus=cluster.num_gpus)
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name], clock = now - clock, now

    workers.sync_weights()
    epochs = _rollout_epochs(workers, profiled, workload)
    lap("rollout epochs")
    env_per_env = _env_per_env(epochs, here, workload)
    valid, _ = cost_model.candidates(workload, machine)
    sizes = sorted(
        {workload.num_envs // (len(c.env) * c.pipeline_stages) for c in valid}
        | {workload.num_envs // len(here.env), workload.num_envs}
    )
    obs = workers.env.call("run", latest_observations, ranks=[0]).wait()[0]
    infer = workers.rollout.call("run", time_inference, obs, sizes, ranks=[0]).wait()[0]
    lap("inference")
    training = _training(workers, config, workload, len(here.actor))
    lap("training")
    sync = _weight_sync(workers, training)
    memory, machine = _memory(workers, workload, here, machine)
    lap("weight sync and memory")
    profile = Profile(env_per_env, infer, training["per_sample"], training["step"], sync, memory=memory)
    profile = _calibrate(profile, epochs, here, workload, machine)
    return Measurement(profile, machine, workload, here, 0.0, False, phases=phases)


def _rollout_epochs(
    workers, profiled: TrainConfig, workload: Workload
) -> list[tuple[int, dict, float, float]]:
    """(chunk steps, rollout result, rollout wall seconds, advantages wall seconds) of the timed epochs."""
    total = min(workload.num_steps, MAX_PROFILE_STEPS)
    lengths = [total] if total <= 2 else [max(1, total // 3), total]

    def epoch(steps: int) -> tuple[int, dict, float, float]:
        workers.config = profiled.replace(rollout=profiled.rollout.replace(num_steps=steps))
        start = time.perf_counter()
        result = workers.rollout_epoch()
        middle = time.perf_counter()
        workers.compute_advantages()
        return steps, result, middle - start, time.perf_counter() - middle

    epoch(lengths[0])  # warm-up: first resets, lazy initialisation
    return [
        epoch(k) for _ in range(2) for k in lengths
    ]  # in turns, so that a change of load hits every length


def _training(workers, config: TrainConfig, workload: Workload, ranks: int) -> dict[str, Any]:
    """Per-sample and per-step seconds by actor rank count (1 and the profiling placement's)."""

    def sizes(world: int) -> tuple[int, int]:
        real = max(1, workload.samples // (world * workload.num_minibatches))
        cap = 4 * config.actor.micro_batch_size if config.actor.micro_batch_size else MAX_PROFILE_SAMPLES
        large = max(2, min(real, cap))
        return large // 2, large

    results = workers.actor.call("run", time_training, {1: sizes(1), ranks: sizes(ranks)}).wait()
    first = results[0]
    counts = [r for r in first if isinstance(r, int)]
    return {
        "per_sample": {r: first[r][0] for r in counts},
        "step": {r: max(res[r][1] for res in results if r in res) for r in counts},
        "gather_1": first.get("gather_1"),
        "ranks": ranks,
    }


def _weight_sync(workers, training: dict[str, Any]) -> dict[int, float]:
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        workers.sync_weights()
        seconds.append(time.perf_counter() - start)
    ranks = training["ranks"]
    sync = {ranks: min(seconds)}
    if training["gather_1"] is not None:
        gather = workers.actor.timings.get("sync_weights", 0.0)
        sync[1] = max(0.0, min(seconds) - gather + training["gather_1"])
    return sync


def _memory(workers, workload: Workload, here: Candidate, machine: Machine) -> tuple[MemoryProfile, Machine]:
    """Memory terms from the workers' use, and the machine with its memory (a GPU's, or the RAM left plus
    what the profiling workers hold)."""
    use = {g.name: g.call("run", memory_use).wait() for g in (workers.env, workers.rollout, workers.actor)}
    on_gpu = machine.gpus > 0
    key = "gpu_peak" if on_gpu else "rss"
    rollout_state = statistics.median(u["state"] for u in use["rollout"])
    if on_gpu:
        process = GPU_CONTEXT_BYTES
        capacity = min(u["gpu_total"] for u in use["actor"])
    else:
        import psutil

        process = statistics.median(u["rss"] - u["state"] for u in use["rollout"])
        held = sum(u["rss"] for group in use.values() for u in group)
        capacity = psutil.virtual_memory().available + held
    env_used = max(u[key] for u in use["env"])
    actor_state = sum(u["state"] for u in use["actor"])
    actor_peak = max(u[key] for u in use["actor"])
    memory = MemoryProfile(
        process=process,
        env_per_env=max(0.0, env_used - (0.0 if on_gpu else process)) / (workload.num_envs / len(here.env)),
        policy=max(rollout_state, max(u[key] for u in use["rollout"]) - (0.0 if on_gpu else process)),
        actor_state=actor_state,
        actor_activations=max(0.0, actor_peak - (0.0 if on_gpu else process) - actor_state / len(here.actor)),
    )
    return memory, Machine(machine.cores, machine.gpus, capacity)


def _calibrate(profile: Profile, epochs, here: Candidate, workload: Workload, machine: Machine) -> Profile:
    """Messages per unit and chunk step, and the per-epoch overhead: the measured rollout wall time against
    the model's cycle without them (a line through the epochs of k1 and k2 chunk steps). In the collocated
    profiling placement each core holds `pipeline_stages` units whose env and rollout share it, so the
    messages of a unit are (cycle - model cycle) / stages; in the apart placement one unit's round trip is
    the cycle, and the same difference is the messages between two compute units."""
    from dataclasses import replace

    cycle, fixed = _cycle_and_fixed(profile, epochs, here, workload, machine)
    bare = replace(profile, unit_overhead=0.0, apart_overhead=0.0, epoch_overhead=0.0)
    model_cycle = cost_model.rollout_seconds(
        here, Workload(workload.num_envs, 1, workload.group_size), bare, machine
    )
    messages = max(0.0, (cycle - model_cycle) / here.pipeline_stages)
    advantages = statistics.median(adv for *_, adv in epochs)
    if _apart(here, machine):
        return replace(profile, apart_overhead=messages)
    return replace(profile, unit_overhead=messages, epoch_overhead=max(0.0, fixed) + advantages)


def _apart(c: Candidate, machine: Machine) -> bool:
    """Whether every unit's env and rollout worker are on different compute units (the apart placement)."""
    return not set(c.env) & set(c.rollout) and machine.compute_units > 1


def _cycle_and_fixed(profile: Profile, epochs, here: Candidate, workload: Workload, machine: Machine):
    """(seconds per chunk step, fixed seconds per epoch) of the epochs' wall times."""
    steps = np.array([k for k, *_ in epochs], dtype=float)
    walls = np.array([wall for _, _, wall, _ in epochs])
    if len(set(steps)) > 1:
        cycle, fixed = np.polyfit(steps, walls, 1)
        return float(cycle), float(fixed)
    one_step = Workload(workload.num_envs, 1, workload.group_size)
    cycle = cost_model.rollout_seconds(here, one_step, profile, machine) - profile.epoch_overhead
    return cycle, float(np.median(walls - steps * cycle))


def _env_per_env(epochs, here: Candidate, workload: Workload) -> float:
    n = workload.num_envs // len(here.env)
    return statistics.median(r["sim_seconds"] / (k * n) for k, r, _, _ in epochs)


def _measure_apart(result: Measurement, profiled: TrainConfig) -> str | None:
    """Step 6 of the module docstring: the apart placement's epochs give the env step time on a core without
    a rollout worker and the messages between compute units, into `result.profile`. Returns why it was not
    profiled, or None."""
    from dataclasses import replace

    from embodied.cluster import Cluster
    from embodied.components import Components

    if result.machine.compute_units < 2:
        return "one compute unit"
    began = time.perf_counter()
    apart_config = profiled.replace(
        cluster=profiled.cluster.replace(
            num_slots=2, component_placement={"env": "0", "rollout": "1", "actor": "0"}
        )
    )
    cluster = Cluster(apart_config.cluster)
    try:
        workers = Components(cluster, apart_config)
        workers.sync_weights()
        epochs = _rollout_epochs(workers, apart_config, result.workload)
    except ConfigError as exc:
        return str(exc)
    finally:
        cluster.started_ray = False
        cluster.shutdown()
    slots = cluster.placement.slots
    apart = Candidate(2, slots["env"], slots["rollout"], slots["actor"], pipeline_stages=1)
    profile = replace(result.profile, env_per_env_apart=_env_per_env(epochs, apart, result.workload))
    result.profile = _calibrate(profile, epochs, apart, result.workload, result.machine)
    result.phases["apart placement"] = time.perf_counter() - began
    return None


def _report(profile: Profile, machine: Machine) -> list[str]:
    ms = 1e3
    infer = ", ".join(f"{b}: {s * ms:.1f}" for b, s in sorted(profile.infer.items()))
    train = ", ".join(
        f"{r} rank{'s' if r > 1 else ''}: {profile.train_per_sample[r] * ms:.3f} ms/sample + "
        f"{profile.optimizer_step[r] * ms:.1f} ms/step"
        for r in sorted(profile.train_per_sample)
    )
    sync = ", ".join(
        f"{r} rank{'s' if r > 1 else ''}: {s * ms:.1f}" for r, s in sorted(profile.weight_sync.items())
    )
    m = profile.memory
    apart = (
        "not measured between two"
        if profile.apart_overhead is None
        else f"{profile.apart_overhead * ms:.2f} ms between two"
    )
    alone = (
        "alone not measured"
        if profile.env_per_env_apart is None
        else f"{profile.env_per_env_apart * ms:.3f} ms alone"
    )
    where = (
        f"{machine.gpus} GPU(s) of {machine.memory_bytes / GIB:.1f} GiB"
        if machine.gpus
        else (f"{machine.cores} CPU core(s), {machine.memory_bytes / GIB:.1f} GiB RAM for the workers")
    )
    return [
        f"  machine: {where} (pid {os.getpid()})",
        f"  env step: {profile.env_per_env * ms:.3f} ms per env beside a rollout worker, {alone}; messages per unit "
        f"and chunk step {profile.unit_overhead * ms:.2f} ms on one compute unit, {apart}; "
        f"{profile.epoch_overhead * ms:.1f} ms per epoch (resets, trajectories, advantages)",
        f"  inference ms by batch size: {infer}",
        f"  training: {train}",
        f"  weight sync ms: {sync}",
        f"  memory GiB: process {m.process / GIB:.2f}, env {m.env_per_env / GIB:.3f} per env, policy "
        f"{m.policy / GIB:.2f}, actor state {m.actor_state / GIB:.2f} (all ranks), activations "
        f"{m.actor_activations / GIB:.2f}",
    ]
