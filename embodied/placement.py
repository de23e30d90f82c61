"""Placement: which resource slots each component (env, rollout, actor) uses, and the mode that follows.

A slot is a GPU, or on a machine without GPUs a share of the CPUs (`cluster.num_slots`, by default one per
CPU). `cluster.component_placement` gives each component a set of slots, one worker per slot:

    {env: all, rollout: all, actor: all}   collocated: the components take turns on the same slots
    {env: 0, rollout: 1, actor: 2}         disaggregated: disjoint slots, env and rollout pipelined
    {env: 0, rollout: 1, actor: all}       hybrid: anything in between

The mode is read off the overlap; the same run config switches mode by changing only the cluster section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from algorithms.schema import ConfigError
from embodied.config import COMPONENTS, ClusterConfig
from embodied.slots import placement_mode, slot_cores  # noqa: F401 - slot_cores: part of this module's API

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def parse_slots(spec: str | int, num_slots: int, component: str) -> tuple[int, ...]:
    """'all' | 'a-b' | 'a,b,c' | n -> sorted slot indices, checked against the cluster's `num_slots`."""
    key = f"cluster.component_placement.{component}"
    text = str(spec).strip()
    if text == "all":
        return tuple(range(num_slots))
    # beyond: the slots named that the cluster lacks; a range past the end is cut before it is expanded, so that
    # e.g. '0-999999999' costs no memory
    slots, beyond = [], []
    for part in text.split(","):
        match = _RANGE.match(part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise ConfigError(f"{key}={spec!r}: range {part.strip()} runs backwards; write {hi}-{lo}")
            if hi >= num_slots:
                first = max(lo, num_slots)
                beyond += [str(s) for s in range(first, hi + 1)] if hi - first < 8 else [f"{first}-{hi}"]
                hi = num_slots - 1
            slots.extend(range(lo, hi + 1))
        elif part.strip().isdigit():
            if int(part) < num_slots:
                slots.append(int(part))
            else:
                beyond.append(part.strip())
        else:
            raise ConfigError(
                f"{key}={spec!r} is not a slot set; write 'all', a range '0-3', a list '0,2' or one slot '1'"
            )
    if beyond:
        plural = len(beyond) > 1 or "-" in beyond[0]
        raise ConfigError(
            f"{key}={spec!r} asks for slot{'s' if plural else ''} {', '.join(beyond)} but the "
            f"cluster has {num_slots} slot{'s' if num_slots != 1 else ''} (0-{num_slots - 1}); use slots that "
            "exist, or raise cluster.num_slots on a machine without GPUs"
        )
    if len(set(slots)) != len(slots):
        raise ConfigError(f"{key}={spec!r} names a slot twice; write each slot once, e.g. '0,1' or '0-3'")
    return tuple(sorted(slots))


@dataclass(frozen=True)
class Placement:
    """Slots per component and the mode their overlap gives."""

    num_slots: int
    slots: dict[str, tuple[int, ...]]

    @property
    def mode(self) -> str:
        return placement_mode(self.slots.values())

    def shares_slots(self, a: str, b: str) -> bool:
        return bool(set(self.slots[a]) & set(self.slots[b]))

    def workers_on(self, slot: int) -> int:
        """How many workers (of all components) sit on `slot`."""
        return sum(slot in self.slots[c] for c in self.slots)

    def describe(self) -> str:
        parts = ", ".join(f"{c} {list(s)}" for c, s in self.slots.items())
        return f"{self.mode} placement on {self.num_slots} slots: {parts}"


def count_slots(config: ClusterConfig, num_gpus: int, num_cpus: float) -> int:
    """The slots of a cluster with these resources: `cluster.num_slots`, else its GPUs, else one per CPU."""
    num_slots = config.num_slots or (num_gpus or max(1, int(num_cpus)))
    if num_gpus and num_slots > num_gpus:
        raise ConfigError(
            f"cluster.num_slots={num_slots} but the cluster has {num_gpus} GPU(s); on GPUs a slot is a GPU"
        )
    return num_slots


def resolve_placement(
    config: ClusterConfig, num_slots: int, components: tuple[str, ...] = COMPONENTS
) -> Placement:
    """The placement of `components` that `config` asks for on a cluster with `num_slots` slots."""
    if config.component_placement is None:  # cluster.auto: only a training run profiles and chooses
        raise ConfigError(
            "cluster.auto=true: the placement is chosen when a training run starts (embodied/plan.py); "
            "this command needs a fixed one: drop cluster=auto or give cluster.component_placement"
        )
    slots = {c: parse_slots(config.component_placement[c], num_slots, c) for c in components}
    empty = [c for c, s in slots.items() if not s]
    if empty:
        raise ConfigError(f"cluster.component_placement.{empty[0]} has no slots")
    return Placement(num_slots, slots)
