"""Atomic checkpoints and finding the one to resume from.

A checkpoint is a folder `<run_dir>/checkpoints/iter_<N>/`:

    policy/config.json, policy/model.safetensors   the weights in the Hugging Face layout (evaluates as is)
    optimizer.pt                                    the full optimizer state, keyed by parameter name
    actor.json, rng_actor_<rank>.pt, rng_rollout_<rank>.pt   weight version and the workers' RNG states
    state.json                                      counters (iteration, env steps, ...) and the driver's RNG
    config.yaml                                     the resolved run config

It is written into a hidden temporary folder that is renamed into place only when complete, then `latest`
is rewritten (write + rename), so a run killed at any moment leaves the previous checkpoint intact and never
a half-written one under a valid name. A write that fails (a full disk) removes its temporary folder and
raises `CheckpointWriteError` naming the folder and the space needed; the previous checkpoint stays.

Layout versions: 1 (no `layout` key in state.json) and 2 (`layout: 2` and `files`, the size of every file,
so that a truncated file is named). Both load. Loading never runs code from a file: the `.pt` files are read
with `torch.load(weights_only=True)` (tensors and plain containers only; `load_torch_file`), and anything
else in them is refused with a `CheckpointError` naming the file. `embodied.checkpoint_check` verifies a
checkpoint folder before any worker starts.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from embodied import faults

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "latest"
OPTIMIZER_FILE = "optimizer.pt"  # written by actor rank 0
ACTOR_FILE = "actor.json"  # the actor's weight version
LAYOUT_VERSION = 2  # state.json's `layout`; 1 when absent (checkpoints written before versions existed)
_NAME = re.compile(r"^iter_(\d+)$")
_TMP = re.compile(r"^\.iter_\d+\.tmp$")
# the numpy RNG state (a uint32 array) in rng_driver.pt: array reconstruction only, which runs no code
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
_NUMPY_ARRAY_GLOBALS = (_NUMPY_CORE.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType)
# how a full disk (or a file-size limit) shows in errors that lost their errno (torch's zip writer, safetensors)
NEARLY_FULL = 1 << 20  # bytes free after a failed checkpoint write that mean the disk filled up
_DISK_FULL_TEXT = (
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
    "StorageFull",
    "file write failed",
)


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be used: missing, truncated, from another policy or layout
    version, or holding Python objects that loading would have to execute. The message names the file."""

    diagnosed = True  # the message says all: workers report it without their traceback


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the previous checkpoint is intact."""


def load_torch_file(path: Path, mmap: bool = False) -> Any:
    """A `.pt` file of a checkpoint (optimizer state, RNG states) loaded without running code from it:
    `torch.load(weights_only=True)` accepts tensors, numbers, strings and containers of them (plus numpy's RNG
    state arrays), and refuses anything else, e.g. a pickle that would call a function while loading.
    `mmap=True` maps the tensors instead of reading them (a cheap full check of the file's structure)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(_NUMPY_ARRAY_GLOBALS)), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Detected pickle protocol"
            )  # a foreign pickle: refused below
            mmap = mmap and zipfile.is_zipfile(
                path
            )  # torch's own format; any other is read (and judged) whole
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain values{what}, "
            "which loading would have to execute. Checkpoints of this suite never do; do not load a file from "
            "an untrusted source."
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} cannot be read ({reason}): the file is truncated or damaged") from None


def driver_rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_driver_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def file_sizes(folder: Path) -> dict[str, int]:
    """{path relative to `folder`: bytes} of every file in it (the `files` of a layout-2 state.json)."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()
    }


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it, or a worker's error text) says the disk or a file-size limit is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if any(text in str(seen) for text in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def is_complete(folder: Path) -> bool:
    return _NAME.match(folder.name) is not None and (folder / STATE_FILE).is_file()


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class Checkpointer:
    """Writes checkpoints of one run folder and keeps the newest `keep`."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(
        self,
        iteration: int,
        write_state: Callable[[Path], None],
        counters: dict[str, Any],
        config_tree: dict,
    ) -> Path:
        """A whole checkpoint: `write_state(folder)` fills a temporary folder (weights, optimizer, RNG), then
        `commit`. Raises CheckpointWriteError before writing when the disk has less room than the newest
        checkpoint takes, or when a write fails for lack of space; the temporary folder is removed and the
        previous checkpoint stays intact."""
        previous = latest_checkpoint(self.root.parent)
        self.root.mkdir(parents=True, exist_ok=True)
        needed = folder_bytes(previous) if previous is not None else 0
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise CheckpointWriteError(self._no_room(iteration, previous, needed, free, written=None))
        tmp = self.begin(iteration)
        try:
            write_state(tmp)
            if faults.due("checkpoint.slow"):
                time.sleep(2.0)
            return self.commit(tmp, iteration, counters, config_tree)
        except Exception as exc:
            written = folder_bytes(tmp) if tmp.is_dir() else 0
            # errors of a full disk do not always say so (torch's zip writer: "unexpected pos", "iostream error")
            full = is_disk_full(exc) or shutil.disk_usage(self.root).free < NEARLY_FULL
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                free = shutil.disk_usage(self.root).free
                raise CheckpointWriteError(self._no_room(iteration, previous, needed, free, written)) from exc
            raise

    def _no_room(
        self, iteration: int, previous: Path | None, needed: int, free: int, written: int | None
    ) -> str:
        if previous is not None:
            need = f"it needs about {_mib(needed)} (the size of {previous.name})"
            kept = (
                f"the previous checkpoint {previous} is intact and loadable (resume=auto continues from it)"
            )
        else:
            need = f"it needs more than the {_mib(written or 0)} written before the disk filled"
            kept = "no checkpoint was written before, so nothing is lost beyond this run's iterations"
        when = "" if written is None else f" (the write failed after {_mib(written)}; that part was removed)"
        return (
            f"no room for checkpoint iter_{iteration:06d} in {self.root}: {need}, {_mib(free)} are free{when}. "
            f"Free space on that disk or set run.output_dir to a disk with room; {kept}."
        )

    def begin(self, iteration: int) -> Path:
        """A fresh temporary folder to fill; `commit` moves it into place. Leftovers of a killed write go."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.iterdir():
            if _TMP.match(stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".iter_{iteration:06d}.tmp"
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, iteration: int, counters: dict[str, Any], config_tree: dict) -> Path:
        """Write the counters, driver RNG, config and file sizes, then rename the folder into place."""
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config_tree, sort_keys=False))
        torch.save(driver_rng_state(), tmp / "rng_driver.pt")
        state = {"layout": LAYOUT_VERSION, "iteration": iteration, **counters, "files": file_sizes(tmp)}
        _atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
        final = self.root / f"iter_{iteration:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(self.root / LATEST_FILE, final.name + "\n")
        for old in list_checkpoints(self.root.parent)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def read_counters(checkpoint: Path) -> dict[str, Any]:
    """state.json: iteration, env steps, wall seconds, ... (and for layout 2: `layout` and `files`)."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc}): the checkpoint is damaged") from None
    if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
        raise CheckpointError(f"{path} has no iteration counter: the checkpoint is damaged")
    return state


def restore_driver_rng(checkpoint: Path) -> None:
    path = Path(checkpoint) / "rng_driver.pt"
    if path.is_file():
        set_driver_rng_state(load_torch_file(path))


def find_resume(resume: str, runs_of_name: Path) -> tuple[Path, Path] | None:
    """(run folder, checkpoint folder) that `resume` names, or None for `auto` without any checkpoint.

    `auto`: the newest checkpoint among the runs in `runs_of_name` (<output_dir>/<run.name>); a path: a
    checkpoint folder, or a run folder (its newest checkpoint).
    """
    if resume == "auto":
        runs = sorted((p for p in Path(runs_of_name).glob("*") if p.is_dir()), key=lambda p: p.name)
        for run_dir in reversed(runs):
            checkpoint = latest_checkpoint(run_dir)
            if checkpoint is not None:
                return run_dir, checkpoint
        return None
    path = Path(resume).resolve()
    if is_complete(path):
        return path.parent.parent, path
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(
            f"resume={resume!r}: no complete checkpoint there (expected a run folder with checkpoints/iter_*/ "
            "or a checkpoint folder iter_N/ containing state.json)"
        )
    return path, checkpoint
