"""FSDP2 over the actor workers: process group, sharding, full state dicts for weight sync and checkpoints.

On CPU the process group is gloo; on GPU it is NCCL for CUDA tensors with gloo beside it for CPU tensors
(full state dicts are gathered with CPU offload). Each actor worker is one rank; Ray gives it its own GPU
(or CPU cores). The policy names submodules to shard as their own FSDP2 units (`Policy.fsdp_units`, e.g.
transformer layers); the policy itself is always the root unit, and its
`evaluate` and `supervised_loss` methods run under FSDP2's hooks like `forward` does.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from policies.base import Policy

# set by embodied.cluster for an in-process Ray that listens on localhost only: where the actor ranks meet
RENDEZVOUS_ENV = "INFLOW_RENDEZVOUS_DIR"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def init_process_group(host: str, port: int, rank: int, world_size: int, device: str) -> None:
    os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.setdefault("LOCAL_RANK", "0")
    backend = "cpu:gloo,cuda:nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)  # Ray exposes exactly this worker's GPU
    timeout = timedelta(minutes=30)
    rendezvous_dir = os.environ.get(RENDEZVOUS_ENV)
    if rendezvous_dir:  # a run on this machine only: a file, not rank 0's TCP store (on every interface)
        store = dist.FileStore(os.path.join(rendezvous_dir, f"{port}-{world_size}"), world_size)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        return
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)


def shard(
    policy: Policy,
    device: str,
    precision: str,
    reshard_after_forward: bool,
    group: dist.ProcessGroup | None = None,
) -> Policy:
    """`fully_shard` the policy's units and the policy over all ranks (or the ranks of `group`), in place;
    returns the policy.

    One CPU rank in fp32 keeps the plain module: there is nothing to shard or to reduce, and FSDP2's hooks
    cost time per forward and backward (a PushCube update of 32 mini-batches of the 3x256 MLP: 0.79 s
    sharded, 0.60 s plain, one core, December 6). Its state dicts have the same keys either way, so a
    checkpoint resumes on any number of ranks."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    ranks = dist.get_world_size(group)
    if ranks == 1 and device == "cpu" and precision == "fp32":
        return policy
    if group is None:
        mesh = init_device_mesh(device, (ranks,))
    else:
        mesh = DeviceMesh.from_group(group, device)
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for unit in policy.fsdp_units():
        fully_shard(unit, **kwargs)
    fully_shard(policy, **kwargs)
    # forward passes besides forward: they gather the shards too
    for method in ("evaluate", "supervised_loss"):
        register_fsdp_forward_method(policy, method)
    return policy


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """All ranks call this; rank 0 gets the full weights on CPU, the others an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every rank passes the full weights (e.g. read from a checkpoint file); each keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(strict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """All ranks call this; rank 0 gets the full optimizer state (keyed by parameter names) on CPU."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options())
