"""N envs split over worker processes, one message per worker per action chunk.

Simulators whose CPU backend holds one env per process (ManiSkill3, LIBERO) vectorise here: each worker
process runs an `EpisodeVectorEnv` over its own `EnvBatch` (a contiguous slice of the envs), so the episode
logic is the same code as in-process. The parent sends each worker its slice of the whole chunk [n, C, A] in
one message and concatenates the replies; with a 1-2 ms physics step, per-step messages would cost as much as
the physics (gymnasium's AsyncVectorEnv measured ~1.15x on 2 processes here).

Initial-state ids (group-shared, or a fixed evaluation list) are drawn in the parent and sliced to the
workers; auto-resets draw from a key the parent hands out at reset (see `envs.base.InitialStateStream`), so a
seed gives the same episodes whatever `num_workers` is.

Workers start with the `spawn` method (forking after torch/SAPIEN initialised is fragile), are daemons, and
watch their parent: they exit when it dies, so no simulator outlives the process that owns it. A worker's
exception is re-raised in the parent as `EnvWorkerError` with the worker's traceback, after all workers stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from envs.base import (
    EnvConfig,
    EnvSpec,
    EpisodeVectorEnv,
    InitialStateStream,
    Obs,
    VectorEnv,
    check_initial_state_ids,
    env_registry,
    stack_obs,
)

_CONTEXT = mp.get_context("spawn")
_JOIN_TIMEOUT_S = 5.0


_STARTUP_HINT = (
    " while starting. Workers start with multiprocessing's spawn method and import your main module again: "
    'a script that builds envs must do so under `if __name__ == "__main__":`'
)


class EnvWorkerError(RuntimeError):
    """An env worker process failed; the message carries the worker's own error and traceback."""


def split_envs(num_envs: int, num_workers: int) -> list[range]:
    """Contiguous, balanced slices of the env indices, one per worker (the first ones get the remainder)."""
    base, extra = divmod(num_envs, num_workers)
    bounds = np.cumsum([0] + [base + (w < extra) for w in range(num_workers)])
    return [range(int(bounds[w]), int(bounds[w + 1])) for w in range(num_workers)]


# -- what crosses the pipe: numpy arrays (pickle protocol 5 copies them fast), lists and dicts ---------------
def to_numpy_tree(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().numpy()
    if isinstance(tree, dict):
        return {k: to_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(to_numpy_tree(v) for v in tree)
    return tree


def to_torch_tree(tree: Any) -> Any:
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree)
    if isinstance(tree, dict):
        return {k: to_torch_tree(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(to_torch_tree(v) for v in tree)
    return tree


# -- the worker side ---------------------------------------------------------------------------------------
def _exit_when_orphaned(parent_pid: int) -> None:
    """Daemon thread: end this worker as soon as its parent is gone (even mid-step)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn, parent_pid: int, config: EnvConfig, make_batch, env_ids: list[int]) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    torch.set_num_threads(1)  # one simulator per core; torch ops here are tiny
    env = None
    try:
        env = EpisodeVectorEnv(config, make_batch(config, env_ids), first_env=env_ids[0])
        conn.send(("ok", env.spec))
        while True:
            command, payload = conn.recv()
            if command == "chunk_step":
                conn.send(("ok", to_numpy_tree(env.chunk_step(torch.from_numpy(payload)))))
            elif command == "reset_to":
                conn.send(("ok", to_numpy_tree(env.reset_to(*payload))))
            elif command == "record_step_frames":
                conn.send(("ok", env.record_step_frames(payload)))
            elif command == "close":
                break
            else:
                raise ValueError(f"unknown worker command {command!r}")
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the parent went away or is shutting down
    except BaseException as exc:  # noqa: B036 - every failure must reach the parent
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if env is not None:
            env.close()
        conn.close()
    # The simulators are closed; skip the interpreter's teardown, which takes seconds of CPU with
    # torch + SAPIEN loaded (and would make close() wait on, or terminate, the workers).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the parent side ---------------------------------------------------------------------------------------
def _shutdown(processes: list, conns: list) -> None:
    """Ask workers to stop, then terminate/kill whatever is left. Idempotent; used by close() and finalizers."""
    for conn, proc in zip(conns, processes):
        if proc.is_alive():
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
    deadline = time.monotonic() + _JOIN_TIMEOUT_S
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    for conn in conns:
        conn.close()


class ProcessVectorEnv(VectorEnv):
    """`config.num_envs` envs over `config.num_workers` spawned worker processes (see the module docstring)."""

    def __init__(self, config: EnvConfig, make_batch=None) -> None:
        self.config = config
        self.num_envs = config.num_envs
        make_batch = make_batch or env_registry.get(config.name).make_batch
        self.slices = split_envs(config.num_envs, config.num_workers)
        self._processes: list = []
        self._conns: list = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns)
        for worker_id, env_ids in enumerate(self.slices):
            parent_conn, child_conn = _CONTEXT.Pipe()
            proc = _CONTEXT.Process(
                target=_worker_main,
                name=f"inflow-env-{config.name}-{worker_id}",
                daemon=True,
                args=(child_conn, os.getpid(), config, make_batch, list(env_ids)),
            )
            proc.start()
            child_conn.close()  # so the parent sees EOF when the worker dies
            self._processes.append(proc)
            self._conns.append(parent_conn)
        self._started = False
        specs: list[EnvSpec] = self._receive_all()
        self._started = True
        self.spec = specs[0]
        self.stream = InitialStateStream(
            config.seed, config.num_envs, config.group_size, self.spec.num_initial_states
        )
        self._reset_done = False

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    # -- messaging --------------------------------------------------------------------------------------------
    def _receive_all(self) -> list:
        """One reply per worker; if any failed, stop all workers and raise its error with its traceback."""
        replies, failure = [], None
        for worker_id, conn in enumerate(self._conns):
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                proc = self._processes[worker_id]
                proc.join(1.0)
                hint = "" if self._started else _STARTUP_HINT
                reply = ("error", f"the process died (exit code {proc.exitcode}){hint}", "")
            if reply[0] == "error" and failure is None:
                failure = (worker_id, reply)
            replies.append(reply[1] if reply[0] == "ok" else None)
        if failure is not None:
            self.close()
            worker_id, (_, message, worker_traceback) = failure
            envs = self.slices[worker_id]
            raise EnvWorkerError(
                f"env worker {worker_id} (envs {envs.start}-{envs.stop - 1} of {self.config.name!r}) failed: "
                f"{message}" + (f"\n\nWorker traceback:\n{worker_traceback}" if worker_traceback else "")
            )
        return replies

    def _send_all(self, command: str, payloads: Sequence[Any]) -> list:
        if self._closed:
            raise RuntimeError("this env is closed")
        for conn, payload in zip(self._conns, payloads):
            conn.send((command, payload))
        return self._receive_all()

    # -- the API ----------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, initial_state_ids: Sequence[int] | None = None) -> Obs:
        ids, key = self.stream.draw_reset(seed)
        if initial_state_ids is not None:
            ids = check_initial_state_ids(initial_state_ids, self.num_envs, self.spec.num_initial_states)
        parts = self._send_all("reset_to", [(ids[s.start : s.stop], key) for s in self.slices])
        self._reset_done = True
        return stack_obs([to_torch_tree(p) for p in parts])

    def chunk_step(self, actions: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        if not self._reset_done:
            raise RuntimeError("call reset() before chunk_step()")
        actions = torch.as_tensor(actions)
        n, a = self.num_envs, self.spec.action_dim
        if actions.ndim != 3 or actions.shape[0] != n or actions.shape[2] != a:
            raise ValueError(f"actions must be [N={n}, C, A={a}], got {tuple(actions.shape)}")
        actions_np = actions.detach().cpu().numpy()
        parts = [
            to_torch_tree(p)
            for p in self._send_all("chunk_step", [actions_np[s.start : s.stop] for s in self.slices])
        ]
        obs = stack_obs([p[0] for p in parts])
        rewards, terminations, truncations = (torch.cat([p[i] for p in parts]) for i in (1, 2, 3))
        infos = [p[4] for p in parts]
        merged = {
            "episode_done": torch.cat([i["episode_done"] for i in infos]),
            "final_observation": stack_obs([i["final_observation"] for i in infos]),
            "episode": {k: torch.cat([i["episode"][k] for i in infos]) for k in infos[0]["episode"]},
            "success": torch.cat([i["success"] for i in infos]),
        }
        if "frames" in infos[0]:
            merged["frames"] = torch.cat([i["frames"] for i in infos])
        return obs, rewards, terminations, truncations, merged

    def record_step_frames(self, enabled: bool) -> None:
        if enabled and self.spec.image_size is None:  # checked here: a worker's error would stop all workers
            raise ValueError(
                "this env has no main_images to record (use an image observation mode, e.g. rgb)"
            )
        self._send_all("record_step_frames", [enabled] * len(self._conns))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._finalizer()
