"""The modules OpenVLA-OFT's released checkpoints keep beside the HF-layout weights.

OFT's fine-tuning script saves each extra module with `torch.save(module.state_dict(), ...)` as
`<module>--<step>_checkpoint.pt` (e.g. `proprio_projector--150000_checkpoint.pt`,
`action_head--150000_checkpoint.pt`), or as `<module>--latest_checkpoint.pt` when it keeps only the latest save. The modules were wrapped in DDP when
saved, so their parameter names usually carry a `module.` prefix (`module.fc1.weight`). The proprio projector is
`fc1` (proprio_dim -> llm_dim) -> GELU -> `fc2` (llm_dim -> llm_dim).

This policy reads the proprio projector from such a file when the safetensors weights lack it, and, with
`policy.action_head: l1`, OFT's continuous L1-regression action head (`action_head.py`); with the default
discrete action tokens it does not use the action head and says so.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from policies.base import load_state_dict_strict
from policies.openvla.checkpoint import weight_files

logger = logging.getLogger(__name__)

DDP_PREFIX = "module."
_STEP = re.compile(r"^(\d+)_checkpoint\.pt$")


def checkpoint_has_module(directory: str | Path, name: str) -> bool:
    """Whether the safetensors weights of `directory` hold tensors of module `name` (reads only the headers)."""
    from safetensors import safe_open

    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            if any(key.startswith(name + ".") for key in f.keys()):
                return True
    return False


def released_module_files(directory: str | Path, module: str) -> dict[int | None, list[Path]]:
    """OFT's `<module>--*.pt` files in `directory`, by the training step in their name (None: no step, as in
    `<module>--latest_checkpoint.pt`)."""
    files: dict[int | None, list[Path]] = {}
    for path in sorted(Path(directory).glob(f"{module}--*.pt")):
        match = _STEP.match(path.name.removeprefix(f"{module}--"))
        files.setdefault(int(match.group(1)) if match else None, []).append(path)
    return files


def pick_released_file(directory: str | Path, module: str, step: int | None) -> Path | None:
    """The `<module>--*.pt` file to read: the one of `step` when given, else the highest step; None when there is
    none. Raises when the choice is ambiguous (files without a step beside others) or `step` has no file."""
    files = released_module_files(directory, module)
    unnumbered = files.pop(None, [])
    names = ", ".join(p.name for p in [*unnumbered, *(paths[0] for paths in files.values())])
    if step is not None:
        if step not in files:
            raise FileNotFoundError(
                f"{directory} has no {module}--{step}_checkpoint.pt (it has: {names or 'none'}); set "
                f"policy.{module}_step to one of its steps, or to null for the highest"
            )
        return files[step][0]
    if unnumbered and (files or len(unnumbered) > 1):
        raise ValueError(
            f"{directory} holds several {module} files and not all name a step ({names}); keep only the one "
            f"to load, or set policy.{module}_step"
        )
    if unnumbered:
        return unnumbered[0]
    return files[max(files)][0] if files else None


def read_released_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a released `<module>--*.pt` file (tensors only), without DDP's `module.` prefix."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a state dict of tensors (as OFT's torch.save(module.state_dict()) writes)"
        )
    return {key.removeprefix(DDP_PREFIX): tensor for key, tensor in state.items()}


def load_released_module(module: nn.Module, name: str, path: str | Path, fix: str) -> None:
    """Copy the weights of OFT's `<name>--*.pt` file into `module` (cast to its dtype), strictly.

    Shapes are checked first, so that a mismatch names the parameter, both shapes and `fix` (what to change)."""
    state = {f"{name}.{k}": v for k, v in read_released_state(path).items()}
    own = {f"{name}.{k}": v for k, v in module.state_dict().items()}
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{path}: parameter {key!r} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model; {fix}"
            )
    load_state_dict_strict(nn.ModuleDict({name: module}), state, source=str(path))
    logger.info("OpenVLA-OFT: %s read from %s", name, path)


def load_released_proprio_projector(projector: nn.Module, path: str | Path, state_dim: int) -> None:
    """OFT's `proprio_projector--*.pt` into `projector` (fc1: proprio_dim -> llm_dim, fc2: llm_dim -> llm_dim)."""
    width = projector.fc2.weight.shape[0]
    load_released_module(
        projector,
        "proprio_projector",
        path,
        f"the env has state_dim={state_dim} and the language model width {width}; use an env whose states have "
        "the checkpoint's proprio_dim (OFT's LIBERO checkpoints: 8) and the checkpoint the file was trained with",
    )


def load_released_action_head(head: nn.Module, path: str | Path, action_dim: int, hidden_size: int) -> None:
    """OFT's `action_head--*.pt` (an `L1RegressionActionHead`) into `head`."""
    load_released_module(
        head,
        "action_head",
        path,
        f"the head reads action_dim x width = {action_dim} x {hidden_size} inputs per chunk step and writes "
        f"{action_dim} action dims; use an env with the checkpoint's action dims (OFT's LIBERO checkpoints: 7) and "
        "the checkpoint the file was trained with (its language model width: 4096 for OpenVLA-7B)",
    )


def note_unused_action_head(directory: str | Path) -> None:
    """Log, once per load, that OFT's continuous action head in `directory` is not used (discrete tokens)."""
    files = released_module_files(directory, "action_head")
    if files:
        name = next(iter(files.values()))[0].name
        logger.warning(
            "OpenVLA-OFT: %s in %s is ignored: it is OFT's L1-regression action head, and this policy decodes "
            "discrete action tokens from the language model head (which an L1-regression checkpoint did not "
            "train for actions); set policy.action_head=l1 to decode with it",
            name,
            directory,
        )
