"""Moving weights and optimizer state between GPU and CPU (collocated GPU placements take turns).

In a collocated placement on GPUs the rollout and actor workers share each GPU; the one that is idle moves
its weights (and the actor its optimizer state) to CPU memory so the active one has the GPU's memory, and
moves them back when its turn comes. On CPU these are no-ops. FSDP2-sharded modules move their local shards
(`module.to` handles DTensor parameters).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@torch.no_grad()
def move_module(module: nn.Module, device: str | torch.device) -> None:
    module.to(device)


@torch.no_grad()
def move_optimizer(optimizer: torch.optim.Optimizer, device: str | torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device, non_blocking=True)


def release_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


@contextmanager
def resident(
    module: nn.Module, device: torch.device, offload: bool, optimizer: torch.optim.Optimizer | None = None
) -> Iterator[None]:
    """Within the block, `module` (and `optimizer`) live on `device`; with `offload`, on CPU before and after."""
    if not offload:
        yield
        return
    move_module(module, device)
    if optimizer is not None:
        move_optimizer(optimizer, device)
    try:
        yield
    finally:
        move_module(module, "cpu")
        if optimizer is not None:
            move_optimizer(optimizer, "cpu")
        release_cache()
