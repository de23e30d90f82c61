"""Atomic checkpoints and finding the one to resume from.

A checkpoint is a folder `<run_dir>/checkpoints/iter_<N>/`:

    policy/config.json, policy/model.safetensors   the weights in the Hugging Face layout (evaluates as is)
    optimizer.pt                                    the full optimizer state, keyed by parameter name
    actor.json, rng_actor_<rank>.pt, rng_rollout_<rank>.pt   weight version and the workers' RNG states
    state.json                                      counters (iteration, env steps, ...) and the driver's RNG
    config.yaml                                     the resolved run config

It is written into a hidden temporary folder that is renamed into place only when complete, then `latest`
is rewritten (write + rename), so a run killed at any moment leaves the previous checkpoint intact and never
a half-written one under a valid name.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
LATEST_FILE = "latest"
_NAME = re.compile(r"^iter_(\d+)$")


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

    def begin(self, iteration: int) -> Path:
        """A fresh temporary folder to fill; `commit` moves it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".iter_{iteration:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, iteration: int, counters: dict[str, Any], config_tree: dict) -> Path:
        """Write the counters, driver RNG and config, then rename the folder into place."""
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config_tree, sort_keys=False))
        torch.save(driver_rng_state(), tmp / "rng_driver.pt")
        _atomic_write_text(tmp / STATE_FILE, json.dumps({"iteration": iteration, **counters}, indent=2))
        final = self.root / f"iter_{iteration:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(self.root / LATEST_FILE, final.name + "\n")
        for old in list_checkpoints(self.root.parent)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def read_counters(checkpoint: Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def restore_driver_rng(checkpoint: Path) -> None:
    path = Path(checkpoint) / "rng_driver.pt"
    if path.is_file():
        set_driver_rng_state(torch.load(path, weights_only=False))


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
        raise FileNotFoundError(
            f"resume={resume!r}: no complete checkpoint there (expected a run folder with checkpoints/iter_*/ "
            "or a checkpoint folder iter_N/ containing state.json)"
        )
    return path, checkpoint
