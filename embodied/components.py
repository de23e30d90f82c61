"""The worker groups of a run, wired together: what the runner calls, one method per step of the algorithm.

`Components` starts the env, rollout and (for training) actor groups on their slots, connects them with
channels (env -> rollout: observations, rollout -> env: actions, rollout -> actor: trajectories), builds the
policy once the env workers report the env's spec, and joins the actor ranks into one FSDP2 process group.
Its methods hide the plumbing (fan-out, routing, versions, offloading) so the runner reads as the algorithm.
A training step may take several rollout epochs (generation rounds): with DAPO's dynamic sampling
(`algorithm.dynamic_sampling`) the rollout workers hold each round while `algorithms.dapo.assemble_groups`
picks the groups with mixed outcomes, until they fill the batch; `compute_advantages` then routes the chosen
groups to the actor ranks.

An eval-only run (a `Cluster` placing only env and rollout) starts no actor; `load_policy` then loads a
checkpoint's weights into the rollout workers, and `replace_env` swaps the env workers for others (the next
task pass) while the rollout workers and their weights stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from algorithms.dapo import GroupBatch, assemble_groups
from embodied.channel import Channel
from embodied.checkpoint import load_torch_file
from embodied.cluster import Cluster
from embodied.config import EvalConfig, TrainConfig
from embodied.evaluation import summarize, task_schedules
from embodied.routing import RolloutPlan, plan_for_placement
from embodied.scaling import OnlineScaling
from embodied.worker import WorkerError, wait_all
from embodied.workers.actor_worker import ActorWorker
from embodied.workers.env_worker import EnvWorker
from embodied.workers.rollout_worker import RolloutWorker
from envs.base import EnvConfig


def offload_when_idle(config: TrainConfig, cluster: Cluster) -> bool:
    """Collocated on GPUs, rollout and actor take turns and move their state to CPU while idle."""
    if config.actor.offload != "auto":
        return config.actor.offload == "on"
    placement = cluster.placement
    return (
        cluster.device == "cuda" and "actor" in placement.slots and placement.shares_slots("actor", "rollout")
    )


class Components:
    """Env, rollout and actor worker groups on a `Cluster` (see the module docstring)."""

    # the class of the actor ranks: supervised fine-tuning starts its subclass (embodied/sft_runner.py)
    actor_worker: type[ActorWorker] = ActorWorker

    def __init__(self, cluster: Cluster, config: TrainConfig) -> None:
        self.cluster, self.config = cluster, config
        self.generation = 0  # of the env workers (replace_env); names the channels between env and rollout
        with_actor = "actor" in cluster.placement.slots
        self.plan: RolloutPlan = self._plan(config.env)
        seed, offload = config.run.seed, offload_when_idle(config, cluster)
        # all groups start at once: the env workers create simulators while the others import their models
        nonfinite = config.run.on_nonfinite
        self.env = cluster.spawn("env", EnvWorker, config.env, config.rollout, self.plan, nonfinite)
        self.rollout = cluster.spawn("rollout", RolloutWorker, config.policy, self.plan, seed, offload)
        self.actor = None
        if with_actor:
            self.actor = cluster.spawn(
                "actor",
                self.actor_worker,
                config.policy,
                config.actor,
                config.algorithm,
                self.plan,
                config.env.group_size,
                seed,
                offload,
                nonfinite,
            )
        groups = [g for g in (self.env, self.rollout, self.actor) if g is not None]
        cluster.ready(groups)
        self.env_spec = self.env.call("spec", ranks=[0]).wait()[0]
        self._connect()
        setups = [self.rollout.setup(self.env_spec)]
        if self.actor is not None:
            host, port = self.actor.call("master_address", ranks=[0]).wait()[0]
            setups.append(self.actor.setup(self.env_spec, host, port))
        wait_all(*setups)
        self.version = 0
        self.round_scores: list[torch.Tensor] = []  # outcome scores [N] of this step's generation rounds
        self.scaling: OnlineScaling | None = None  # the freed slots join each update (embodied/scaling.py)
        if self.actor is not None and config.cluster.online_scaling:
            self.scaling = OnlineScaling(self, config.cluster.scaling_cores_as)

    def _plan(self, env: EnvConfig) -> RolloutPlan:
        return plan_for_placement(self.cluster.placement.slots, env, self.config.rollout.pipeline_stages)

    def _connect(self) -> None:
        timeout = self.config.rollout.channel_timeout_s
        # fresh names for each generation of env workers: a rollout worker's mailbox keeps counting the
        # sequence numbers of the channels it has used, the new env workers start theirs at 0
        suffix = f"/{self.generation}" if self.generation else ""
        observations = Channel.connect(f"observations{suffix}", self.rollout.handles, timeout)
        actions = Channel.connect(f"actions{suffix}", self.env.handles, timeout)
        trajectories = (
            Channel.connect("trajectories", self.actor.handles, timeout) if self.actor is not None else None
        )
        calls = [
            self.env.connect(observations, actions),
            self.rollout.connect(observations, actions, trajectories),
        ]
        if self.actor is not None:
            calls.append(self.actor.connect(trajectories))
        wait_all(*calls)

    # -- the steps of an iteration --------------------------------------------------------------------------------
    def rollout_epoch(self, reset_seed: int | None = None) -> dict[str, Any]:
        """One rollout epoch (a generation round) on all envs; the rollout workers hold its trajectory for the
        actors (without actors, e.g. in a benchmark, nothing is recorded). Returns the finished episodes, env
        steps, and the env's simulation / the rollout's inference seconds (max over workers)."""
        started = time.time()
        env_call = self.env.rollout_epoch(self.config.rollout.num_steps, reset_seed)
        mode = "train" if self.actor is not None else "sample"
        rollout_call = self.rollout.generate(mode, self.version if self.actor is not None else None)
        wait_all(env_call, rollout_call)
        if self.scaling is not None:
            self.scaling.record_rollout(started, time.time())
        env_results, rollout_results = env_call.wait(), rollout_call.wait()
        if self.actor is not None:
            self.round_scores.append(torch.cat([r["scores"] for r in rollout_results]))
            batch = self.group_batch()
            if batch is not None and not batch.complete:  # release what will not train before the next round
                self.rollout.retain(self._held_pieces(batch.groups)).wait()
        return {
            "episodes": [e for r in env_results for e in r["episodes"]],
            "env_steps": sum(r["env_steps"] for r in env_results),
            "sim_seconds": max(r["sim_seconds"] for r in env_results),
            "infer_seconds": max(r["infer_seconds"] for r in rollout_results),
        }

    def group_batch(self) -> GroupBatch | None:
        """Dynamic sampling: the batch `assemble_groups` makes of this step's rounds so far; None without it."""
        algorithm, env = self.config.algorithm, self.config.env
        if not algorithm.dynamic_sampling:
            return None
        target = env.num_envs // env.group_size
        return assemble_groups(self.round_scores, env.group_size, target, algorithm.max_num_gen_batches)

    def needs_another_round(self) -> bool:
        """Whether the batch still lacks groups with mixed outcomes and the round bound allows another round."""
        batch = self.group_batch()
        return batch is not None and not batch.complete

    def _held_pieces(self, groups: tuple[tuple[int, int], ...]) -> list[tuple[int, int, int]]:
        size = self.config.env.group_size
        return [(r, g * size, (g + 1) * size) for r, g in groups]

    def compute_advantages(self) -> dict[str, float]:
        """Route this step's batch from the rollout to the actor workers (every group of the one round, or the
        groups dynamic sampling chose), then compute advantages there. Returns the actor's metrics and, with
        dynamic sampling, `rollout/gen_rounds` and the group counts of `GroupBatch.metrics`."""
        batch = self.group_batch()
        if batch is not None and not batch.complete:
            raise RuntimeError(
                f"the batch holds {len(batch.groups)} of {batch.target} groups with mixed outcomes: roll out "
                "again while needs_another_round() (the runner's loop) before computing advantages"
            )
        size = self.config.env.group_size
        whole_round = [(0, g) for g in range(self.config.env.num_envs // size)]
        groups = batch.groups if batch is not None else whole_round
        sent = self.rollout.send_batch(self.plan.route_groups(groups, size))
        metrics = self.actor.compute_advantages()
        wait_all(sent, metrics)
        self.round_scores = []
        stats = {f"rollout/{k}": v for k, v in batch.metrics().items()} if batch is not None else {}
        return metrics.wait()[0] | stats

    def train(self, progress: float = 0.0) -> dict[str, float]:
        """The actor's update; `progress` (0..1, the share of the run's budget spent) sets the learning rate."""
        if self.scaling is not None:
            return self.scaling.train(progress)
        return self.actor.train(progress).wait()[0]

    def sync_weights(self) -> int:
        """Actor -> rollout: the full weights go from actor rank 0 through Ray's object store (not the
        driver) to every rollout worker. Returns the new version."""
        call = self.actor.sync_weights()
        wait_all(call)
        versions = self.rollout.load_weights(call.result_refs[0]).wait()
        self.version = versions[0]
        return self.version

    def evaluate(self, eval_config: EvalConfig, video_dir: Path | None) -> tuple[dict[str, float], list[str]]:
        """Deterministic episodes from the fixed initial states; returns `eval/*` metrics and video paths."""
        episodes, videos = self.evaluate_episodes(eval_config, video_dir)
        return summarize(episodes), videos

    def evaluate_episodes(
        self,
        eval_config: EvalConfig,
        video_dir: Path | None,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[list[dict], list[str]]:
        """Each task of the env runs `eval.num_episodes` episodes, from the initial states
        `first_initial_state + 0, 1, ...` dealt to the envs that run it. Returns every episode (metrics, env,
        task id, description, initial state, video) and the video paths. `on_progress(episodes finished)` is
        called about once a second while it runs."""
        start = eval_config.first_initial_state
        ids = list(range(start, start + eval_config.num_episodes))
        env = self.config.env
        schedules = task_schedules([env.task_of_env(i) for i in range(env.num_envs)], ids)
        per_unit = {u.index: schedules[u.env_start : u.env_stop] for u in self.plan.units}
        if video_dir is not None:
            video_dir.mkdir(parents=True, exist_ok=True)
        env_call = self.env.evaluate(per_unit, eval_config, None if video_dir is None else str(video_dir))
        rollout_call = self.rollout.generate("eval")
        while True:
            try:
                wait_all(env_call, rollout_call, timeout=None if on_progress is None else 1.0)
                break
            except WorkerError as exc:
                if not str(exc).startswith("timed out after"):
                    raise
                on_progress(sum(self.env.call("eval_progress").wait()))
        results = env_call.wait()
        return [e for r in results for e in r["episodes"]], [v for r in results for v in r["videos"]]

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, folder: Path) -> None:
        call = self.actor.save_checkpoint(str(folder))
        states = self.rollout.get_rng_state().wait()
        call.wait()
        for rank, state in enumerate(states):
            torch.save(state, folder / f"rng_rollout_{rank}.pt")

    def load_checkpoint(self, folder: Path) -> None:
        self.actor.load_checkpoint(str(folder)).wait()
        for rank in range(len(self.rollout)):
            path = folder / f"rng_rollout_{rank}.pt"
            if path.is_file():
                self.rollout.call("set_rng_state", load_torch_file(path), ranks=[rank]).wait()
        self.sync_weights()

    def load_policy(self, directory: Path) -> None:
        """Weights from a checkpoint's policy folder (config.json + model.safetensors) into the rollout
        workers: evaluation of a trained policy without an actor."""
        self.rollout.load_pretrained(str(directory)).wait()

    def replace_env(self, env: EnvConfig) -> bool:
        """Eval-only: stop the env workers and start new ones for `env` (other tasks, another number of envs)
        on the same slots; the rollout workers keep their policy and weights and serve the new ones. Returns
        True if the new env's spec differs, so the policy was rebuilt for it (its weights must be loaded
        again)."""
        if self.actor is not None:
            raise RuntimeError("replace_env is for evaluations: a training run keeps its env workers")
        self._stop([self.env])
        self.config = self.config.replace(env=env)
        self.plan = self._plan(env)
        nonfinite = self.config.run.on_nonfinite
        self.env = self.cluster.spawn("env", EnvWorker, env, self.config.rollout, self.plan, nonfinite)
        replan = self.rollout.replan(self.plan)
        self.cluster.ready([self.env])
        wait_all(replan)
        spec = self.env.call("spec", ranks=[0]).wait()[0]
        self.generation += 1
        self._connect()
        rebuilt = spec != self.env_spec
        if rebuilt:
            self.env_spec = spec
            self.rollout.setup(spec).wait()
        return rebuilt

    def close(self) -> None:
        """Close the simulators and stop this run's workers (the cluster stays up for the next ones)."""
        self._stop([g for g in (self.env, self.rollout, self.actor) if g is not None])

    def _stop(self, groups: list) -> None:
        """Close the simulators of the env workers among `groups`, then kill `groups`."""
        try:
            if self.env in groups:
                self.env.close().wait()
        except WorkerError:
            pass  # an env worker that failed or died: killing it below ends its simulators too
        finally:
            for group in groups:
                group.kill()
                if group in self.cluster.groups:
                    self.cluster.groups.remove(group)

    def timings(self) -> dict[str, float]:
        """`time/worker/<group>.<method>`: the slowest rank's seconds of each method's last call."""
        groups = [g for g in (self.env, self.rollout, self.actor) if g is not None]
        return {f"time/worker/{g.name}.{method}": s for g in groups for method, s in g.timings.items()}

    def worker_processes(self) -> dict[str, list[dict]]:
        """pid, cores and child pids of every worker, by group (for tests and diagnostics)."""
        groups = {"env": self.env, "rollout": self.rollout, "actor": self.actor}
        return {name: g.process_info().wait() for name, g in groups.items() if g is not None}
