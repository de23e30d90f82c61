"""Routing between worker groups of different sizes: which envs each worker holds and who talks to whom.

The N envs (`env.num_envs`) are numbered globally. Env worker e holds a contiguous block of N / E envs, split
into `rollout.pipeline_stages` units of n = N / (E * S) envs; unit u = e * S + s holds envs [u * n, (u+1) * n).
Units are dealt to the R rollout workers in contiguous blocks (unit u -> rollout rank u * R // (E * S)), so
each rollout worker serves a contiguous env range and, when E = R, the env worker on its own slot. Actor
worker a trains on envs [a * N / A, (a+1) * N / A): each rollout worker sends every actor the part of its
trajectory that falls into the actor's range.
"""

from __future__ import annotations

from dataclasses import dataclass

from algorithms.schema import ConfigError


@dataclass(frozen=True)
class Unit:
    """One pipeline stage of one env worker: a block of envs served by one rollout worker."""

    index: int
    env_rank: int
    stage: int
    env_start: int
    num_envs: int
    rollout_rank: int

    @property
    def env_stop(self) -> int:
        return self.env_start + self.num_envs


@dataclass(frozen=True)
class RolloutPlan:
    """Units, and the env range of every rollout and actor rank."""

    num_envs: int
    units: tuple[Unit, ...]
    rollout_workers: int
    actor_workers: int

    def units_of_env(self, rank: int) -> list[Unit]:
        return [u for u in self.units if u.env_rank == rank]

    def units_of_rollout(self, rank: int) -> list[Unit]:
        return [u for u in self.units if u.rollout_rank == rank]

    def rollout_range(self, rank: int) -> tuple[int, int]:
        units = self.units_of_rollout(rank)
        return units[0].env_start, units[-1].env_stop

    def actor_range(self, rank: int) -> tuple[int, int]:
        per = self.num_envs // self.actor_workers
        return rank * per, (rank + 1) * per

    def actor_pieces(self, rollout_rank: int) -> list[tuple[int, int, int]]:
        """(actor rank, env start, env stop) of each piece of a rollout worker's trajectory."""
        lo, hi = self.rollout_range(rollout_rank)
        pieces = []
        for a in range(self.actor_workers):
            a_lo, a_hi = self.actor_range(a)
            if max(lo, a_lo) < min(hi, a_hi):
                pieces.append((a, max(lo, a_lo), min(hi, a_hi)))
        return pieces

    def rollout_sources(self, actor_rank: int) -> list[int]:
        """The rollout ranks that send pieces to `actor_rank`."""
        return [
            r for r in range(self.rollout_workers) if any(a == actor_rank for a, _, _ in self.actor_pieces(r))
        ]


def plan_rollout(
    num_envs: int, group_size: int, env_workers: int, stages: int, rollout_workers: int, actor_workers: int
) -> RolloutPlan:
    """The plan, or a ConfigError naming the keys whose values do not divide."""
    units = env_workers * stages
    if num_envs % units:
        raise ConfigError(
            f"env.num_envs={num_envs} cannot be split into {env_workers} env worker(s) x "
            f"rollout.pipeline_stages={stages}; use a multiple of {units}"
        )
    n = num_envs // units
    if n % group_size:
        raise ConfigError(
            f"each pipeline stage holds {n} envs, not a multiple of env.group_size={group_size}: groups must not "
            "be split; change env.num_envs or rollout.pipeline_stages"
        )
    if rollout_workers > units:
        raise ConfigError(
            f"{rollout_workers} rollout workers but only {units} env units (env workers x pipeline_stages): "
            "some would idle; give rollout fewer slots or raise rollout.pipeline_stages"
        )
    if num_envs % actor_workers or (num_envs // actor_workers) % group_size:
        raise ConfigError(
            f"env.num_envs={num_envs} cannot be split evenly over {actor_workers} actor worker(s) in whole groups "
            f"of env.group_size={group_size}"
        )
    plan_units = tuple(
        Unit(
            index=u,
            env_rank=u // stages,
            stage=u % stages,
            env_start=u * n,
            num_envs=n,
            rollout_rank=u * rollout_workers // units,
        )
        for u in range(units)
    )
    return RolloutPlan(num_envs, plan_units, rollout_workers, actor_workers)
