"""Routing between worker groups of different sizes: which envs each worker holds and who talks to whom.

The N envs (`env.num_envs`) are numbered globally. Env worker e holds a contiguous block of N / E envs, split
into `rollout.pipeline_stages` units of n = N / (E * S) envs; unit u = e * S + s holds envs [u * n, (u+1) * n).
Units are dealt to the R rollout workers in contiguous blocks (unit u -> rollout rank u * R // (E * S)), so
each rollout worker serves a contiguous env range and, when E = R, the env worker on its own slot.

The training batch has N env slots too, in groups of `env.group_size` (GRPO groups; 1 for PPO). Batch slot k
holds group g of some generation round: group k of the one round without dynamic sampling, a group with mixed
outcomes of any round with it. Actor worker a trains on batch envs [a * N / A, (a+1) * N / A); `route_groups`
says which rollout worker sends which piece of which round to which actor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from algorithms.schema import ConfigError
from envs.base import EnvConfig


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

    def rollout_of_env(self, env: int) -> int:
        """The rollout rank that serves global env `env`."""
        return self.units[env // self.units[0].num_envs].rollout_rank

    def route_groups(self, groups: Sequence[tuple[int, int]], group_size: int) -> dict[int, list[BatchPiece]]:
        """The pieces each rollout rank sends to the actors so that batch slot k holds `groups[k]` = (round,
        group): group g is envs [g * group_size, (g+1) * group_size) of its round, held by the rollout worker
        serving them, and goes to the actor whose range holds the slot. A slot that continues the previous piece
        of the same rollout rank (same round and actor, the next envs) extends it, so the one round of a run
        without dynamic sampling travels as one piece per (rollout, actor) overlap."""
        if len(groups) * group_size != self.num_envs:
            raise ValueError(
                f"{len(groups)} groups of {group_size} do not fill the batch's {self.num_envs} env slots"
            )
        per_actor = self.num_envs // self.actor_workers
        pieces: dict[int, list[BatchPiece]] = {r: [] for r in range(self.rollout_workers)}
        for slot, (round_index, group) in enumerate(groups):
            start, batch_start = group * group_size, slot * group_size
            own = pieces[self.rollout_of_env(start)]
            piece = BatchPiece(batch_start // per_actor, batch_start, round_index, start, start + group_size)
            if own and own[-1].continued_by(piece):
                own[-1] = dataclasses.replace(own[-1], env_stop=piece.env_stop)
            else:
                own.append(piece)
        return pieces


@dataclass(frozen=True)
class BatchPiece:
    """Envs [env_start, env_stop) of generation round `round`, bound for batch envs [batch_start, ...) of
    actor rank `actor`."""

    actor: int
    batch_start: int
    round: int
    env_start: int
    env_stop: int

    @property
    def num_envs(self) -> int:
        return self.env_stop - self.env_start

    def continued_by(self, other: BatchPiece) -> bool:
        return (
            other.actor == self.actor
            and other.round == self.round
            and other.env_start == self.env_stop
            and other.batch_start == self.batch_start + self.num_envs
        )


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


def plan_for_placement(
    slots: Mapping[str, tuple[int, ...]], env: EnvConfig, pipeline_stages: int
) -> RolloutPlan:
    """The plan of a placement's worker counts (one worker per slot; no actor group: one actor rank)."""
    return plan_rollout(
        env.num_envs,
        env.group_size,
        len(slots["env"]),
        pipeline_stages,
        len(slots["rollout"]),
        len(slots["actor"]) if "actor" in slots else 1,
    )
