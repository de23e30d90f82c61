"""Rollout workers: run the policy for the units (env blocks) they serve, record trajectories, send them on.

A rollout worker answers each `EnvStep` of its units with actions as soon as it arrives (so pipeline stages
are served in the order the env finishes them), records outputs and outcomes per unit, and holds each training
epoch's trajectory (a generation round) until the driver has chosen the batch: `retain` drops the groups that
will not train (dynamic sampling, between rounds), `send_batch` sends each actor worker its pieces. Its weights come
from the actor (`load_weights`, versioned) or from a checkpoint folder (`load_pretrained`, for eval-only
runs). It does not know which policy or env it serves: the policy owns `predict`, the env owns the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from embodied.channel import Channel
from embodied.devices import move_module, resident
from embodied.routing import BatchPiece, RolloutPlan
from embodied.trajectory import EnvStep, Trajectory, TrajectoryBuilder
from embodied.worker import Worker, WorkerInfo
from envs.base import EnvSpec
from policies.base import PolicyConfig, load_state_dict_strict, make_policy


@dataclass
class HeldRound:
    """The part of one generation round's trajectory this worker still holds: global env ids `envs` (int64
    [k], ascending) and the trajectory of those envs, in that order."""

    envs: torch.Tensor
    trajectory: Trajectory

    def positions(self, start: int, stop: int) -> torch.Tensor:
        """Local positions of global envs [start, stop), which must be held."""
        wanted = torch.arange(start, stop)
        index = torch.searchsorted(self.envs, wanted).clamp(max=len(self.envs) - 1)
        if not torch.equal(self.envs[index], wanted):
            raise RuntimeError(f"envs [{start}, {stop}) of this round were not kept by this rollout worker")
        return index


class RolloutWorker(Worker):
    def __init__(
        self, info: WorkerInfo, policy: PolicyConfig, plan: RolloutPlan, seed: int, offload_when_idle: bool
    ) -> None:
        super().__init__(info)
        torch.manual_seed(seed * 1000 + info.rank)
        self.policy_config = policy
        self.replan(plan)
        self.device = torch.device(info.device)
        self.offload_when_idle = offload_when_idle and self.device.type == "cuda"
        self.policy = None
        self.version = -1  # no weights from the actor yet
        self.from_env: Channel | None = None
        self.to_env: Channel | None = None
        self.to_actor: Channel | None = None
        self.held: dict[int, HeldRound] = {}  # generation rounds of the current step, by round index
        self.rounds = 0  # generation rounds of the current step so far

    def setup(self, env_spec: EnvSpec) -> None:
        """Build the policy for the env (its spec comes from the env workers, which start alongside)."""
        self.policy = make_policy(self.policy_config, env_spec).to(self.device).eval()
        if self.offload_when_idle:
            move_module(self.policy, "cpu")

    def connect(self, from_env: Channel, to_env: Channel, to_actor: Channel | None) -> None:
        self.from_env, self.to_env, self.to_actor = from_env, to_env, to_actor

    def replan(self, plan: RolloutPlan) -> None:
        """Serve the units of a new plan (new env workers, e.g. the next task pass of an evaluation); the
        policy and its weights stay. Channels follow with `connect`."""
        self.plan = plan
        self.units = {u.index: u for u in plan.units_of_rollout(self.info.rank)}

    # -- weights ----------------------------------------------------------------------------------------------
    def load_weights(self, synced: dict) -> int:
        """Load the full state dict the actor gathered: {"version": v, "state": {...}}; returns v."""
        with torch.no_grad():
            load_state_dict_strict(self.policy, synced["state"], source=f"actor weights v{synced['version']}")
        self.version = int(synced["version"])
        return self.version

    def load_pretrained(self, directory: str) -> None:
        """Weights from a checkpoint's policy folder (config.json + model.safetensors)."""
        self.policy.load_weights(directory)
        self.version = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.policy.state_dict().items()}

    # -- rollouts ---------------------------------------------------------------------------------------------
    def generate(self, mode: str, expected_version: int | None = None) -> dict:
        """Serve actions until every unit sent its last step. `mode`: train (sample, record, send the
        trajectory to the actors), sample (sample, record nothing: benchmarks) or eval (deterministic)."""
        if mode not in ("train", "sample", "eval"):
            raise ValueError(f"generate mode must be train, sample or eval, not {mode!r}")
        if expected_version is not None and self.version != expected_version:
            raise RuntimeError(
                f"rollout worker has weights v{self.version} but v{expected_version} were expected: a weight "
                "sync was skipped or failed"
            )
        with resident(self.policy, self.device, self.offload_when_idle):
            return self._serve(mode)

    def _serve(self, mode: str) -> dict:
        train = mode == "train"
        predict_mode = "eval" if mode == "eval" else "train"
        builders = {i: TrajectoryBuilder(u.env_start, self.version) for i, u in self.units.items()}
        pending = list(self.units)
        infer_seconds, predictions = 0.0, 0
        while pending:
            key, step = self.from_env.get_any(pending)
            builder = builders[key]
            if train and step.rewards is not None:
                builder.add_outcome(step, self._final_values(step, builder))
            if step.last:
                if train:
                    builder.add_bootstrap(self._bootstrap_values(step, builder))
                pending.remove(key)
                continue
            start = time.perf_counter()
            output = self.policy.predict(step.obs, mode=predict_mode)
            actions = output.actions.cpu()
            infer_seconds += time.perf_counter() - start
            predictions += 1
            self.to_env.put(actions, key=key, rank=self.units[key].env_rank)
            if train:
                builder.add_output(output)
        result = {"infer_seconds": infer_seconds, "predictions": predictions}
        if train:
            trajectory = Trajectory.concat([b.build() for b in builders.values()])
            lo, hi = self.plan.rollout_range(self.info.rank)
            self.held[self.rounds] = HeldRound(torch.arange(lo, hi), trajectory)
            self.rounds += 1
            result["scores"] = trajectory.outcome_scores()
        return result

    def _bootstrap_values(self, step: EnvStep, builder: TrajectoryBuilder) -> torch.Tensor | None:
        """[n]: the critic's values after the last chunk; None, without running the policy, for critic-free
        policies (for a language model, `predict` would generate whole responses just to drop them)."""
        if builder.outputs and builder.outputs[-1].values is None:
            return None
        return self.policy.predict(step.obs, mode="train").values

    def _final_values(self, step: EnvStep, builder: TrajectoryBuilder) -> torch.Tensor | None:
        """[n]: the critic's values of the ended episodes' final observations (0 elsewhere); the advantage
        estimator reads them where an episode was truncated (or, with bootstrap_on_termination, terminated)."""
        if builder.outputs[-1].values is None:
            return None
        values = torch.zeros(step.rewards.shape[0])
        if step.final_obs is not None:
            rows = step.ended.nonzero().flatten()
            values[rows] = self.policy.predict(step.final_obs, mode="train").values.cpu().float()
        return values

    # -- the training batch ---------------------------------------------------------------------------------
    def retain(self, keep: list[tuple[int, int, int]]) -> None:
        """Keep only the envs of `keep` = (round, env start, env stop) entries that this worker holds (the
        groups with mixed outcomes so far); the other envs of the held rounds are released."""
        for round_index, held in list(self.held.items()):
            wanted = torch.zeros(len(held.envs), dtype=torch.bool)
            for r, start, stop in keep:
                if r == round_index:
                    wanted |= (held.envs >= start) & (held.envs < stop)
            if wanted.all():
                continue
            if not wanted.any():
                del self.held[round_index]
                continue
            index = wanted.nonzero().flatten()
            self.held[round_index] = HeldRound(
                held.envs[index], held.trajectory.select_envs(index, env_start=0)
            )

    def send_batch(self, pieces: dict[int, list[BatchPiece]]) -> None:
        """Send every actor its pieces of this worker's rounds (`pieces[rank]`, from `RolloutPlan.route_groups`),
        as one list of trajectories numbered by their batch envs (an empty list when it has none), then forget
        the rounds: the next call of `generate` starts the next step's round 0."""
        if self.to_actor is None:
            raise RuntimeError("this rollout worker has no actor to send trajectories to (an eval-only run?)")
        outgoing: dict[int, list[Trajectory]] = {a: [] for a in range(self.plan.actor_workers)}
        for piece in pieces.get(self.info.rank, []):
            held = self.held[piece.round]
            index = held.positions(piece.env_start, piece.env_stop)
            whole = len(index) == len(held.envs)  # the whole held round, in order: no copy needed
            trajectory = held.trajectory if whole else held.trajectory.select_envs(index, piece.batch_start)
            trajectory.env_start = piece.batch_start
            outgoing[piece.actor].append(trajectory)
        for actor_rank, trajectories in outgoing.items():
            self.to_actor.put(trajectories, key=self.info.rank, rank=actor_rank)
        self.held, self.rounds = {}, 0
