"""The actor's update on one rollout: epochs of mini-batches, micro-batches with gradient accumulation,
gradient clipping, and an early stop once the policy moved too far (target KL), as in CleanRL/ManiSkill PPO.

The loss itself is `algorithms.objective.compute_loss`; this module only slices the data and steps the
optimizer. It runs unchanged in one process (the reference script, tests) and on FSDP2 ranks, where
`Collectives` averages the early-stop statistic over the ranks and defers the gradient reduction to the last
micro-batch of a mini-batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection

import torch
import torch.distributed as dist

from algorithms.config import AlgorithmConfig
from algorithms.objective import LossDenominators, LossInputs, compute_loss, loss_denominators
from embodied import faults
from embodied.config import ActorConfig
from embodied.demo_term import DemoTerm
from embodied.nonfinite import NonFiniteGuard
from embodied.trajectory import TrainBatch
from policies.base import Policy

CRITIC_METRICS = ("value_loss", "explained_variance", "value_mean", "return_mean", "value_clip_fraction")
# loss terms aggregated over the whole mini-batch's denominators: micro-batch values add up; the other metrics
# are micro-batch means, averaged by size
ADDITIVE_METRICS = ("loss", "pg_loss", "value_loss", "entropy", "kl_loss")


class Collectives:
    """What the update needs from the process group: nothing in one process, gloo/NCCL over FSDP2 ranks."""

    def __init__(self, distributed: bool = False, device: torch.device | None = None) -> None:
        self.distributed = distributed and dist.is_available() and dist.is_initialized()
        self.device = device or torch.device("cpu")

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / dist.get_world_size()

    def gradient_sync(self, model: torch.nn.Module, enabled: bool) -> None:
        """FSDP2: reduce gradients only on the last micro-batch of a mini-batch."""
        setter = getattr(model, "set_requires_gradient_sync", None)  # present on FSDP2-sharded modules only
        if setter is not None:
            setter(enabled)

    # Online scaling (embodied/scaling.py) overrides these three: data-parallel members outside the FSDP2
    # group share a mini-batch's micro-batches, sum their gradients, and take the step together.
    def share(self, parts: list[TrainBatch]) -> list[tuple[int, TrainBatch]]:
        """The micro-batches this process computes, with their indices: all of them."""
        return list(enumerate(parts))

    def combine(self, model: torch.nn.Module, sums: dict[str, float]) -> None:
        """Gradients and metric sums of every member of the mini-batch (in place); nothing to do alone."""

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> float:
        """Clip the gradients, step, zero them; returns the gradient norm before clipping."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = clip_grad_norm(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm


def build_optimizer(policy: Policy, config: ActorConfig, skip: Collection[str] = ()) -> torch.optim.Optimizer:
    """AdamW over the policy's parameter groups, the value head with its own learning rate. `skip`: top-level
    modules left out (those a loss never reaches, e.g. the value head in supervised fine-tuning)."""
    skipped = {id(p) for name, p in policy.named_parameters() if name.split(".")[0] in skip}
    groups = policy.trainable_parameter_groups()
    groups = {k: [p for p in v if id(p) not in skipped] for k, v in groups.items()}
    param_groups = [{"params": groups["policy"], "lr": config.lr, "name": "policy"}]
    if groups["value"]:
        lr = config.value_lr if config.value_lr is not None else config.lr
        param_groups.append({"params": groups["value"], "lr": lr, "name": "value"})
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise ValueError("the policy has no trainable parameters")
    return torch.optim.AdamW(
        param_groups,
        lr=config.lr,
        betas=config.adam_betas,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        foreach=True,  # one kernel per group (the per-tensor default on CPU costs ~2x on small models)
    )


def schedule_lr(optimizer: torch.optim.Optimizer, config: ActorConfig, progress: float) -> float:
    """Set each parameter group's learning rate for a run `progress` (0..1) of the way through its budget;
    returns the policy's learning rate (the value head keeps its ratio to it)."""
    scale = 1.0 if config.lr_schedule == "constant" else max(0.0, 1.0 - progress)
    for group in optimizer.param_groups:
        base = config.value_lr if group["name"] == "value" and config.value_lr is not None else config.lr
        group["lr"] = base * scale
    return config.lr * scale


def _loss_inputs(part: TrainBatch, evaluated=None) -> LossInputs:
    """LossInputs of a micro-batch; without `evaluated` (for the denominators) the old values stand in."""
    logprobs = part.old_logprobs if evaluated is None else evaluated.logprobs
    values = part.old_values if evaluated is None else evaluated.values
    if part.returns is None:
        values = None
    return LossInputs(
        logprobs=logprobs,
        old_logprobs=part.old_logprobs,
        advantages=part.advantages,
        mask=part.mask,
        entropy=None if evaluated is None else evaluated.entropy,
        ref_logprobs=part.ref_logprobs,
        values=values,
        old_values=part.old_values if values is not None else None,
        returns=part.returns if values is not None else None,
    )


def _to(batch: TrainBatch, device: torch.device) -> TrainBatch:
    """The batch on the policy's device (a no-op on CPU)."""
    if device.type == "cpu":
        return batch
    fields = {}
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            value = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        fields[name] = value
    return TrainBatch(**fields)


def clip_grad_norm(parameters: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm to `max_norm` (None: no clipping); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm is not None else math.inf)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def minibatch_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    minibatch: TrainBatch,
    actor: ActorConfig,
    algorithm: AlgorithmConfig,
    comm: Collectives,
    guard: NonFiniteGuard | None = None,
    critic_only: bool = False,
    demo: tuple[DemoTerm, float] | None = None,
) -> tuple[dict[str, float], bool]:
    """Forward/backward over the micro-batches of one mini-batch, then one optimizer step.

    Returns the mini-batch's metrics and whether it was applied (False: approx_kl exceeded target_kl, so
    the gradients were dropped and the update should stop). `guard` checks the loss and the gradients for
    NaN/inf (embodied.nonfinite): it raises, or drops the step and marks the metrics `nonfinite_skipped`.
    `critic_only` (actor.critic_warmup_iterations): the step applies the value head's gradients only; the other
    parameters' gradients are dropped before clipping, so they neither move nor enter the optimizer's state.
    `demo` (term, weight): its backward runs first, with FSDP2's gradient reduction left to the last RL
    micro-batch, which reaches every parameter (a supervised loss may leave the value head out).
    """
    size = len(minibatch)
    micro = actor.micro_batch_size or size
    parts = [minibatch.select(torch.arange(i, min(i + micro, size))) for i in range(0, size, micro)]
    denominators: LossDenominators | None = None
    for part in parts:
        d = loss_denominators(_loss_inputs(part), algorithm)
        denominators = d if denominators is None else denominators + d
    sums: dict[str, float] = defaultdict(float)
    demo_loss = None
    if demo is not None and not critic_only and demo[1] > 0:
        comm.gradient_sync(policy, False)
        demo_loss = demo[0].backward(policy, demo[1])
    mine = comm.share(parts)
    for k, part in mine:
        comm.gradient_sync(policy, k == mine[-1][0])
        forward_inputs = part.forward_inputs if guard is None else guard.check_batch(part, k)
        evaluated = policy.evaluate(forward_inputs)
        loss, metrics = compute_loss(_loss_inputs(part, evaluated), algorithm, denominators)
        if faults.due("actor.loss"):
            loss = loss * float("nan")
        if guard is not None:
            guard.check_loss(loss, vars(evaluated), metrics, k)
        loss.backward()
        for name, value in metrics.items():
            sums[name] += float(value) * (1.0 if name in ADDITIVE_METRICS else len(part) / size)
    comm.combine(policy, sums)
    if demo_loss is not None:  # after combine: online scaling's members sum the same metric names
        sums["demo_loss"] = demo_loss
    sums["approx_kl"] = comm.mean(sums["approx_kl"])
    if actor.target_kl is not None and sums["approx_kl"] > actor.target_kl:
        optimizer.zero_grad(set_to_none=True)
        return dict(sums), False
    if faults.due("actor.grad"):
        next(p for p in policy.parameters() if p.grad is not None).grad.fill_(float("nan"))
    if critic_only:
        for group in optimizer.param_groups:
            if group.get("name") != "value":
                for p in group["params"]:
                    p.grad = None
    if guard is not None and not guard.update_is_finite(policy, comm):
        optimizer.zero_grad(set_to_none=True)
        return dict(sums) | {"nonfinite_skipped": 1.0}, True
    sums["grad_norm"] = comm.step(optimizer, actor.max_grad_norm)
    return dict(sums), True


def ppo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: TrainBatch,
    actor: ActorConfig,
    algorithm: AlgorithmConfig,
    generator: torch.Generator,
    comm: Collectives | None = None,
    guard: NonFiniteGuard | None = None,
    critic_only: bool = False,
    demo: tuple[DemoTerm, float] | None = None,
) -> dict[str, float]:
    """`actor.update_epochs` passes over `batch` in `actor.num_minibatches` shuffled mini-batches.

    Returns metrics named `train/actor/*` and `train/critic/*`, averaged over the applied mini-batches;
    `train/actor/nonfinite_skipped` counts the mini-batches `guard` dropped (run.on_nonfinite=skip).
    `critic_only`: a critic warm-up update (only the value head moves; `train/critic/warmup` is 1).
    `demo`: (the demonstrations' behaviour-cloning term, its weight) added to every mini-batch step
    (embodied/demo_term.py); not in critic warm-up updates.
    """
    if critic_only and batch.returns is None:
        raise ValueError(
            "actor.critic_warmup_iterations > 0 trains the value head, but this run has no critic (a "
            "critic-free advantage or policy): set actor.critic_warmup_iterations=0"
        )
    comm = comm or Collectives()
    n = len(batch)
    if n < actor.num_minibatches:
        raise ValueError(
            f"a rollout of {n} samples cannot be split into actor.num_minibatches={actor.num_minibatches}; "
            "collect more (env.num_envs x rollout.num_steps) or use fewer minibatches"
        )
    batch = _to(batch, next(policy.parameters()).device)
    size = n // actor.num_minibatches
    totals: dict[str, float] = defaultdict(float)
    applied, skipped, stopped = 0, 0, False
    for epoch in range(actor.update_epochs):
        order = torch.randperm(n, generator=generator)
        for m in range(actor.num_minibatches):
            if guard is not None:
                guard.position = f"update epoch {epoch + 1}, mini-batch {m + 1}"
            minibatch = batch.select(order[m * size : (m + 1) * size])
            metrics, ok = minibatch_step(
                policy, optimizer, minibatch, actor, algorithm, comm, guard, critic_only, demo
            )
            if not ok:
                stopped = True
                totals["approx_kl_at_stop"] = metrics["approx_kl"]
                break
            if "nonfinite_skipped" in metrics:
                skipped += 1
                continue
            applied += 1
            for name, value in metrics.items():
                totals[name] += value
        if stopped:
            break
    out = {}
    for name, value in totals.items():
        value = value if name == "approx_kl_at_stop" else value / max(applied, 1)
        out[f"train/{'critic' if name in CRITIC_METRICS else 'actor'}/{name}"] = value
    out["train/actor/minibatch_steps"] = float(applied)
    out["train/actor/early_stopped"] = float(stopped)
    out["train/actor/nonfinite_skipped"] = float(skipped)
    out["train/critic/warmup"] = float(critic_only)
    for group in optimizer.param_groups:
        out[f"train/{'critic' if group.get('name') == 'value' else 'actor'}/lr"] = group["lr"]
    return out
