"""Is a checkpoint folder usable? Checked on the driver before Ray or a simulator starts (`resume=`).

`verify_checkpoint` reads only headers and mapped files (cheap even for large models) and raises
`CheckpointError` naming the file and the mismatch:

    truncated       a file shorter than state.json recorded (layout 2), a safetensors file shorter than its
                    header says, a `.pt` archive without its end (torch's zip directory)
    another layout  state.json's `layout` newer than this code reads
    another policy  policy/config.json names another policy, or its parameters' names or shapes differ from
                    the policy config's; optimizer.pt holds state of parameters the policy does not have
    unsafe          a `.pt` file holding Python objects that loading would execute (`load_torch_file`)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from embodied.checkpoint import (
    ACTOR_FILE,
    LAYOUT_VERSION,
    OPTIMIZER_FILE,
    STATE_FILE,
    CheckpointError,
    load_torch_file,
    read_counters,
)
from policies.base import CONFIG_NAME, WEIGHTS_NAME, PolicyConfig

REQUIRED_FILES = (f"policy/{CONFIG_NAME}", f"policy/{WEIGHTS_NAME}", OPTIMIZER_FILE, ACTOR_FILE)


def verify_checkpoint(folder: Path, policy: PolicyConfig | None = None) -> dict[str, Any]:
    """Raise CheckpointError unless `folder` is a complete, undamaged training checkpoint of a layout this
    code reads (and, given `policy`, one whose weights and optimizer state fit that policy config).
    Returns its state.json."""
    folder = Path(folder)
    state = read_counters(folder)
    layout = state.get("layout", 1)
    if not isinstance(layout, int) or layout > LAYOUT_VERSION:
        raise CheckpointError(
            f"{folder / STATE_FILE}: checkpoint layout version {layout!r}, but this code reads versions 1 to "
            f"{LAYOUT_VERSION}: it was written by a newer version of this suite; resume it with that version"
        )
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name} is missing: the checkpoint is incomplete")
    _check_sizes(folder, state.get("files"))
    _check_safetensors(folder / "policy" / WEIGHTS_NAME)
    tensors = {p: load_torch_file(p, mmap=True) for p in sorted(folder.glob("*.pt"))}
    _check_actor_json(folder / ACTOR_FILE)
    if policy is not None:
        _check_policy(folder, policy, tensors[folder / OPTIMIZER_FILE])
    return state


def _check_sizes(folder: Path, recorded: Any) -> None:
    """Layout 2: every file as big as when the checkpoint was committed."""
    if recorded is None:
        return
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
        actual = path.stat().st_size
        if actual != size:
            what = "truncated" if actual < size else "changed since it was written"
            raise CheckpointError(
                f"{path} is {what}: {actual:,} bytes, but {size:,} when the checkpoint was committed"
            )


def _check_safetensors(path: Path) -> None:
    """The file holds its header and every tensor the header lists (safetensors: 8-byte header length, the
    JSON header, then the data; each tensor's `data_offsets` are relative to the data's start)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError(f"its header claims {header_len:,} bytes")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}): truncated or damaged"
        ) from None
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: {size:,} bytes, but its header lists tensors up to byte {8 + header_len + end:,}"
        )


def _check_actor_json(path: Path) -> None:
    try:
        version = json.loads(path.read_text())["version"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}): the checkpoint is damaged") from None
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: the weight version {version!r} is not an integer")


def _check_policy(folder: Path, policy: PolicyConfig, optimizer: dict) -> None:
    """The weights fit `policy` (names, shapes, policy type); the optimizer's parameters are the policy's."""
    from embodied.eval_checkpoint import check_policy_matches, parameter_shapes

    advice = f"resume with the policy config the run was trained with ({folder / 'config.yaml'})"
    spec, _ = check_policy_matches(folder / "policy", policy, advice)
    expected = parameter_shapes(policy, spec)
    if expected is None:  # built only with real memory: the actor's strict load checks
        return
    path = folder / OPTIMIZER_FILE
    try:
        names = [name for group in optimizer["param_groups"] for name in group["params"]]
    except (KeyError, TypeError):
        raise CheckpointError(
            f"{path} is not an optimizer state (no param_groups with parameter names)"
        ) from None
    foreign = [n for n in names if n not in expected]
    if foreign:
        raise CheckpointError(
            f"{path} holds optimizer state of {len(foreign)} parameter(s) the policy does not have (e.g. "
            f"{foreign[0]!r}): it was written for another policy config"
        )
