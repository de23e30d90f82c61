"""The modules OpenVLA-OFT's released checkpoints keep beside the HF-layout weights.

OFT's fine-tuning script saves each extra module with `torch.save(module.state_dict(), ...)` as
`<module>--<step>_checkpoint.pt` (e.g. `proprio_projector--150000_checkpoint.pt`,
`action_head--150000_checkpoint.pt`), or as `<module>--latest_checkpoint.pt` when it keeps only the latest save. The modules were wrapped in DDP when
saved, so their parameter names usually carry a `module.` prefix (`module.fc1.weight`). The proprio projector is
`fc1` (proprio_dim -> llm_dim) -> GELU -> `fc2` (llm_dim -> llm_dim).

This policy reads the proprio projector from such a file when the safetensors weights lack it. It does not use
the action head: that is OFT's continuous L1-regression head, while this policy decodes discrete action tokens.
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
                "policy.proprio_projector_step to one of its steps, or to null for the highest"
            )
        return files[step][0]
    if unnumbered and (files or len(unnumbered) > 1):
        raise ValueError(
            f"{directory} holds several {module} files and not all name a step ({names}); keep only the one "
            "to load, or set policy.proprio_projector_step"
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


def load_released_proprio_projector(projector: nn.Module, path: str | Path, state_dim: int) -> None:
    """Copy the weights of OFT's `proprio_projector--*.pt` file into `projector` (cast to its dtype).

    Shapes are checked first, so that a mismatch names the parameter and says which side to change."""
    state = {f"proprio_projector.{k}": v for k, v in read_released_state(path).items()}
    own = {f"proprio_projector.{k}": v for k, v in projector.state_dict().items()}
    for name, tensor in state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{path}: parameter {name!r} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(own[name].shape)} in the model (env state_dim={state_dim}, language model width "
                f"{own['proprio_projector.fc2.weight'].shape[0]}); use an env whose states have the checkpoint's "
                "proprio_dim (OFT's LIBERO checkpoints: 8) and the checkpoint the file was trained with"
            )
    load_state_dict_strict(nn.ModuleDict({"proprio_projector": projector}), state, source=str(path))
    logger.info("OpenVLA-OFT: proprio projector read from %s", path)


def note_unused_action_head(directory: str | Path) -> None:
    """Log, once per load, that OFT's continuous action head in `directory` is not used."""
    files = released_module_files(directory, "action_head")
    if files:
        name = next(iter(files.values()))[0].name
        logger.warning(
            "OpenVLA-OFT: %s in %s is ignored: it is OFT's L1-regression action head, and this policy decodes "
            "discrete action tokens from the language model head (which an L1-regression checkpoint did not "
            "train for actions)",
            name,
            directory,
        )
