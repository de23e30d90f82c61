"""The drills themselves (see drills.py for the helpers): each returns a JSON-ready dict with its checks."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import psutil
from drills import (
    STEPS,
    TARGETS,
    WORKER_KINDS,
    Checks,
    copy_checkpoint,
    iteration_re,
    leftovers,
    logged_iterations,
    no_traceback,
    read_state,
    run_processes,
    secret_holders,
    start_run,
    stop,
    tensorboard_iterations,
    tensors_equal,
    wait_until,
    wandb_after_sync,
    wandb_segments,
    weights_digest,
)

from embodied import faults
from embodied.checkpoint import latest_checkpoint, list_checkpoints
from embodied.checkpoint_check import verify_checkpoint

MOMENTS = ("iteration", "checkpoint-write")


def _pick(run, target: str, rng: random.Random) -> psutil.Process:
    if target == "driver":
        return psutil.Process(run.proc.pid)
    found = [p for p in run_processes(run.proc.pid) if _command(p).startswith(WORKER_KINDS[target])]
    if not found:
        raise AssertionError(f"no {target} worker among the run's processes")
    return rng.choice(found)


def _command(p: psutil.Process) -> str:
    """The first word of a process's command line; "" for one that has ended since it was listed (the run
    starts and ends short-lived processes of its own)."""
    try:
        return (p.cmdline() or [""])[0]
    except psutil.Error:
        return ""


def _kill_at(run, target: str, moment: str, total: int, rng: random.Random) -> dict:
    """Wait for the moment, SIGKILL a process of `target`; returns what was killed when."""
    run_dir = wait_until(
        lambda: run.run_dir() if run.run_dir() and latest_checkpoint(run.run_dir()) else None, run, 600
    )
    if moment == "iteration":
        k = rng.randint(1, total - 2)
        wait_until(lambda: max(logged_iterations(run_dir), default=0) >= k, run, 600)
        time.sleep(rng.uniform(0.0, 0.4))
    else:  # while a checkpoint is being written: its hidden temporary folder exists (for 2 s: the run has the
        # fault checkpoint.slow; a one-rank actor writes a PushCube checkpoint in a few ms)
        folder = run_dir / "checkpoints"
        wait_until(lambda: any(p.name.startswith(".iter_") for p in folder.iterdir()), run, 600, poll=0.002)
    victim = _pick(run, target, rng)
    noted = run_processes(run.proc.pid)
    iterations = logged_iterations(run_dir)
    name = f"{victim.pid} {victim.name()}"  # before the kill: a reaped process has no name
    os.kill(victim.pid, 9)
    return {
        "victim": name,
        "noted": noted,
        "last_logged": max(iterations, default=0),
    }


def kill_trial(
    workdir: Path, target: str, moment: str, seed: int, total: int = 6, references: dict | None = None
) -> dict:
    """One SIGKILL drill (see drills.py). `references`: final checkpoints of uninterrupted runs from a
    checkpoint, by its digest (filled and reused across trials: training is deterministic on CPU)."""
    rng, checks = random.Random(seed), Checks()
    overrides = (f"run.total_env_steps={total * STEPS}",)
    slow = {faults.ENV: "checkpoint.slow@2"} if moment == "checkpoint-write" else None
    first = start_run(workdir, "killed", *overrides, env=slow)
    try:
        kill = _kill_at(first, target, moment, total, rng)
        first.proc.wait(timeout=180)
    finally:
        stop(first)
    out, run_dir = first.output(), first.run_dir()
    # a worker killed after the run's last call to it (the 6 iterations take ~2 s on a quiet machine, and the
    # kill comes up to 0.4 s after an iteration): the run has nothing left to lose and ends normally
    finished = target != "driver" and first.proc.returncode == 0
    if target == "driver":
        checks.check("exit", first.proc.returncode == -9, first.proc.returncode)
    elif finished:
        checks.check(
            "exit 0 after the last iteration", read_state(latest_checkpoint(run_dir))["iteration"] == total
        )
        checks.check("no traceback", no_traceback(out), out[-600:])
        _check_finished_run(checks, workdir, run_dir, overrides, references)
    else:
        failed = "training failed: at iteration" in out and "died while running" in out
        checks.check("exit", first.proc.returncode == 1 and failed and no_traceback(out), out[-600:])
    left = leftovers(kill["noted"], first.temp_dir, timeout=20)
    checks.check("no process left after the kill", not left, left)
    newest = latest_checkpoint(run_dir)
    state = verify_checkpoint(newest)
    checkpoint = shutil.copytree(newest, workdir / "at-kill" / newest.name)  # the resumed run prunes it later
    k = state["iteration"]
    lost = max(0, kill["last_logged"] - k)
    resumed = start_run(workdir, "resumed", *overrides, "resume=auto")
    try:
        resumed.proc.wait(timeout=900)
    finally:
        stop(resumed)
    out = resumed.output()
    checks.check("resume exit 0", resumed.proc.returncode == 0, out[-600:])
    checks.check("resumed from the newest checkpoint", iteration_re(out) == k, (iteration_re(out), k))
    expected = list(range(1, total + 1))
    checks.check(
        "csv iterations once each", logged_iterations(run_dir) == expected, logged_iterations(run_dir)
    )
    checks.check("tensorboard iterations once each", tensorboard_iterations(run_dir) == expected)
    segments = wandb_segments(run_dir)
    last = segments[-1] if segments else []  # the resumed process: steps up to k sent again, then k+1, ...
    continues = last == sorted(last) and [i for i in last if i > k] == list(range(k + 1, total + 1))
    checks.check("wandb: the resumed segment continues after the checkpoint", continues, segments)
    checks.check("wandb after sync: iterations once each", wandb_after_sync(segments) == expected)
    final = latest_checkpoint(run_dir)
    checks.check("final iteration", read_state(final)["iteration"] == total, read_state(final)["iteration"])
    checks.check("no half-written checkpoint left", not list((run_dir / "checkpoints").glob(".iter_*")))
    checks.check("no process left after the resumed run", not leftovers([], resumed.temp_dir, 20))
    reference = _reference(workdir, checkpoint, overrides, references if references is not None else {})
    equal, worst = tensors_equal(final, reference)
    checks.check("final weights equal an uninterrupted run from the checkpoint", equal, worst)
    holders = secret_holders(run_dir, workdir / "killed.log", workdir / "resumed.log", Path(first.temp_dir))
    checks.check("W&B key in no file", not holders, holders)
    return {
        "drill": "kill",
        "target": target,
        "moment": moment,
        "seed": seed,
        "victim": kill["victim"],
        "checkpoint_iteration": k,
        "iterations_lost": lost,
        "killed_after_the_last_iteration": finished,
        "ok": checks.ok,
        "failed": checks.failed(),
        "checks": checks.passed,
    }


def _check_finished_run(
    checks: Checks, workdir: Path, run_dir: Path, overrides: tuple, references: dict
) -> None:
    """A run that ended normally although one of its workers was killed: its final weights must equal those
    of an uninterrupted run from its previous checkpoint (nothing of the last iteration silently lost)."""
    previous = list_checkpoints(run_dir)[-2]
    copy = shutil.copytree(previous, workdir / "before-end" / previous.name)
    equal, worst = tensors_equal(latest_checkpoint(run_dir), _reference(workdir, copy, overrides, references))
    checks.check("final weights equal an uninterrupted run from the previous checkpoint", equal, worst)


def _reference(workdir: Path, checkpoint: Path, overrides: tuple, references: dict) -> Path:
    """The final checkpoint of an uninterrupted run resumed from a copy of `checkpoint`."""
    digest = weights_digest(checkpoint)
    if digest not in references:
        name = f"reference-{checkpoint.name}"  # a trial may need two: see _check_finished_run
        run_dir = copy_checkpoint(checkpoint, workdir / name / "t" / "run")
        run = start_run(workdir, name, *overrides, f"resume={run_dir}", wandb=False)
        try:
            run.proc.wait(timeout=900)
        finally:
            stop(run)
        if run.proc.returncode != 0:
            raise AssertionError(f"the reference run failed:\n{run.output()[-2000:]}")
        references[digest] = latest_checkpoint(run_dir)
    return references[digest]


# what each injected fault must be reported as (run.on_nonfinite=stop)
NAN_FAULTS = {
    "env.obs": ("env.obs@25", "env worker rank", "non-finite env output 'observation."),
    "actor.loss": ("actor.loss@3", "actor worker rank", "the loss is nan"),
    "actor.grad": ("actor.grad@3", "actor worker rank", "non-finite 'gradient of "),
    "actor.weights": ("actor.weights@3", "actor worker rank", "the weights hold non-finite values"),
}


def nan_drill(workdir: Path, site: str, mode: str, total: int = 6) -> dict:
    fault, component, named = NAN_FAULTS[site]
    checks = Checks()
    overrides = (f"run.total_env_steps={total * STEPS}", f"run.on_nonfinite={mode}")
    run = start_run(workdir, f"nan-{site}-{mode}", *overrides, env={"INFLOW_FAULT": fault}, wandb=False)
    try:
        run.proc.wait(timeout=900)
    finally:
        stop(run)
    out, run_dir = run.output(), run.run_dir()
    stops = mode == "stop" or site == "actor.weights"
    if stops:
        reported = "training failed: at iteration" in out and component in out and named in out
        checks.check(
            "stopped with the component, iteration and tensor named",
            run.proc.returncode == 1 and reported,
            out[-800:],
        )
        checks.check("no traceback", no_traceback(out), out[-800:])
    else:
        checks.check("ran to the end", run.proc.returncode == 0, out[-800:])
        checks.check("warned", "warning:" in out and ("mini-batch skipped" in out or "replaced by 0" in out))
    for checkpoint in list_checkpoints(run_dir):
        checks.check(f"{checkpoint.name} finite and loadable", _finite(checkpoint))
    return {
        "drill": "nan",
        "site": site,
        "mode": mode,
        "ok": checks.ok,
        "failed": checks.failed(),
        "checks": checks.passed,
    }


def _finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    verify_checkpoint(checkpoint)
    weights = load_file(str(checkpoint / "policy" / "model.safetensors"))
    return all(bool(t.float().isfinite().all()) for t in weights.values())


DISK_SCENARIOS = ("before-write", "during-write", "first-checkpoint")


def disk_full_drill(workdir: Path, scenario: str) -> dict:
    """A run folder on a tmpfs that fills: before a checkpoint write (too little room for one), during it (room
    by the estimate, not with the filesystem's block overhead), or before the first checkpoint."""
    checks, disk = Checks(), workdir / "disk"
    disk.mkdir(parents=True, exist_ok=True)
    size = "2m" if scenario == "first-checkpoint" else "24m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        overrides = (
            f"run.total_env_steps={9 * STEPS}",
            "checkpoint.every_n_iterations=3",
            f"run.output_dir={disk}",
        )
        run = start_run(workdir, f"disk-{scenario}", *overrides, wandb=False)
        try:
            if scenario != "first-checkpoint":
                _fill_before_the_next_write(run, disk, scenario)
            run.proc.wait(timeout=600)
        finally:
            stop(run)
        out, run_dir = run.output(), run.run_dir()
        message = "no room for checkpoint iter_" in out and f"in {run_dir}/checkpoints" in out
        checks.check(
            "stopped naming the folder and the space needed", run.proc.returncode == 1 and message, out[-800:]
        )
        checks.check("no traceback", no_traceback(out), out[-800:])
        checks.check(
            "no half-written checkpoint left",
            not list((run_dir / "checkpoints").glob(".iter_*"))
            if (run_dir / "checkpoints").exists()
            else True,
        )
        previous = latest_checkpoint(run_dir)
        if scenario != "first-checkpoint":
            checks.check("the previous checkpoint loads", previous is not None and _finite(previous))
            for filler in disk.glob("filler*"):
                filler.unlink()
            resumed = start_run(workdir, f"disk-{scenario}-resumed", *overrides, "resume=auto", wandb=False)
            try:
                resumed.proc.wait(timeout=600)
            finally:
                stop(resumed)
            checks.check(
                "resumes once there is room",
                resumed.proc.returncode == 0 and iteration_re(resumed.output()) == 3,
            )
        else:
            checks.check("nothing under a checkpoint name", previous is None)
        message = next((line for line in out.splitlines() if "no room" in line), "")
        return {
            "drill": "disk-full",
            "scenario": scenario,
            "ok": checks.ok,
            "failed": checks.failed(),
            "checks": checks.passed,
            "message": message,
        }
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill_before_the_next_write(run, disk: Path, scenario: str) -> None:
    """before-write: once the first checkpoint is in, leave half its size free. during-write: leave room by
    the estimate (its size + 512 KiB), then, once the next write has begun, fill up to 64 KiB."""
    first = wait_until(lambda: run.run_dir() and latest_checkpoint(run.run_dir()), run, 600, poll=0.02)
    needed = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    if scenario == "before-write":
        _fill(disk, needed // 2)
        return
    _fill(disk, needed + 512 * 1024)
    folder = first.parent
    wait_until(lambda: any(p.name.startswith(".iter_") for p in folder.iterdir()), run, 600, poll=0.001)
    _fill(disk, 64 * 1024)


def _fill(disk: Path, leave: int) -> None:
    """Grow the filler file until `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "ab") as f:
        f.write(b"\0" * max(0, free - leave))


def soak(workdir: Path, iterations: int, sample_every_s: float = 5.0, warmup: float = 0.1) -> dict:
    """`iterations` short iterations; RSS, open files and threads of the driver and every worker, sampled."""
    budget = f"run.total_env_steps={iterations * STEPS}"
    run = start_run(
        workdir, "soak", budget, "checkpoint.every_n_iterations=100", "checkpoint.keep=1", wandb=False
    )
    samples: list[dict] = []
    try:
        while run.proc.poll() is None:
            sample = _sample(run)
            if sample:
                samples.append(sample)
            time.sleep(sample_every_s)
    finally:
        stop(run)
    result = {"drill": "soak", "iterations": iterations, "exit": run.proc.returncode}
    result |= _growth(samples, iterations * warmup)
    if run.proc.returncode != 0:
        result |= {"ok": False, "failed": [f"the run exited {run.proc.returncode}", *result["failed"]]}
    return result


def _sample(run) -> dict | None:
    iterations = logged_iterations(run.run_dir()) if run.run_dir() else []
    if not iterations:
        return None
    roles = {}
    for p in [psutil.Process(run.proc.pid), *run_processes(run.proc.pid)]:
        try:
            name = (p.cmdline() or [""])[0]
            role = (
                "driver"
                if p.pid == run.proc.pid
                else next((k for k, v in WORKER_KINDS.items() if name.startswith(v)), None)
            )
            if role is not None:
                roles[f"{role}:{p.pid}"] = (p.memory_info().rss, p.num_fds(), p.num_threads())
        except psutil.Error:
            pass
    return {"time": time.time(), "iteration": iterations[-1], "processes": roles}


def _growth(samples: list[dict], warm: float) -> dict:
    if not samples:
        return {"ok": False, "failed": ["no samples"]}
    after = [s for s in samples if s["iteration"] >= warm] or samples
    start = after[0]
    # the last sample with every process of the start: the final ones may catch the run tearing down
    end = next((s for s in reversed(after) if start["processes"].keys() <= s["processes"].keys()), after[-1])
    per_process = {}
    for name, (rss, fds, threads) in end["processes"].items():
        if name in start["processes"]:
            rss0, fds0, threads0 = start["processes"][name]
            per_process[name] = {
                "rss_mib_start": rss0 / 2**20,
                "rss_mib_end": rss / 2**20,
                "rss_growth_pct": 100.0 * (rss - rss0) / rss0,
                "fds": [fds0, fds],
                "threads": [threads0, threads],
            }
    worst = max((v["rss_growth_pct"] for v in per_process.values()), default=0.0)
    grew = {  # open files or threads that grew by more than 2 from warm-up to the end, by process
        f"{what} of {name}": v[what]
        for name, v in per_process.items()
        for what in ("fds", "threads")
        if v[what][1] > v[what][0] + 2
    }
    failed = [f"RSS grew {worst:.1f}% after warm-up"] if worst >= 5.0 else []
    failed += [f"{what}: {a} -> {b}" for what, (a, b) in grew.items()]
    failed += [] if per_process else ["no process sampled after warm-up"]
    return {
        "last_iteration": samples[-1]["iteration"],
        "warmup_iteration": start["iteration"],
        "end_iteration": end["iteration"],
        "samples": len(samples),
        "max_rss_growth_pct": worst,
        "processes": per_process,
        "fds_stable": not any(k.startswith("fds") for k in grew),
        "threads_stable": not any(k.startswith("threads") for k in grew),
        "ok": not failed,
        "failed": failed,
        "series": [
            {
                "iteration": s["iteration"],
                "rss_mib": {k: v[0] / 2**20 for k, v in s["processes"].items()},
                "fds": {k: v[1] for k, v in s["processes"].items()},
                "threads": {k: v[2] for k, v in s["processes"].items()},
            }
            for s in samples
        ],
    }


def dump(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")


__all__ = [
    "MOMENTS",
    "TARGETS",
    "DISK_SCENARIOS",
    "NAN_FAULTS",
    "kill_trial",
    "nan_drill",
    "disk_full_drill",
    "soak",
    "dump",
]
