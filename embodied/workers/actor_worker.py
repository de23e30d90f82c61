"""Actor workers: FSDP2 ranks that turn rollouts into advantages and train the policy on them.

Each rank receives the trajectory pieces of its batch range from the rollout workers (the groups the driver chose
from one or, with dynamic sampling, several generation rounds), computes advantages
(the configured estimator of `algorithms`), and runs `embodied.training.ppo_update`; FSDP2 averages the
gradients over the ranks. `sync_weights` gathers the full weights on rank 0 (all ranks take part) for the
rollout workers, with a version number that the next rollout must match.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from algorithms.config import AlgorithmConfig
from embodied import faults, fsdp
from embodied.channel import Channel
from embodied.checkpoint import OPTIMIZER_FILE, CheckpointError, load_torch_file
from embodied.config import ActorConfig
from embodied.demo_term import DemoTerm
from embodied.devices import move_module, move_optimizer, release_cache
from embodied.nonfinite import NonFiniteGuard, check_weights
from embodied.routing import RolloutPlan
from embodied.training import Collectives, build_optimizer, ppo_update, schedule_lr
from embodied.trajectory import TrainBatch, Trajectory, build_train_batch, token_metrics
from embodied.worker import Worker, WorkerInfo
from envs.base import EnvSpec
from policies.base import Policy, PolicyConfig, make_policy


class ActorWorker(Worker):
    def __init__(
        self,
        info: WorkerInfo,
        policy: PolicyConfig,
        actor: ActorConfig,
        algorithm: AlgorithmConfig,
        plan: RolloutPlan,
        group_size: int,
        seed: int,
        offload_when_idle: bool,
        on_nonfinite: str = "stop",
    ) -> None:
        super().__init__(info)
        self.policy_config, self.actor, self.algorithm = policy, actor, algorithm
        self.on_nonfinite = on_nonfinite  # run.on_nonfinite: stop | skip (embodied/nonfinite.py)
        self.plan, self.group_size, self.seed = plan, group_size, seed
        self.device = torch.device(info.device)
        self.offload_when_idle = offload_when_idle and self.device.type == "cuda"
        self.generator = torch.Generator().manual_seed(seed * 1000 + info.rank)
        self.env_spec: EnvSpec | None = None
        self.policy: Policy | None = None
        self.reference: Policy | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.comm = Collectives()
        self.version = 0
        self.batch: TrainBatch | None = None
        self.from_rollout: Channel | None = None
        self.demo: DemoTerm | None = None  # actor.demos: the behaviour-cloning term (embodied/demo_term.py)

    def master_address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), fsdp.free_port()

    def setup(self, env_spec: EnvSpec, host: str, port: int) -> None:
        """Build the policy (and the frozen reference when a KL term needs it), join the actor process group,
        shard with FSDP2, build the optimizer."""
        self.env_spec = env_spec
        torch.manual_seed(self.seed)  # identical initial weights on every rank
        self.policy = make_policy(self.policy_config, env_spec)
        if self.algorithm.kl_coef > 0 or self.algorithm.kl_in_reward_coef > 0:
            self.reference = copy.deepcopy(self.policy).requires_grad_(False).eval()
        fsdp.init_process_group(host, port, self.info.rank, self.info.world_size, self.info.device)
        a, device = self.actor, self.info.device
        self.policy = fsdp.shard(self.policy.to(self.device), device, a.precision, a.reshard_after_forward)
        self.policy.train()
        if self.reference is not None:
            self.reference = fsdp.shard(self.reference.to(self.device), device, a.precision, True)
        self.optimizer = build_optimizer(self.policy, a)
        self.comm = Collectives(distributed=True, device=self.device)
        if a.demos is not None:
            horizon = self.policy.action_horizon
            self.demo = DemoTerm(a, horizon, self.seed, self.info.rank, self.info.world_size)
        self._offload()

    def connect(self, from_rollout: Channel) -> None:
        self.from_rollout = from_rollout

    # -- one iteration ----------------------------------------------------------------------------------------
    def compute_advantages(self) -> dict[str, float]:
        """Receive this rank's trajectory pieces, compute advantages and returns; keep the training batch."""
        trajectory = self._receive_batch()
        self._onload()
        ref_logprobs = self._reference_logprobs(trajectory) if self.reference is not None else None
        self.batch = build_train_batch(
            trajectory, self.algorithm, self.group_size, ref_logprobs, self.actor.bootstrap_on_termination
        )
        valid = trajectory.valid
        metrics = {"rollout/reward_mean": float(trajectory.rewards[valid].mean()) if valid.any() else 0.0}
        metrics["rollout/advantage_std"] = float(self.batch.advantages.std())
        return metrics | token_metrics(trajectory)

    def _receive_batch(self) -> Trajectory:
        """This rank's batch envs, from the pieces every rollout worker sends (`RolloutWorker.send_batch`)."""
        pieces = [t for r in range(self.plan.rollout_workers) for t in self.from_rollout.get(r)]
        lo, hi = self.plan.actor_range(self.info.rank)
        trajectory = Trajectory.concat(pieces)
        if trajectory.env_start != lo or trajectory.num_envs != hi - lo:
            raise RuntimeError(
                f"actor rank {self.info.rank} received batch envs [{trajectory.env_start}, "
                f"{trajectory.env_start + trajectory.num_envs}) but trains on [{lo}, {hi})"
            )
        versions = {p.version for p in pieces}
        if versions != {self.version}:
            raise RuntimeError(
                f"trajectories collected with weights {sorted(versions)}, but the actor is at v{self.version}: "
                "the rollout workers missed a weight sync"
            )
        return trajectory

    @torch.no_grad()
    def _reference_logprobs(self, trajectory: Trajectory) -> torch.Tensor:
        flat = {k: v.flatten(0, 1) for k, v in trajectory.forward_inputs.items()}
        size = next(iter(flat.values())).shape[0]
        step = self.actor.micro_batch_size or size
        parts = [
            self.reference.evaluate({k: v[i : i + step] for k, v in flat.items()}).logprobs.cpu()
            for i in range(0, size, step)
        ]
        return torch.cat(parts).reshape(trajectory.logprobs.shape)

    def train(self, progress: float = 0.0) -> dict[str, float]:
        """The update epochs on the batch from `compute_advantages` at the learning rate for `progress` (the
        share of the run's budget spent); the weight version advances."""
        if self.batch is None:
            raise RuntimeError("train() before compute_advantages(): there is no batch")
        self._onload()
        lr = schedule_lr(self.optimizer, self.actor, progress)
        guard = NonFiniteGuard(self.on_nonfinite, f"actor worker rank {self.info.rank}")
        warmup = self.version < self.actor.critic_warmup_iterations  # the run's first updates
        demo, extra = None, {}
        if self.demo is not None and not warmup:  # k counts the updates that move the policy
            weight = self.demo.weight(self.version - self.actor.critic_warmup_iterations)
            demo, extra = (self.demo, weight), {"train/actor/demo_weight": weight}
        metrics = ppo_update(
            self.policy,
            self.optimizer,
            self.batch,
            self.actor,
            self.algorithm,
            self.generator,
            self.comm,
            guard,
            critic_only=warmup,
            demo=demo,
        )
        self.batch = None
        self.version += 1
        return metrics | extra | {"train/lr": lr}

    def sync_weights(self) -> dict | None:
        """All ranks: gather the full weights. Rank 0 returns {"version", "state"}; the others None. Weights
        holding a NaN or inf are refused (NonFiniteError), so they never reach a rollout worker."""
        self._onload()
        if faults.due("actor.weights"):
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
        check_weights(self.policy, f"actor worker rank {self.info.rank}", "synced to the rollout workers")
        state = fsdp.full_state_dict(self.policy)
        self._offload()
        return {"version": self.version, "state": state} if self.info.rank == 0 else None

    # -- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> None:
        """All ranks: gather; rank 0 writes policy/ (Hugging Face layout) and optimizer.pt; every rank its RNG.
        Weights holding a NaN or inf are never written (NonFiniteError; the previous checkpoint stays)."""
        self._onload()
        check_weights(self.policy, f"actor worker rank {self.info.rank}", "checkpointed")
        state = fsdp.full_state_dict(self.policy)
        optimizer = fsdp.full_optimizer_state(self.policy, self.optimizer)
        self._offload()
        folder = Path(directory)
        if self.info.rank == 0:
            from policies.base import write_pretrained

            write_pretrained(folder / "policy", self.policy_config, self.env_spec, state)
            torch.save(optimizer, folder / OPTIMIZER_FILE)
            (folder / "actor.json").write_text(json.dumps({"version": self.version}))
        state = {"rng": self.get_rng_state(), "generator": self.generator.get_state()}
        if self.demo is not None:  # where this rank is in the demonstrations
            state["demo"] = self.demo.state()
        torch.save(state, folder / f"rng_actor_{self.info.rank}.pt")

    def load_checkpoint(self, directory: str) -> int:
        """All ranks: weights, optimizer state, RNG and version from a checkpoint folder; returns the version."""
        from safetensors.torch import load_file

        from policies.base import WEIGHTS_NAME

        folder = Path(directory)
        self._onload()
        fsdp.load_full_state_dict(self.policy, load_file(str(folder / "policy" / WEIGHTS_NAME)))
        optimizer_file = folder / OPTIMIZER_FILE
        try:
            fsdp.load_full_optimizer_state(self.policy, self.optimizer, load_torch_file(optimizer_file))
        except (KeyError, ValueError, RuntimeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{optimizer_file} does not fit this policy's optimizer: {exc}") from None
        self._offload()
        rng_file = folder / f"rng_actor_{self.info.rank}.pt"
        if rng_file.is_file():  # absent when the checkpoint had fewer actor ranks
            saved = load_torch_file(rng_file)
            self.set_rng_state(saved["rng"])
            self.generator.set_state(saved["generator"])
            if self.demo is not None and "demo" in saved:
                self.demo.load_state(saved["demo"])
        self.version = json.loads((folder / "actor.json").read_text())["version"]
        return self.version

    # -- collocated GPU placements ----------------------------------------------------------------------------
    def _onload(self) -> None:
        if self.offload_when_idle:
            self._move(self.device)

    def _offload(self) -> None:
        if self.offload_when_idle:
            self._move(torch.device("cpu"))
            release_cache()

    def _move(self, device: torch.device) -> None:
        move_module(self.policy, device)
        move_optimizer(self.optimizer, device)
        if self.reference is not None:
            move_module(self.reference, device)
