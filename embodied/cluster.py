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
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from algorithms.schema import ConfigError
from embodied import reaper
from embodied.config import COMPONENTS, ClusterConfig
from embodied.fsdp import RENDEZVOUS_ENV
from embodied.interrupt import reclaim
from embodied.placement import Placement, count_slots, resolve_placement, slot_cores
from embodied.worker import MAX_CONCURRENCY, WorkerGroup, WorkerInfo

log = logging.getLogger(__name__)
_CLUSTER_MODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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


@contextmanager
def _local_only(rendezvous_dir: str) -> Iterator[None]:
    """While an in-process Ray starts, nothing it or the workers open listens beyond 127.0.0.1:
    - Ray's single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, what Ray uses on macOS and Windows) keeps
      the loopback address as the node's, and Ray's servers then bind to it; on Linux Ray otherwise resolves
      even `_node_ip_address="127.0.0.1"` to the machine's address and listens on all interfaces;
    - the actor ranks meet through a file in `rendezvous_dir` (embodied.fsdp) instead of rank 0's TCP store,
      which listens on all interfaces.
    The variables reach the processes Ray starts from here; Ray's module constant is what this process read
    when it imported Ray. All are restored once Ray is up."""
    from ray._private import ray_constants

    saved = {name: os.environ.get(name) for name in (_CLUSTER_MODE_ENV, RENDEZVOUS_ENV)}
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update({_CLUSTER_MODE_ENV: "0", RENDEZVOUS_ENV: rendezvous_dir})
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant


# What a Cluster that started the in-process Ray hands to the next Cluster of this process when it leaves Ray
# up for it (embodied.profiler's placements, then the run's): the actor ranks' rendezvous folder (Ray's worker
# processes inherited its path when Ray started) and the reaper. `stop_ray` releases them with Ray.
_left_up: dict[str, Any] = {}


def _release(rendezvous_dir: str | None, reaper_process: subprocess.Popen | None) -> None:
    if rendezvous_dir is not None:
        shutil.rmtree(rendezvous_dir, ignore_errors=True)
    if reaper_process is not None:  # Ray is down: nothing left to watch
        reaper_process.terminate()
        reaper_process.wait()


def stop_ray() -> None:
    """Stop the in-process Ray (if up) and release what the Cluster that started it left with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _release(_left_up.pop("rendezvous_dir", None), _left_up.pop("reaper", None))


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
        self._rendezvous_dir: str | None = None  # embodied.fsdp's meeting point of the actor ranks
        self._reaper: subprocess.Popen | None = None  # embodied.reaper's watcher of this process
        if not ray.is_initialized():
            self._init_ray(config)
        else:  # joins the Ray a Cluster of this process left up: what it needs comes with it
            self._rendezvous_dir = _left_up.pop("rendezvous_dir", None)
            self._reaper = _left_up.pop("reaper", None)
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
            logging_level=logging.WARNING, log_to_driver=True, configure_logging=True
        )
        local = config.address is None and config.listen == "localhost"
        if config.address is None:
            kwargs["num_cpus"] = config.num_cpus or os.cpu_count()
            kwargs["include_dashboard"] = config.dashboard
            kwargs["dashboard_host"] = "127.0.0.1" if local else "0.0.0.0"
            if config.temp_dir:
                kwargs["_temp_dir"] = os.path.abspath(config.temp_dir)
        else:
            kwargs["address"] = config.address
        try:
            if local:
                self._rendezvous_dir = tempfile.mkdtemp(prefix="inflow-rendezvous-")
            with _local_only(self._rendezvous_dir) if local else nullcontext():
                ray.init(**kwargs)
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when its raylet starts too slowly
            startup = (ConnectionError, RuntimeError, ValueError, TimeoutError)
            if not isinstance(exc, startup) and "timed out during startup" not in str(exc):
                raise
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
        if self.started_ray:  # kills what Ray leaves behind if this process is killed (SIGKILL included)
            self._reaper = reaper.watch()
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
        if ray.is_initialized():  # left up for the next Cluster of this process (or for stop_ray)
            for key, value in (("rendezvous_dir", self._rendezvous_dir), ("reaper", self._reaper)):
                if value is not None:
                    _left_up[key] = value
        else:
            _release(self._rendezvous_dir, self._reaper)
        self._rendezvous_dir = None
        self._reaper = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def describe(self) -> str:
        kind = f"{self.num_gpus} GPU(s)" if self.num_gpus else f"{self.num_cpus:g} CPU(s), no GPU"
        return f"Ray cluster with {kind}; {self.placement.describe()}"
