"""The cost model of auto placement: the iteration time of a placement, predicted from measured costs.

Pure Python (no Ray, no torch), so it is tested on synthetic profiles. `embodied.profiler` measures a
`Profile` on the real workers; `embodied.plan` generates the candidates, ranks them and runs the best.

One iteration is three phases that follow each other (the runtime is synchronous):

    rollout   T chunk steps; every env worker steps its `pipeline_stages` units, every rollout worker infers
              the units it serves. Per chunk step the envs of a unit take `te` (simulation), its inference
              `ti`, and the two messages between them `o`; te is measured twice, on a compute unit that
              also runs a rollout worker (they contend for it) and on one where no rollout worker runs; the
              step takes
                  cycle = max(busiest compute unit's load,  te + ti + o)
              where a compute unit is a GPU, or on a CPU-only machine a core: workers whose slots share a core
              take turns on it, so their loads add up, and workers on different cores overlap. The messages
              are load, not only latency: a unit whose env and rollout worker share a compute unit charges
              its `o` (measured in the collocated profiling placement: Ray's calls, the processes' wake-ups
              and the contention of the two on one core) to that unit, so more pipeline stages there cost
              more; a unit whose two workers are apart charges the `o` measured that way (a profiling
              placement with env and rollout on different slots) half to each side. te + ti + o is one
              unit's round trip, which no pipelining hides.
                  rollout = T * cycle + epoch overhead (resets, trajectories to the actor, advantages)
    train     update_epochs x num_minibatches optimizer steps; with A actor ranks each computes B/A of the
              B = num_envs x T samples:
                  train = epochs * (B/A * t_sample[A] + num_minibatches * t_step[A]) * ranks sharing a core
              t_sample and t_step are measured at 1 rank and at all slots (FSDP2's communication is in them);
              between the two the nearest measured rank count stands in.
    sync      the measured weight sync of A actor ranks (gather on rank 0, load into the rollout workers).

Memory: a candidate fits when every GPU holds what its workers need (on GPUs), or when the machine's RAM
holds all workers (CPU-only: one shared pool). What a worker needs is linear in what it holds: an env worker
its envs, a rollout worker the policy, an actor rank its 1/A of the weights, gradients and optimizer state
plus a micro-batch's activations. Candidates that do not fit are dropped with the reason.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from algorithms.schema import ConfigError
from embodied.slots import placement_mode, slot_cores

GIB = 1024**3
PIPELINE_STAGES = (1, 2, 4)


# -- inputs --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """What one iteration processes (from the run config)."""

    num_envs: int  # N, all env workers together
    num_steps: int  # T, chunk steps per rollout epoch
    group_size: int = 1
    update_epochs: int = 1
    num_minibatches: int = 1

    @property
    def samples(self) -> int:
        return self.num_envs * self.num_steps


@dataclass(frozen=True)
class Machine:
    """What the cluster offers: slots are GPUs, or CPU cores on a machine without GPUs."""

    cores: int
    gpus: int = 0
    memory_bytes: float = float("inf")  # RAM for all workers (CPU-only), or memory of one GPU (GPUs)

    @property
    def compute_units(self) -> int:
        return self.gpus or self.cores


@dataclass(frozen=True)
class MemoryProfile:
    """Bytes each kind of worker needs; on GPUs the GPU memory, on CPUs resident memory (RSS)."""

    process: float = 0.0  # a worker process with the runtime loaded (CPU: interpreter, torch; GPU: context)
    env_per_env: float = 0.0
    policy: float = 0.0  # a rollout worker's policy (weights and inference activations)
    actor_state: float = 0.0  # weights + gradients + optimizer state of the whole policy, sharded over ranks
    actor_activations: float = 0.0  # one micro-batch's activations on one rank


@dataclass(frozen=True)
class Profile:
    """Measured costs, in seconds, each on one slot (one core, or one GPU)."""

    env_per_env: float  # one chunk step of one env, on a compute unit that also runs a rollout worker
    infer: dict[int, float]  # batch size -> one `predict` call
    train_per_sample: dict[int, float]  # actor ranks -> forward + backward of one sample, per rank
    optimizer_step: dict[int, float]  # actor ranks -> one optimizer step (and the gradient reduction)
    weight_sync: dict[int, float]  # actor ranks -> gather + load into the rollout workers
    # per unit and chunk step, the messages with env and rollout worker on one compute unit, and on two
    # (None: as on one)
    unit_overhead: float = 0.0
    apart_overhead: float | None = None
    env_per_env_apart: float | None = None  # env_per_env where no rollout worker runs (None: env_per_env)
    epoch_overhead: float = 0.0  # per rollout epoch: resets, trajectories to the actor, advantages
    memory: MemoryProfile = field(default_factory=MemoryProfile)

    def infer_seconds(self, batch: int) -> float:
        """One `predict` call on `batch` observations: interpolated between measured sizes (linear, through
        the two nearest), extrapolated from the last two beyond them."""
        sizes = sorted(self.infer)
        if batch in self.infer:
            return self.infer[batch]
        if len(sizes) == 1:
            return self.infer[sizes[0]] * batch / sizes[0]
        i = min(max(bisect.bisect_left(sizes, batch), 1), len(sizes) - 1)
        lo, hi = sizes[i - 1], sizes[i]
        slope = (self.infer[hi] - self.infer[lo]) / (hi - lo)
        return max(0.0, self.infer[lo] + slope * (batch - lo))


def _nearest(table: dict[int, float], ranks: int, name: str) -> float:
    if not table:
        raise ValueError(f"the profile has no {name} measurement")
    if ranks in table:
        return table[ranks]
    if ranks > 1:  # several ranks communicate: the multi-rank measurement, not the single-rank one
        multi = [r for r in table if r > 1] or list(table)
        return table[min(multi, key=lambda r: abs(r - ranks))]
    return table[min(table)]


# -- candidates ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A placement (slots per component) and pipeline depth."""

    num_slots: int
    env: tuple[int, ...]
    rollout: tuple[int, ...]
    actor: tuple[int, ...]
    pipeline_stages: int

    @property
    def mode(self) -> str:
        return placement_mode((self.env, self.rollout, self.actor))

    def slot_spec(self, component: str) -> str:
        """The `cluster.component_placement` value: all, a range a-b, or a list."""
        slots = getattr(self, component)
        if len(slots) == self.num_slots:
            return "all"
        if len(slots) > 1 and slots == tuple(range(slots[0], slots[-1] + 1)):
            return f"{slots[0]}-{slots[-1]}"
        return ",".join(map(str, slots))

    @property
    def name(self) -> str:
        parts = "/".join(self.slot_spec(c) for c in ("env", "rollout", "actor"))
        return f"{self.mode} env/rollout/actor={parts} slots={self.num_slots} stages={self.pipeline_stages}"


def _blocks(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Contiguous slot blocks of the given sizes, from slot 0."""
    out, start = [], 0
    for size in sizes:
        out.append(tuple(range(start, start + size)))
        start += size
    return out


def placements(machine: Machine) -> list[tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(num_slots, env, rollout, actor) of every placement family, one slot per compute unit:
    collocated; env + rollout on all slots with the actor on slot 0 (one rank); env and rollout disjoint
    (each split) with the actor on all slots or on slot 0; disaggregated (each split of the slots into
    env, rollout and actor blocks). Without GPUs and with fewer than 3 cores, disaggregated uses 3 slots
    that share cores round-robin (the actor's slot shares a core with the env's; they never run together)."""
    s = machine.compute_units
    every = tuple(range(s))
    out = [(s, every, every, every)]
    if s == 1:
        return out
    out.append((s, every, every, (0,)))
    for e in range(1, s):
        env, rollout = _blocks((e, s - e))
        out.append((s, env, rollout, every))
        if s >= 3 or machine.gpus:
            out.append((s, env, rollout, (0,)))
    if s >= 3:
        for e in range(1, s - 1):
            for r in range(1, s - e):
                out.append((s, *_blocks((e, r, s - e - r))))
    elif not machine.gpus:
        out.append((3, (0,), (1,), (2,)))
    return out


def candidates(
    workload: Workload, machine: Machine, stages: Iterable[int] = PIPELINE_STAGES
) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Every placement family x pipeline depth; returns (valid candidates, [(invalid candidate, reason)]):
    a candidate is invalid when its envs do not split into whole groups over its workers and stages."""
    from embodied.routing import plan_rollout  # the runtime's own rule (routing may import the env config)

    valid, invalid = [], []
    for num_slots, env, rollout, actor in placements(machine):
        for s in stages:
            candidate = Candidate(num_slots, env, rollout, actor, s)
            try:
                plan_rollout(workload.num_envs, workload.group_size, len(env), s, len(rollout), len(actor))
            except ConfigError as exc:
                invalid.append((candidate, str(exc)))
                continue
            valid.append(candidate)
    return valid, invalid


# -- prediction ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    candidate: Candidate
    rollout: float
    train: float
    sync: float
    memory_bytes: float  # what the most loaded GPU (or the whole machine, CPU-only) needs
    does_not_fit: str | None = None  # why, when it does not fit in memory

    @property
    def iteration(self) -> float:
        return self.rollout + self.train + self.sync


def _compute_unit(slot: int, num_slots: int, machine: Machine) -> int:
    """The GPU of a slot, or its core (slots share cores round-robin when there are more slots than cores)."""
    if machine.gpus:
        return slot
    return slot_cores(slot, num_slots, list(range(machine.cores)))[0]


def rollout_seconds(c: Candidate, w: Workload, p: Profile, machine: Machine) -> float:
    """T chunk steps of the pipelined rollout plus the epoch overhead (see the module docstring). Unit u is
    stepped by env worker u // stages and inferred by rollout worker u * rollout workers // units, the
    runtime's routing (`embodied.routing.plan_rollout`)."""
    units = len(c.env) * c.pipeline_stages
    n = w.num_envs // units
    ti = p.infer_seconds(n)
    apart = p.unit_overhead if p.apart_overhead is None else p.apart_overhead
    inferring = {_compute_unit(s, c.num_slots, machine) for s in c.rollout}
    load: dict[int, float] = {}
    round_trip = 0.0
    for u in range(units):
        env_unit = _compute_unit(c.env[u // c.pipeline_stages], c.num_slots, machine)
        rollout_unit = _compute_unit(c.rollout[u * len(c.rollout) // units], c.num_slots, machine)
        alone = env_unit not in inferring and p.env_per_env_apart is not None
        te = n * (p.env_per_env_apart if alone else p.env_per_env)
        messages = p.unit_overhead if env_unit == rollout_unit else apart
        load[env_unit] = load.get(env_unit, 0.0) + te + messages / 2
        load[rollout_unit] = load.get(rollout_unit, 0.0) + ti + messages / 2
        round_trip = max(round_trip, te + ti + messages)
    cycle = max(max(load.values()), round_trip)
    return w.num_steps * cycle + p.epoch_overhead


def train_seconds(c: Candidate, w: Workload, p: Profile, machine: Machine) -> float:
    ranks = len(c.actor)
    per_sample = _nearest(p.train_per_sample, ranks, "training time per sample")
    step = _nearest(p.optimizer_step, ranks, "optimizer step")
    units = [_compute_unit(s, c.num_slots, machine) for s in c.actor]
    sharing = max(units.count(u) for u in units)  # actor ranks that take turns on one core
    return w.update_epochs * (w.samples / ranks * per_sample + w.num_minibatches * step) * sharing


def memory_needed(c: Candidate, w: Workload, p: Profile, machine: Machine) -> tuple[float, str | None]:
    """(bytes the most loaded GPU or the whole machine needs, None) or (bytes, why it does not fit)."""
    m = p.memory
    env_worker = m.process + m.env_per_env * w.num_envs / len(c.env)
    rollout_worker = m.process + m.policy
    actor_rank = m.process + m.actor_state / len(c.actor) + m.actor_activations
    if not machine.gpus:
        parts = {
            "env": len(c.env) * env_worker,
            "rollout": len(c.rollout) * rollout_worker,
            "actor": len(c.actor) * actor_rank,
        }
        total = sum(parts.values())
        if total <= machine.memory_bytes:
            return total, None
        detail = ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items())
        biggest = max(parts, key=parts.get)
        return total, (
            f"needs {total / GIB:.1f} GiB of RAM ({detail}; the {biggest} workers most), "
            f"{machine.memory_bytes / GIB:.1f} GiB available"
        )
    worst, reason = 0.0, None
    for slot in range(c.num_slots):
        held = {
            "env": env_worker if slot in c.env else 0.0,
            "rollout": rollout_worker if slot in c.rollout else 0.0,
            "actor": actor_rank if slot in c.actor else 0.0,
        }
        if held["rollout"] and held["actor"]:  # collocated on a GPU: the idle one is offloaded to CPU
            held["rollout" if held["rollout"] < held["actor"] else "actor"] = 0.0
        need = sum(held.values())
        worst = max(worst, need)
        if need > machine.memory_bytes and reason is None:
            biggest = max(held, key=held.get)
            reason = (
                f"the {biggest} worker on GPU {slot} needs {held[biggest] / GIB:.1f} GiB "
                f"({need / GIB:.1f} GiB with the others there), a GPU has {machine.memory_bytes / GIB:.1f} GiB"
            )
    return worst, reason


def predict(c: Candidate, w: Workload, p: Profile, machine: Machine) -> Prediction:
    memory, reason = memory_needed(c, w, p, machine)
    return Prediction(
        c,
        rollout_seconds(c, w, p, machine),
        train_seconds(c, w, p, machine),
        _nearest(p.weight_sync, len(c.actor), "weight sync"),
        memory,
        reason,
    )


def rank(cands: Iterable[Candidate], w: Workload, p: Profile, machine: Machine) -> list[Prediction]:
    """Predictions, fastest first; those that do not fit in memory last."""
    predictions = [predict(c, w, p, machine) for c in cands]
    return sorted(predictions, key=lambda x: (x.does_not_fit is not None, x.iteration))


def best(predictions: Sequence[Prediction]) -> Prediction:
    """The fastest prediction that fits, or a ConfigError naming what the smallest candidate needs."""
    fitting = [x for x in predictions if x.does_not_fit is None]
    if fitting:
        return min(fitting, key=lambda x: x.iteration)
    if not predictions:
        raise ConfigError("no placement is possible for this config (see the invalid candidates)")
    smallest = min(predictions, key=lambda x: x.memory_bytes)
    raise ConfigError(
        f"no placement fits in memory: the smallest, {smallest.candidate.name}, {smallest.does_not_fit}; "
        "lower env.num_envs or actor.micro_batch_size, use a smaller policy, or add GPUs"
    )


def table(predictions: Sequence[Prediction], chosen: Prediction | None = None) -> str:
    """A markdown table of the predictions (seconds per iteration and per phase)."""
    lines = [
        "| | placement | iteration s | rollout s | train s | sync s | memory GiB | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in predictions:
        mark = "**best**" if chosen is not None and x is chosen else ""
        lines.append(
            f"| {mark} | {x.candidate.name} | {x.iteration:.3f} | {x.rollout:.3f} | {x.train:.3f} | "
            f"{x.sync:.3f} | {x.memory_bytes / GIB:.2f} | {x.does_not_fit or ''} |"
        )
    return "\n".join(lines)
