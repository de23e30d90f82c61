"""The Ray cluster: started in-process on one machine, or joined by address (multi-node is Ray's job).

`Cluster` discovers the resources, turns them into slots (GPUs, or CPU shares on a machine without GPUs),
reserves one placement-group bundle per slot, and starts worker groups on the slots the placement gives
each component. Workers sharing a slot split its CPUs (and GPU) between them. Without GPUs, each worker is
pinned to the CPU cores of its slot, so a disaggregated placement really runs env and rollout on different
cores.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from algorithms.schema import ConfigError
from embodied.config import COMPONENTS, ClusterConfig
from embodied.interrupt import reclaim
from embodied.placement import Placement, count_slots, resolve_placement, slot_cores
from embodied.worker import MAX_CONCURRENCY, WorkerGroup, WorkerInfo

log = logging.getLogger(__name__)


def _floor4(x: float) -> float:
    """Resource shares rounded down to Ray's precision, so that k shares of a slot never exceed it."""
    return math.floor(x * 10_000) / 10_000


def _use_token_auth_if_available() -> None:
    """Ray 2.5x+ heads enable token authentication when a token exists (~/.ray/auth_token or RAY_AUTH_TOKEN),
    but a driver joining by address does not turn it on by itself: do so, unless RAY_AUTH_MODE says otherwise."""
    from pathlib import Path

    has_token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()
    if "RAY_AUTH_MODE" not in os.environ and has_token:
        os.environ["RAY_AUTH_MODE"] = "token"


class ClusterError(RuntimeError):
    """Ray could not be started or joined, or could not place the workers."""


class Cluster:
    """Ray, the slots and the placement group; `spawn` starts a worker group. Use as a context manager."""

    def __init__(self, config: ClusterConfig, components: tuple[str, ...] = COMPONENTS) -> None:
        if config.address is not None:
            _use_token_auth_if_available()  # before Ray is imported: it reads the mode once
        import ray

        self.config = config
        self.started_ray = False
        self.groups: list[WorkerGroup] = []
        self._placement_group = None
        if not ray.is_initialized():
            self._init_ray(config)
        resources = ray.cluster_resources()
        self.num_gpus = int(resources.get("GPU", 0))
        self.num_cpus = float(resources.get("CPU", 0))
        self.device = "cuda" if self.num_gpus else "cpu"
        try:
            num_slots = count_slots(config, self.num_gpus, self.num_cpus)
            self.placement: Placement = resolve_placement(config, num_slots, components)
        except ConfigError:
            self.shutdown()
            raise
        self._reserve_slots()

    def _init_ray(self, config: ClusterConfig) -> None:
        import ray

        kwargs: dict[str, Any] = dict(
            include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True, configure_logging=True
        )
        if config.address is None:
            kwargs["num_cpus"] = config.num_cpus or os.cpu_count()
            if config.temp_dir:
                kwargs["_temp_dir"] = os.path.abspath(config.temp_dir)
        else:
            kwargs["address"] = config.address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            if config.address:
                hint = "Is `ray start --head` running there, with the same Ray and Python versions as here?"
                raise ClusterError(
                    f"could not join the Ray cluster at {config.address}: {exc}\n{hint}"
                ) from exc
            hint = (
                "Ray's own processes did not come up; on an overloaded machine, try again when it is quieter."
            )
            raise ClusterError(f"could not start Ray in-process: {exc}\n{hint}") from exc
        self.started_ray = config.address is None
        reclaim()  # ray.init installs its own SIGTERM handler; the run's (embodied.interrupt) stays in charge

    # -- slots --------------------------------------------------------------------------------------------------
    @property
    def cpus_per_slot(self) -> float:
        return self.num_cpus / self.placement.num_slots

    def _reserve_slots(self) -> None:
        import ray
        from ray.util.placement_group import placement_group

        bundle: dict[str, float] = {"CPU": self.cpus_per_slot}
        if self.num_gpus:
            bundle["GPU"] = 1
        self._placement_group = placement_group(
            [dict(bundle) for _ in range(self.placement.num_slots)], "PACK"
        )
        ready, _ = ray.wait([self._placement_group.ready()], timeout=self.config.startup_timeout_s)
        if not ready:
            self.shutdown()
            raise ClusterError(
                f"Ray could not reserve {self.placement.num_slots} slots of {bundle} within "
                f"{self.config.startup_timeout_s:.0f}s (cluster: {self.num_cpus:g} CPUs, {self.num_gpus} GPUs); "
                "lower cluster.num_slots or free resources"
            )

    def _info(self, component: str, rank: int, slot: int) -> WorkerInfo:
        slots = self.placement.slots[component]
        cores = None
        if not self.num_gpus and self.config.pin_cpus and hasattr(os, "sched_getaffinity"):
            cores = tuple(slot_cores(slot, self.placement.num_slots, sorted(os.sched_getaffinity(0))))
        threads = len(cores) if cores else max(1, int(self.cpus_per_slot))
        return WorkerInfo(component, rank, len(slots), slot, cores, self.device, threads, os.nice(0))

    def spawn(self, component: str, worker_class: type, *args: Any) -> WorkerGroup:
        """Start one `worker_class(info, *args)` actor per slot of `component`; returns when all are up."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        remote_class = ray.remote(worker_class)
        handles, infos = [], []
        for rank, slot in enumerate(self.placement.slots[component]):
            share = 1.0 / self.placement.workers_on(slot)
            info = self._info(component, rank, slot)
            options: dict[str, Any] = dict(
                num_cpus=_floor4(self.cpus_per_slot * share),
                max_concurrency=MAX_CONCURRENCY,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._placement_group, placement_group_bundle_index=slot
                ),
            )
            if self.num_gpus:
                options["num_gpus"] = _floor4(share)
            handles.append(remote_class.options(**options).remote(info, *args))
            infos.append(info)
        group = WorkerGroup(component, handles, infos)
        self.groups.append(group)
        return group

    def ready(self, groups: Sequence[WorkerGroup]) -> None:
        """Wait until the workers of `groups` have finished their constructors (raises their errors)."""
        from embodied.worker import WorkerError, wait_all

        try:
            wait_all(*[g.call("process_info") for g in groups], timeout=self.config.startup_timeout_s)
        except WorkerError as exc:
            if "timed out" not in str(exc):
                raise
            raise ClusterError(
                f"workers did not start within cluster.startup_timeout_s={self.config.startup_timeout_s:.0f}s "
                f"({exc}); Ray could not place them on {self.placement.describe()} with "
                f"{self.cpus_per_slot:g} CPU(s) per slot, or their set-up is stuck"
            ) from None

    # -- teardown -----------------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Kill the workers, release the slots, and stop Ray if this process started it."""
        import ray

        for group in self.groups:
            group.kill()
        self.groups = []
        if self._placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self._placement_group)
            except Exception:  # noqa: BLE001 - Ray may already be going down
                pass
            self._placement_group = None
        if self.started_ray and ray.is_initialized():
            ray.shutdown()
            self.started_ray = False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def describe(self) -> str:
        kind = f"{self.num_gpus} GPU(s)" if self.num_gpus else f"{self.num_cpus:g} CPU(s), no GPU"
        return f"Ray cluster with {kind}; {self.placement.describe()}"
