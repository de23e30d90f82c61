"""What can be checked from the config and the disk, checked before Ray or a simulator starts.

A mistake found here costs the user nothing: no Ray start-up (3-8 s), no simulator, no worker traceback, no
run folder. `check_before_start` raises ConfigError (a key whose value cannot work) or CheckpointError (the
checkpoint `resume=` names is damaged or does not fit the policy), both exit code 2:

    paths      the files and folders the config names exist (policy.pretrained, tokenizers, data files);
               actor.demos can be read and was recorded in the run's env
    slots      the placement fits this machine's slots (in-process Ray: its GPUs, else its CPUs or
               cluster.num_slots); joining a cluster by address, only the syntax can be checked here
    routing    env.num_envs, env.group_size and rollout.pipeline_stages divide over the workers
    resume     the checkpoint is complete, of a layout this code reads, and fits the policy config
    output     run.output_dir can be written

It imports neither Ray nor a simulator.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from algorithms.schema import Config, ConfigError
from embodied.config import COMPONENTS, MAX_SLOTS, TrainConfig
from embodied.placement import Placement, count_slots, parse_slots, resolve_placement
from embodied.routing import plan_for_placement

REPO = Path(__file__).resolve().parents[1]
# config keys (by their last part) that name a file or folder on this machine; a value of `tokenizer` names a
# path only when it looks like one (otherwise it is a built-in tokenizer's name, e.g. word or builtin)
PATH_KEYS = ("pretrained", "data_file", "norm_stats", "tokenizer")
_ALWAYS_PATHS = ("pretrained", "data_file", "norm_stats")


def check_before_start(
    config: TrainConfig,
    resume_target: tuple[Path, Path] | None = None,
    components: tuple[str, ...] = COMPONENTS,
) -> None:
    """Raise ConfigError or CheckpointError for the first thing that cannot work (see the module docstring).
    `resume_target`: (run folder, checkpoint) that `resume=` names; `components`: those the run starts."""
    check_paths(config)
    if "actor" in components and hasattr(config, "actor"):
        from embodied.demo_term import check_demo_config

        check_demo_config(config)
    placement = check_slots(config, components)
    if placement is not None:
        check_routing(config, placement)
    if resume_target is not None:
        from embodied.checkpoint_check import verify_checkpoint

        verify_checkpoint(resume_target[1], config.policy)
    check_output_dir(Path(config.run.output_dir))


def resolve_path(value: str) -> Path | None:
    """The existing path `value` names, as the policies and envs resolve it: as given (`~` expanded), else
    relative to the repository root; None if neither exists."""
    path = Path(value).expanduser()
    for candidate in (path, REPO / path):
        if candidate.exists():
            return candidate
    return None


def check_paths(config: Config, prefix: str = "") -> None:
    """Every PATH_KEYS value in the config tree names something that exists."""
    import dataclasses

    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{prefix}{field.name}"
        if isinstance(value, Config):
            check_paths(value, f"{key}.")
            continue
        if field.name not in PATH_KEYS or not isinstance(value, str) or not _names_a_path(field.name, value):
            continue
        if resolve_path(value) is None:
            where = f"{Path(value).expanduser()}" + (
                "" if Path(value).is_absolute() else f" or {REPO / value}"
            )
            raise ConfigError(
                f"{key}={value!r}: no such file or folder (looked for {where}). "
                f"{field.metadata.get('help', '')}".rstrip()
            )


def _names_a_path(name: str, value: str) -> bool:
    return name in _ALWAYS_PATHS or os.sep in value or value.startswith((".", "~"))


def check_slots(config: TrainConfig, components: tuple[str, ...] = COMPONENTS) -> Placement | None:
    """The placement on the slots an in-process Ray will have; None when joining a cluster by address, whose
    slots are known only once joined (the slot sets' syntax is still checked)."""
    cluster = config.cluster
    if cluster.auto:  # no placement yet: auto placement keeps only candidates whose envs split (plan.py)
        return None
    if cluster.address is not None:
        for component in components:
            parse_slots(cluster.component_placement[component], MAX_SLOTS, component)
        return None
    num_slots = count_slots(cluster, _visible_gpus(), cluster.num_cpus or os.cpu_count() or 1)
    return resolve_placement(cluster, num_slots, components)


def _visible_gpus() -> int:
    """GPUs an in-process Ray will see (CUDA_VISIBLE_DEVICES respected)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def check_routing(config: TrainConfig, placement: Placement) -> None:
    """The envs divide over the workers the placement gives; an error says where the worker counts came from."""
    try:
        plan_for_placement(placement.slots, config.env, config.rollout.pipeline_stages)
    except ConfigError as exc:
        cluster = config.cluster
        if cluster.num_slots is not None:
            origin = f"cluster.num_slots={cluster.num_slots}"
        elif _visible_gpus():
            origin = "one per GPU"
        else:
            origin = f"one per CPU, cluster.num_cpus={cluster.num_cpus}" + (
                " (all)" if cluster.num_cpus is None else ""
            )
        workers = ", ".join(
            f"{c} {len(s)} on cluster.component_placement.{c}" for c, s in placement.slots.items()
        )
        context = f" (workers: {workers}; {placement.num_slots} slots: {origin})"
        raise ConfigError(str(exc).replace("{", "{{").replace("}", "}}") + context) from None


def check_output_dir(output_dir: Path) -> None:
    """The run folder can be created: a folder can be made in its nearest existing ancestor (it is removed
    again; permission bits alone do not tell, e.g. for root or on a read-only mount)."""
    root = output_dir.expanduser() if output_dir.is_absolute() else REPO / output_dir
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        os.rmdir(tempfile.mkdtemp(prefix=".inflow-write-check-", dir=existing))
    except OSError as exc:
        raise ConfigError(
            f"run.output_dir={str(output_dir)!r}: cannot write there ({exc}); choose a folder you can write"
        ) from None
