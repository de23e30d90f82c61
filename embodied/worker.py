"""Workers (Ray actors) and worker groups.

`Worker` is the base class of every env, rollout and actor worker. It knows its place (`WorkerInfo`: group,
rank, slot, CPU cores, device), pins itself to its cores, receives channel items into its mailbox, and runs
every method through `_invoke`, which times it and turns an exception into a `Failure` carrying the rank and
the worker's traceback.

`WorkerGroup` holds the ranks of one component. `group.call("train", ...)` (or `group.train(...)`) runs the
method on all ranks (or `ranks=[...]`) and returns a `GroupCall` at once; `.wait()` returns the results and
raises `WorkerError` naming the group, rank, method and the worker's traceback if any rank failed or died.
`wait_all(...)` waits on calls of several groups together and fails fast: when one worker dies, the driver
does not wait for its peers, which may be blocked on a channel that worker would have fed.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from embodied.channel import local_mailbox

MAX_CONCURRENCY = 8  # the main method, channel deliveries, and small queries run side by side


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker sits: its group and rank, its slot, CPU cores to pin to (None: no pinning), device."""

    group: str
    rank: int
    world_size: int
    slot: int
    cores: tuple[int, ...] | None
    device: str  # "cpu" or "cuda"
    num_threads: int
    niceness: int = 0  # the driver's; Ray starts workers at nice 15, which starves them on a busy machine


@dataclass
class Failure:
    """What `_invoke` returns instead of raising, so the driver can name the rank."""

    group: str
    rank: int
    method: str
    error: str
    traceback: str
    pid: int
    host: str


class WorkerError(RuntimeError):
    """A worker method failed or the worker died; the message names the group, rank and method."""


def exit_when_a_finalizer_is_told_to(unraisable) -> None:
    """sys.unraisablehook of a worker process. Ray stops a worker with SIGTERM, which its handler turns into
    SystemExit; when that lands in a finalizer (e.g. a Ray `ActorHandle.__del__` while the run tears down after
    a failure), Python prints it as "Exception ignored in ..." with a traceback, into the run's output, and the
    worker carries on. Exit as asked instead, quietly; every other unraisable error is printed as before."""
    if isinstance(unraisable.exc_value, SystemExit):
        code = unraisable.exc_value.code
        os._exit(code if isinstance(code, int) else 1)
    sys.__unraisablehook__(unraisable)


class Worker:
    """Base class of the runtime's Ray actors (see the module docstring)."""

    def __init__(self, info: WorkerInfo) -> None:
        self.info = info
        sys.unraisablehook = exit_when_a_finalizer_is_told_to
        if info.cores is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, info.cores)
        torch.set_num_threads(max(1, info.num_threads))
        try:
            os.setpriority(os.PRIO_PROCESS, 0, info.niceness)
        except (PermissionError, AttributeError):  # lowering niceness needs privileges; keep Ray's
            pass

    # -- called by WorkerGroup ----------------------------------------------------------------------------------
    def _invoke(self, method: str, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """Run `method`; returns (status, result): status is the seconds it took, or a Failure."""
        start = time.perf_counter()
        try:
            args = _resolve_refs(args)
            result = getattr(self, method)(*args, **kwargs)
        except BaseException as exc:  # noqa: B036 - every failure must reach the driver with its rank
            return (
                Failure(
                    self.info.group,
                    self.info.rank,
                    method,
                    f"{type(exc).__name__}: {exc}",
                    "" if getattr(exc, "diagnosed", False) else traceback.format_exc(),  # message says all
                    os.getpid(),
                    socket.gethostname(),
                ),
                None,
            )
        return time.perf_counter() - start, result

    def deliver(self, channel: str, key: Hashable, seq: int, item: Any) -> None:
        """A channel item for this worker (see embodied.channel)."""
        local_mailbox().deliver(channel, key, seq, item)

    def mailbox_address(self) -> tuple[str, str] | None:
        """Where producers on this machine reach this worker's mailbox without Ray (see embodied.channel)."""
        return local_mailbox().address()

    def process_info(self) -> dict[str, Any]:
        """pid, host, cores and the pids of this worker's child processes (env simulators)."""
        import psutil

        children = [p.pid for p in psutil.Process().children(recursive=True)]
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return {"pid": os.getpid(), "host": socket.gethostname(), "cores": cores, "children": children}

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(self, *args)` in this worker: measurements (embodied.profiler) and online scaling
        (embodied.scaling) live in their own modules and act on the worker's state through this."""
        return function(self, *args)

    def get_rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _resolve_refs(args: tuple) -> tuple:
    """Object refs passed as arguments (e.g. weights from another group) fetched from the object store."""
    import ray

    if not any(isinstance(a, ray.ObjectRef) for a in args):
        return args
    return tuple(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args)


class GroupCall:
    """A method running on some ranks of a group; wait for it with `wait()` or `wait_all`."""

    def __init__(self, group: WorkerGroup, method: str, ranks: list[int], status_refs, result_refs) -> None:
        self.group, self.method, self.ranks = group, method, ranks
        self.status_refs, self.result_refs = list(status_refs), list(result_refs)
        self.seconds: list[float] = []

    @staticmethod
    def _raise_for(status: Any) -> None:
        if isinstance(status, Failure):
            raise WorkerError(
                f"{status.group} worker rank {status.rank} (pid {status.pid} on {status.host}) failed in "
                f"{status.method}: {status.error}"
                + (f"\n\nWorker traceback:\n{status.traceback}" if status.traceback else "")
            )

    def _status(self, index: int) -> Any:
        import ray

        try:
            return ray.get(self.status_refs[index])
        except ray.exceptions.RayActorError as exc:
            raise WorkerError(
                f"{self.group.name} worker rank {self.ranks[index]} died while running {self.method} (its process "
                f"was killed or crashed, e.g. out of memory): {str(exc).splitlines()[0]}"
            ) from None

    def check(self) -> None:
        """Raise WorkerError if any rank failed; record the ranks' seconds."""
        self.seconds = []
        for i in range(len(self.ranks)):
            status = self._status(i)
            self._raise_for(status)
            self.seconds.append(float(status))
        self.group.timings[self.method] = max(self.seconds) if self.seconds else 0.0

    def wait(self) -> list[Any]:
        """The results of all ranks, in rank order."""
        wait_all(self)
        import ray

        return ray.get(self.result_refs)


def wait_all(*calls: GroupCall, timeout: float | None = None) -> None:
    """Wait for several group calls; raise the first failure as soon as it is known."""
    import ray

    owner = {}
    for call in calls:
        for i, ref in enumerate(call.status_refs):
            owner[ref] = (call, i)
    pending = list(owner)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not ready:
            names = sorted({f"{c.group.name}.{c.method}" for c, _ in (owner[r] for r in pending)})
            raise WorkerError(f"timed out after {timeout:.0f}s waiting for {', '.join(names)}")
        call, index = owner[ready[0]]
        call._raise_for(call._status(index))
    for call in calls:
        call.check()


class WorkerGroup:
    """The ranks of one component (Ray actor handles) and their `WorkerInfo`s."""

    def __init__(self, name: str, handles: Sequence[Any], infos: Sequence[WorkerInfo]) -> None:
        self.name = name
        self.handles = list(handles)
        self.infos = list(infos)
        self.timings: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.handles)

    def call(self, method: str, *args: Any, ranks: Sequence[int] | None = None, **kwargs: Any) -> GroupCall:
        """Run `method(*args, **kwargs)` on `ranks` (default: all); returns at once."""
        ranks = list(range(len(self.handles))) if ranks is None else list(ranks)
        status, results = [], []
        for r in ranks:
            s, res = self.handles[r]._invoke.options(num_returns=2).remote(method, args, kwargs)
            status.append(s)
            results.append(res)
        return GroupCall(self, method, ranks, status, results)

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.call(method, *args, **kwargs)

    def kill(self) -> None:
        import ray

        for handle in self.handles:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
