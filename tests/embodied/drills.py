"""Fault drills on whole training runs (PushCube, tiny budgets, started as a user starts them): the library of
scripts/drill.py (the recorded campaigns) and tests/embodied/test_drills.py (a few trials in CI).

    kill_trial      SIGKILL a random process of a run (driver, env, rollout or actor worker) at a random
                    iteration or while a checkpoint is being written, then `resume=auto`; check the newest
                    checkpoint, the iteration counter, TensorBoard / CSV / W&B metrics, leftover processes,
                    and the final weights against an uninterrupted run from the same checkpoint
    nan_drill       NaN injected (embodied/faults.py) into an env observation, the loss, the gradients or the
                    weights, with run.on_nonfinite stop or skip
    disk_full_drill a run folder on a small tmpfs that fills before or during a checkpoint write
    soak            many short iterations; resident memory, file descriptors and threads of every process
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import STEPS_PER_ITERATION, TINY_RUN  # noqa: E402

WORKER_KINDS = {"env": "ray::EnvWorker", "rollout": "ray::RolloutWorker", "actor": "ray::ActorWorker"}
TARGETS = ("driver", *WORKER_KINDS)
SECRET = "inflowdrill" + "0123456789abcdef0123456789"  # a fake W&B API key that must appear nowhere


@dataclass
class Run:
    """A training run started as `python -m embodied.train ...` in its own session."""

    proc: subprocess.Popen
    log: Path
    root: Path  # <output_dir>/<run.name>: the run folders
    temp_dir: str  # its Ray session folder (named by its processes' command lines)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def run_dir(self) -> Path | None:
        found = sorted(p for p in self.root.glob("*") if p.is_dir())
        return found[-1] if found else None


def start_run(workdir: Path, name: str, *overrides: str, env: dict | None = None, wandb: bool = True) -> Run:
    workdir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(str(workdir / name).encode()).hexdigest()[:10]
    temp_dir = f"/tmp/ray-drill-{tag}"  # one per run; short: Ray's socket paths have a length limit
    log = workdir / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "embodied.train",
        *TINY_RUN,
        f"run.output_dir={workdir / 'out'}",
        "run.name=t",
        f"cluster.temp_dir={temp_dir}",
        f"logger.wandb.mode={'offline' if wandb else 'disabled'}",
        *overrides,
    ]
    environment = dict(os.environ, WANDB_API_KEY=SECRET, RAY_DEDUP_LOGS="0", **(env or {}))
    environment.pop("WANDB_SERVICE", None)  # the run's own wandb-core: a killed driver's must die with it
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=environment
        )
    output = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("run.output_dir=")), None)
    return Run(proc, log, Path(output or workdir / "out") / "t", temp_dir)


def wait_until(condition, run: Run, timeout: float, poll: float = 0.2):
    """Poll `condition()` until it returns something true; fail if the run ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if run.proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {run.proc.returncode}) before the moment:\n{run.output()}"
            )
        time.sleep(poll)
    raise AssertionError(f"not reached within {timeout:.0f}s:\n{run.output()[-3000:]}")


def logged_iterations(run_dir: Path | None) -> list[int]:
    """The iterations in metrics.csv, in order (progress/iteration rows)."""
    path = run_dir / "metrics.csv" if run_dir is not None else None
    if path is None or not path.is_file():
        return []
    with open(path, newline="") as f:
        return [int(float(r[2])) for r in csv.reader(f) if len(r) == 3 and r[1] == "progress/iteration"]


def tensorboard_iterations(run_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    return [int(e.value) for e in events.Scalars("progress/iteration")]


def wandb_records(path: Path):
    """The records of a W&B offline run file (.wandb: a LevelDB-style log of 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_segments(run_dir: Path) -> list[list[int]]:
    """The iterations W&B recorded, one list per offline run segment (a process), in start order."""
    segments = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        iterations = []
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
                if "progress/iteration" in items:
                    iterations.append(int(float(items["progress/iteration"])))
        segments.append(iterations)
    return segments


def wandb_after_sync(segments: list[list[int]]) -> list[int]:
    """What W&B shows once the segments are synced: a step (here: an iteration) is kept the first time it is
    logged; later values at a step it already has are dropped (W&B's history only grows)."""
    shown: list[int] = []
    for segment in segments:
        shown.extend(i for i in segment if not shown or i > shown[-1])
    return shown


def weights_digest(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    for name in ("policy/model.safetensors", "optimizer.pt"):
        digest.update((checkpoint / name).read_bytes())
    return digest.hexdigest()


def tensors_equal(a: Path, b: Path) -> tuple[bool, float]:
    """Whether two checkpoints' weights are bitwise equal, and the largest absolute difference."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "policy/model.safetensors")), load_file(str(b / "policy/model.safetensors"))
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    return all(wa[k].equal(wb[k]) for k in wa), worst


def run_processes(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def leftovers(processes: list[psutil.Process], temp_dir: str, timeout: float) -> list[str]:
    """The noted processes (and any naming the run's Ray folder) still running after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in processes if _running(p)]
        for p in psutil.process_iter(["cmdline"]):
            if any(temp_dir in a for a in p.info["cmdline"] or []) and p not in left and _running(p):
                left.append(p)
        if not left or time.monotonic() > deadline:
            return [f"{p.pid} {_name(p)}" for p in left]
        time.sleep(0.5)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:80]
    except psutil.Error:
        return "?"


def kill_leftovers(temp_dir: str) -> None:
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in a for a in p.info["cmdline"] or []):
            try:
                p.kill()
            except psutil.Error:
                pass


def secret_holders(*folders: Path) -> list[str]:
    """Files under `folders` holding the fake W&B key."""
    found = []
    for folder in folders:
        for path in Path(folder).rglob("*") if Path(folder).exists() else ():
            try:
                if path.is_file() and SECRET.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                pass
    return found


@dataclass
class Checks:
    """Named pass/fail results of one drill, with details."""

    passed: dict[str, bool] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def check(self, name: str, ok: bool, note: object = None) -> bool:
        self.passed[name] = bool(ok)
        if note is not None:
            self.notes[name] = note
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(self.passed.values())

    def failed(self) -> list[str]:
        return [f"{k}: {self.notes.get(k, '')}" for k, v in self.passed.items() if not v]


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def copy_checkpoint(checkpoint: Path, into: Path) -> Path:
    """A run folder holding only `checkpoint` (what a reference run resumes from)."""
    target = into / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, target)
    (into / "config.yaml").write_text((checkpoint / "config.yaml").read_text())
    return into


def iteration_re(output: str) -> int | None:
    found = re.findall(r"resumed from .* \(iteration (\d+),", output)
    return int(found[-1]) if found else None


def stop(run: Run) -> None:
    if run.proc.poll() is None:
        os.killpg(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
    kill_leftovers(run.temp_dir)


STEPS = STEPS_PER_ITERATION
