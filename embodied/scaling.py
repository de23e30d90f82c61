"""Online scaling (`cluster.online_scaling=true`): the slots rollout holds join training for each update.

Rollout and training take turns (the update needs the whole rollout: batch-normalised advantages and each
mini-batch's loss denominators are known only then), so while the actor trains, the slots that hold only
env and rollout workers idle. With online scaling the update runs on them too and they return to rollout
with the new weights. Two ways on a machine without GPUs (`cluster.scaling_cores_as`):

- `ranks` (default): the rollout workers on slots without an actor rank become data-parallel members of the
  update. The actor ships them its batch and its shuffling generator's state (one object per update); every
  member walks the same epochs and mini-batches, computes a share of each mini-batch's micro-batches (split
  further when there are fewer micro-batches than members), the gradients and metric sums are summed over a
  gloo group of the members (`DataParallelCollectives`), the actor clips and steps, and broadcasts the new
  parameters, so each member holds them before the next mini-batch. The loss denominators are the whole
  mini-batch's on every member, so the summed gradient is the one-process gradient (up to float summation
  order). Needs one actor rank (an actor over several slots would need a hybrid-sharded group).
- `threads`: the actor rank runs its update on the cores of all slots (affinity and torch threads) and
  returns to its own before the next rollout. Under other load the OpenMP threads wait on each other
  (measured much slower on the 2-core development machine: docs/runtime.md, "Online scaling").

On GPUs the freed slots would become extra FSDP ranks; that needs a GPU to build and is not implemented.

On-policy: every trajectory and every micro-batch carries the weight version that collected it
(`Trajectory.version`, `TrainBatch.version`); every member checks, before its first forward pass, that its
weights are that version (the rollout workers' own weights before the update, the actor's before its step),
and records (update, member, data version, weights version, samples) per micro-batch: `records()`.

`time/scale_switch` is the time the slots take to change hands per update: shipping the batch and starting
the members' share (ranks), or moving the actor's threads there and back (threads). `SlotTimeline` keeps
which component held which slots when (`slots.json` in the run folder; `scripts/plot_slots.py` draws it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from algorithms.schema import ConfigError
from embodied.training import Collectives
from embodied.trajectory import TrainBatch
from embodied.worker import wait_all


# -- the data-parallel members ---------------------------------------------------------------------------------
def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters in name order (the same on the actor's FSDP2 module and a rollout copy)."""
    return [p for _, p in sorted(model.named_parameters()) if p.requires_grad]


def _local(t: torch.Tensor) -> torch.Tensor:
    """A one-rank FSDP2 DTensor's local tensor (the whole parameter); a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


class DataParallelCollectives(Collectives):
    """`Collectives` of one member of the update's data-parallel group (member 0: the actor rank)."""

    def __init__(self, base: Collectives, group, member: int, members: int) -> None:
        super().__init__()
        self.base, self.group, self.member, self.members = base, group, member, members
        self.weights_version = -1
        self.update = 0
        self.log: list[dict[str, int]] = []

    def begin(self, weights_version: int) -> None:
        """A new update with this member's weights at `weights_version`."""
        self.weights_version = weights_version
        self.update += 1

    def mean(self, value: float) -> float:
        return self.base.mean(value)

    def gradient_sync(self, model: torch.nn.Module, enabled: bool) -> None:
        self.base.gradient_sync(model, enabled)

    def share(self, parts: list[TrainBatch]) -> list[tuple[int, TrainBatch]]:
        if len(parts) < self.members:  # a part per member at least: split the parts further
            pieces = -(-self.members // len(parts))
            parts = [p.select(i) for p in parts for i in torch.arange(len(p)).tensor_split(pieces) if len(i)]
        mine = [(k, p) for k, p in enumerate(parts) if k % self.members == self.member]
        for _, part in mine:
            if part.version != self.weights_version:
                raise RuntimeError(
                    f"online scaling member {self.member} holds weights v{self.weights_version} but its "
                    f"micro-batch was collected with v{part.version}: the update would be off-policy"
                )
            self.log.append(
                {
                    "update": self.update,
                    "member": self.member,
                    "data_version": part.version,
                    "weights_version": self.weights_version,
                    "samples": len(part),
                }
            )
        return mine

    def combine(self, model: torch.nn.Module, sums: dict[str, float]) -> None:
        params = _trainable(model)
        has_grad = torch.tensor([float(p.grad is not None) for p in params])
        grads = [_local(p.grad) if p.grad is not None else torch.zeros_like(_local(p)) for p in params]
        metrics = torch.tensor([sums[k] for k in sorted(sums)], dtype=torch.float32)
        flat = torch.cat([g.reshape(-1) for g in grads] + [has_grad, metrics])
        self.group.allreduce([flat]).wait()
        offset = 0
        for p, g, flag in zip(params, grads, flat[-len(metrics) - len(params) : len(flat) - len(metrics)]):
            summed = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()
            if flag == 0:  # no member's micro-batches reached it: it stays without a gradient, as alone
                continue
            if p.grad is None:  # the actor (member 0) always computes a share, so this is a plain copy
                p.grad = summed.clone()
            else:
                g.copy_(summed)
        for k, value in zip(sorted(sums), flat[len(flat) - len(metrics) :].tolist()):
            sums[k] = value

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> float:
        """Member 0 clips and steps; then one broadcast carries its parameters and gradient norm to all."""
        params = [_local(p) for group in optimizer.param_groups for p in group["params"]]
        norm = super().step(optimizer, max_grad_norm) if self.member == 0 else 0.0
        if self.member:
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in params] + [torch.tensor([norm])])
            self.group.broadcast(flat, 0).wait()
            if self.member:
                offset = 0
                for p in params:
                    p.copy_(flat[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
        return float(flat[-1])


def _group(host: str, port: int, member: int, members: int):
    """A gloo group of the update's members, apart from the actor's FSDP2 process group."""
    import torch.distributed as dist

    store = dist.TCPStore(host, port, members, member == 0, wait_for_workers=False)
    return dist.ProcessGroupGloo(dist.PrefixStore("online_scaling", store), member, members)


# -- on the workers (through Worker.run) -----------------------------------------------------------------------
def join_as_actor(worker, host: str, port: int, members: int) -> None:
    """Actor rank 0: member 0; its update's collectives become the data-parallel ones."""
    worker.comm = DataParallelCollectives(worker.comm, _group(host, port, 0, members), 0, members)


def join_as_helper(worker, host: str, port: int, member: int, members: int, actor_config, algorithm) -> None:
    """A rollout worker on a freed slot: a member of every update."""
    from embodied.training import build_optimizer

    worker.scaling = DataParallelCollectives(
        Collectives(), _group(host, port, member, members), member, members
    )
    # never stepped (the actor steps and broadcasts), so it holds no state: it zeroes the gradients
    worker.scaling_optimizer = build_optimizer(worker.policy, actor_config)
    worker.scaling_config = (actor_config, algorithm)


def update_payload(worker) -> dict[str, Any]:
    """Actor rank 0, before its update: what the members need to walk the same mini-batches."""
    worker.comm.begin(worker.version)
    return {"batch": worker.batch, "generator": worker.generator.get_state(), "version": worker.version}


def help_update(worker, payload: dict[str, Any]) -> dict[str, Any]:
    """A member's share of the update (the actor's `train` runs alongside); returns when the wall clock saw it
    start computing and finish."""
    from embodied.training import ppo_update

    joined = time.time()
    actor_config, algorithm = worker.scaling_config
    comm: DataParallelCollectives = worker.scaling
    comm.begin(worker.version)
    generator = torch.Generator()
    generator.set_state(payload["generator"])
    worker.policy.train()
    try:
        ppo_update(
            worker.policy,
            worker.scaling_optimizer,
            payload["batch"],
            actor_config,
            algorithm,
            generator,
            comm,
        )
    finally:
        worker.policy.eval()
        worker.scaling_optimizer.zero_grad(set_to_none=True)
    return {"joined": joined, "left": time.time()}


def member_log(worker) -> list[dict[str, int]]:
    comm = getattr(worker, "scaling", None) or worker.comm
    return list(getattr(comm, "log", []))


def use_cores(worker, cores: list[int]) -> None:
    """Run on `cores` with one torch thread each."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


# -- the driver side -------------------------------------------------------------------------------------------
@dataclass
class SlotTimeline:
    """Which component held which slots when (wall-clock seconds since the run's first record)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    origin: float | None = None

    def add(self, component: str, slots: tuple[int, ...], start: float, end: float) -> None:
        self.origin = start if self.origin is None else self.origin
        self.records.append(
            {
                "component": component,
                "slots": list(slots),
                "start": start - self.origin,
                "end": end - self.origin,
            }
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.records))


class OnlineScaling:
    """The freed slots of a run's placement and the per-update hand-over (see the module docstring)."""

    def __init__(self, workers, mechanism: str) -> None:
        self.workers, self.mechanism = workers, mechanism
        placement = workers.cluster.placement
        actor_slots = set(placement.slots["actor"])
        self.helpers = [r for r, s in enumerate(placement.slots["rollout"]) if s not in actor_slots]
        free = sorted({s for c in ("env", "rollout") for s in placement.slots[c]} - actor_slots)
        if not free:
            raise ConfigError(
                f"cluster.online_scaling: the actor already holds every slot ({placement.describe()}); nothing "
                "is freed for it. Put the actor on fewer slots (e.g. cluster=hybrid: actor on slot 0)"
            )
        self.free_slots = tuple(free)
        self.timeline = SlotTimeline()
        if mechanism == "ranks":
            self._start_group()

    def _start_group(self) -> None:
        workers = self.workers
        if len(workers.actor) != 1:
            raise ConfigError(
                "cluster.online_scaling with scaling_cores_as=ranks needs one actor rank (the actor on one slot, "
                f"e.g. cluster=hybrid); this placement has {len(workers.actor)}. Use scaling_cores_as=threads"
            )
        if not self.helpers:
            raise ConfigError(
                "cluster.online_scaling with scaling_cores_as=ranks: no rollout worker sits on a slot without "
                "the actor; use scaling_cores_as=threads"
            )
        host, port = workers.actor.call("master_address", ranks=[0]).wait()[
            0
        ]  # a free port on the actor's node
        members = len(self.helpers) + 1
        config = workers.config
        calls = [workers.actor.call("run", join_as_actor, host, port, members, ranks=[0])]
        calls += [
            workers.rollout.call(
                "run", join_as_helper, host, port, m + 1, members, config.actor, config.algorithm, ranks=[r]
            )
            for m, r in enumerate(self.helpers)
        ]
        wait_all(*calls)

    def train(self, progress: float) -> dict[str, float]:
        """The actor's update on its own and the freed slots; adds `time/scale_switch`."""
        if self.mechanism == "threads":
            return self._train_threads(progress)
        workers = self.workers
        start = time.time()
        payload = workers.actor.call("run", update_payload, ranks=[0])
        wait_all(
            payload
        )  # before train: the actor runs calls concurrently; the batch stays in the object store
        helping = workers.rollout.call("run", help_update, payload.result_refs[0], ranks=self.helpers)
        training = workers.actor.train(progress)
        wait_all(training, helping)
        end = time.time()
        shares = helping.wait()
        joined = max(s["joined"] for s in shares)
        switch = (joined - start) + max(0.0, end - max(s["left"] for s in shares))
        self._record(start, end)
        return training.wait()[0] | {"time/scale_switch": switch}

    def _train_threads(self, progress: float) -> dict[str, float]:
        workers = self.workers
        groups = (workers.env, workers.rollout, workers.actor)
        every = sorted({c for g in groups for info in g.infos for c in info.cores or ()})
        every = every or list(range(int(workers.cluster.num_cpus)))  # workers not pinned (cluster.pin_cpus)
        own = list(workers.actor.infos[0].cores or every)
        start = time.time()
        workers.actor.call("run", use_cores, every).wait()
        grown = time.time()
        metrics = workers.actor.train(progress).wait()[0]
        trained = time.time()
        workers.actor.call("run", use_cores, own).wait()
        end = time.time()
        self._record(start, end)
        return metrics | {"time/scale_switch": (grown - start) + (end - trained)}

    def _record(self, start: float, end: float) -> None:
        slots = self.workers.cluster.placement.slots
        self.timeline.add("actor", tuple(sorted(set(slots["actor"]) | set(self.free_slots))), start, end)

    def record_rollout(self, start: float, end: float) -> None:
        """A rollout epoch held the env and rollout workers' slots from `start` to `end` (time.time())."""
        slots = self.workers.cluster.placement.slots
        self.timeline.add("env", slots["env"], start, end)
        self.timeline.add("rollout", slots["rollout"], start, end)

    def records(self) -> list[dict[str, int]]:
        """Every member's micro-batch log: update, member, data version, weights version, samples."""
        logs = self.workers.actor.call("run", member_log, ranks=[0]).wait()
        if self.mechanism == "ranks":
            logs += self.workers.rollout.call("run", member_log, ranks=self.helpers).wait()
        return [r for log in logs for r in log]
