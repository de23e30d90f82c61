"""NaN and inf: found where they first appear, named, and never trained on or checkpointed.

Checked at three places, each naming the component and the tensor (the driver adds the iteration):

    env worker     every observation and reward it sends (`check_env_step`)
    actor, loss    each micro-batch's loss; when it is not finite, the first input or policy output that is not
                   (advantages, returns, log-probs, values, ...) is named, else the loss terms
    actor, update  the gradients after the backward passes of a mini-batch (all ranks decide together), and the
                   weights before every weight sync and checkpoint (`check_weights`)

`run.on_nonfinite` says what happens: `stop` (default) raises NonFiniteError there, the run stops and its last
checkpoint stays as it was; `skip` drops the update of a mini-batch whose data, loss or gradients are not finite
(its gradients are zeroed, every rank agreeing; counted in `train/actor/nonfinite_skipped`), and an env worker
replaces non-finite values by 0 before anything uses them; both print a warning naming the tensor. Weights
that are not finite stop the run in both modes: they are never synced to the rollout workers or written to a
checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

MODES = ("stop", "skip")
STOPPED = "; the run stops (run.on_nonfinite=stop) and its last checkpoint is intact"


class NonFiniteError(RuntimeError):
    """A NaN or inf where training cannot go on; the message names the component and the tensor."""

    diagnosed = True  # the message says all: workers report it without their traceback


def describe(name: str, tensor: torch.Tensor) -> str | None:
    """'<name>: 3 NaN, 1 inf of 128 values (first at index (2, 0))' or None when every value is finite."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        return None
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return None
    values = tensor.detach()
    nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    first = tuple(int(i) for i in (~finite).nonzero()[0].tolist())
    at = f" (first at index {first})" if first else ""
    return f"{name!r}: {nan} NaN, {inf} inf of {values.numel()} values{at}"


def first_nonfinite(tensors: Mapping[str, Any], prefix: str = "") -> str | None:
    """The description of the first tensor in `tensors` (nested dicts included) holding a NaN or inf."""
    for name, value in tensors.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            found = first_nonfinite(value, f"{key}.")
        elif isinstance(value, torch.Tensor):
            found = describe(key, value)
        else:
            found = None
        if found is not None:
            return found
    return None


def check_env_step(where: str, step: Any, mode: str) -> Any:
    """What an env worker sends (an EnvStep: observation, rewards, final observations of ended episodes):
    raise NonFiniteError naming the first non-finite tensor (stop), or warn and return the step with its
    non-finite values replaced by 0, so that neither the policy nor the update sees them (skip)."""
    parts = {"observation": step.obs, "rewards": step.rewards, "final_observation": step.final_obs}
    found = first_nonfinite(parts)
    if found is None:
        return step
    message = f"{where}: non-finite env output {found}"
    if mode == "stop":
        raise NonFiniteError(message + STOPPED)
    print(f"warning: {message}; run.on_nonfinite=skip: replaced by 0", flush=True)
    return dataclasses.replace(
        step,
        obs=_zeroed(step.obs),
        rewards=_zeroed(step.rewards),
        final_obs=_zeroed(step.final_obs),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)


def _zeroed(value: Any) -> Any:
    """`value` (a tensor, a dict of them, anything else) with NaN and inf replaced by 0."""
    if isinstance(value, Mapping):
        return {k: _zeroed(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    return value


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor  # this rank's shard of a DTensor


def first_nonfinite_gradient(named: Iterable[tuple[str, torch.nn.Parameter]]) -> str | None:
    for name, param in named:
        if param.grad is not None:
            found = describe(f"gradient of {name}", _local(param.grad))
            if found is not None:
                return found
    return None


def check_weights(module: torch.nn.Module, where: str, purpose: str) -> None:
    """Raise NonFiniteError if a parameter (this rank's shard) holds a NaN or inf: such weights are never
    synced or checkpointed, in either mode."""
    for name, param in module.named_parameters():
        found = describe(name, _local(param))
        if found is not None:
            raise NonFiniteError(
                f"{where}: the weights hold non-finite values, parameter {found}; not {purpose}. The run stops; "
                "its last checkpoint is intact (lower actor.lr, or set actor.max_grad_norm)"
            )


class NonFiniteGuard:
    """The actor's checks of one update (see the module docstring); `where` names the rank."""

    def __init__(self, mode: str, where: str) -> None:
        if mode not in MODES:
            raise ValueError(f"run.on_nonfinite must be one of {MODES}, not {mode!r}")
        self.mode, self.where = mode, where
        self.position = ""  # "update epoch e, mini-batch m" while ppo_update runs
        self.bad = False  # something of this rank's current mini-batch was not finite

    def check_batch(self, part: Any, micro: int) -> dict[str, torch.Tensor]:
        """A micro-batch (a TrainBatch) before the forward pass; returns the forward inputs to use. Non-finite
        training data (rollout outputs, advantages, returns) raises (stop) or marks the step to be skipped and
        gives the forward pass zeros in their place (skip: every rank still runs it, in step with the others;
        a NaN would make e.g. a Gaussian policy refuse its input)."""
        found = first_nonfinite(vars(part))
        if found is None:
            return part.forward_inputs
        self.bad = True
        if self.mode == "stop":
            where = f"{self.where}, {self.position}, micro-batch {micro}"
            raise NonFiniteError(f"{where}: non-finite training data {found}{STOPPED}")
        return {k: _zeroed(v) for k, v in part.forward_inputs.items()}

    def check_loss(
        self, loss: torch.Tensor, outputs: Mapping[str, Any], terms: Mapping[str, Any], micro: int
    ) -> None:
        """A micro-batch's loss; `outputs`: the policy outputs it was computed from (log-probs, values, ...)."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        self.bad = True
        if self.mode == "skip":
            return
        head = f"{self.where}, {self.position}, micro-batch {micro}: the loss is {float(loss.detach()):.4g}"
        cause = first_nonfinite(outputs)
        if cause is None:
            shown = ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items() if _is_number(v))
            raise NonFiniteError(
                f"{head}, from finite data and policy outputs (loss terms: {shown}){STOPPED}"
            )
        raise NonFiniteError(f"{head}; the first non-finite policy output is {cause}{STOPPED}")

    def update_is_finite(self, policy: torch.nn.Module, comm) -> bool:
        """After the mini-batch's backward passes: True to step. All ranks (and scaling members) decide
        together, so none steps while another skips."""
        gradient = first_nonfinite_gradient(policy.named_parameters())
        bad_here = self.bad or gradient is not None
        self.bad = False
        if comm.mean(float(bad_here)) == 0.0:
            return True
        if self.mode == "skip":
            if bad_here:
                cause = "non-finite data or loss" if gradient is None else f"non-finite {gradient}"
                print(f"warning: {self.where}, {self.position}: {cause}; mini-batch skipped", flush=True)
            return False
        what = gradient if gradient is not None else "gradients on another rank"
        raise NonFiniteError(f"{self.where}, {self.position}: non-finite {what}{STOPPED}")
