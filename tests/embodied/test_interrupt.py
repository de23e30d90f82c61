"""Ctrl-C and SIGTERM (embodied.interrupt): the signal handling itself in one process (fast), and whole runs
started as a user starts them (`bash scripts/run_maniskill_ppo.sh`, tiny budgets, `slow` + `sim`): a run
interrupted after a checkpoint exits promptly with 130 (143 for SIGTERM), prints the command that resumes it,
leaves a checkpoint that loads and no process of its Ray cluster behind; the printed command resumes from that
checkpoint; a second Ctrl-C force-exits at once."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, STEPS_PER_ITERATION, TINY_RUN, pids_alive

from embodied.checkpoint import latest_checkpoint
from embodied.interrupt import Interrupted, exit_code, handling_signals, protected

TINY = [*TINY_RUN, "run.total_env_steps=1000000"]
EXIT_WITHIN_S = 30


# -- the handlers, in this process ---------------------------------------------------------------------------------
def plain_interrupt_after_sigterm() -> KeyboardInterrupt:
    """What leaves `handling_signals` when the handler saw SIGTERM and Ray's get re-raised its `Interrupted` as a
    plain KeyboardInterrupt."""
    with pytest.raises(KeyboardInterrupt) as plain:
        with handling_signals():
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            raise KeyboardInterrupt
    return plain.value


def test_a_signal_raises_interrupted_with_the_shell_exit_code():
    before = signal.getsignal(
        signal.SIGTERM
    )  # SIG_DFL, or Ray's handler when an earlier test ran ray.init here
    with handling_signals():
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert caught.value.exit_code == 143 and caught.value.signal_name == "SIGTERM"
    assert exit_code(caught.value) == 143
    # a plain KeyboardInterrupt after the handler saw SIGTERM (what Ray's get raises: below) carries it out
    assert exit_code(plain_interrupt_after_sigterm()) == 143
    assert exit_code(KeyboardInterrupt()) == 130  # and the signal is forgotten once the block is left
    with handling_signals():
        assert exit_code(KeyboardInterrupt()) == 130  # no signal seen: Python's own Ctrl-C
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back


def test_a_signal_inside_a_protected_section_is_raised_when_it_ends():
    done = []
    with handling_signals():
        with pytest.raises(Interrupted) as caught:
            with protected():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # a checkpoint being written: not cut short
                done.append("committed")
    assert done == ["committed"] and caught.value.exit_code == 130


def test_handlers_are_installed_even_where_sigint_was_inherited_ignored():
    """A background job of a non-interactive shell (`cmd &` in a script) starts with SIGINT ignored: the
    cause of runs that Ctrl-C / `kill -INT` did not stop."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with handling_signals():
            with pytest.raises(Interrupted):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_plain_keyboard_interrupt_after_a_signal_keeps_the_run_folder_and_the_signal(tmp_path, monkeypatch):
    """Ray's get and wait run the handler while they wait and raise a new, plain KeyboardInterrupt in place of
    its `Interrupted`: a PickCube run stopped there printed "nothing to resume" beside 18 checkpoints. The run
    folder and the signal must survive that."""
    import embodied.train as train_module
    from embodied.compose import load_config

    def stopped_inside_ray_get(config, tree, run_dir, resume_target, started):
        run_dir.mkdir(parents=True)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        except Interrupted:  # what Ray's get does with the handler's exception
            raise KeyboardInterrupt from None

    monkeypatch.setattr(train_module, "_train", stopped_inside_ray_get)
    config, tree = load_config("maniskill_ppo_pushcube", [f"run.output_dir={tmp_path}"])
    with pytest.raises(KeyboardInterrupt) as caught:  # as in main(): it leaves handling_signals
        with handling_signals():
            train_module.train(config, tree)
    exc = caught.value
    assert not isinstance(exc, Interrupted) and exit_code(exc) == 143
    assert exc.run_dir.parent == tmp_path / "maniskill_ppo_pushcube"
    message = train_module.interrupted_message(exc, ["maniskill_ppo_pushcube"])
    assert message.startswith("interrupted by SIGTERM before the first checkpoint was written")


# -- whole runs ------------------------------------------------------------------------------------------------------
def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` in a non-interactive shell does


def start(command: list[str], log: Path) -> subprocess.Popen:
    """The command in its own session (so a group signal reaches only it), SIGINT ignored as inherited from a
    background launch, output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            command,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=ignore_sigint,
        )


def wait_for_iteration(run_root: Path, iteration: int, proc: subprocess.Popen, log: Path) -> Path:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for run_dir in run_root.glob("*"):
            latest = latest_checkpoint(run_dir)
            if latest is not None:
                try:
                    if json.loads((latest / "state.json").read_text())["iteration"] >= iteration:
                        return run_dir
                except FileNotFoundError:  # pruned meanwhile
                    pass
        assert proc.poll() is None, f"the run ended early:\n{log.read_text()}"
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint of iteration {iteration} within 300 s:\n{log.read_text()}")


def interrupt(proc: subprocess.Popen, sig: int, group: bool = False) -> tuple[float, list[int]]:
    """Send `sig` (to the whole process group: as Ctrl-C at a terminal); returns (seconds to exit, the pids
    of the processes the run had started)."""
    started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    begin = time.monotonic()
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        proc.wait(timeout=EXIT_WITHIN_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - begin, started


def processes_of(temp_dir: str) -> list[int]:
    """Processes whose command line names the Ray session folder of the run (its gcs, raylet, agents)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in p.info["cmdline"] or []):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def assert_nothing_left(started: list[int], temp_dir: str) -> None:
    deadline = time.monotonic() + 10
    while (pids_alive(started) or processes_of(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = pids_alive(started) + processes_of(temp_dir)
    for pid in left:  # only this run's own processes; then fail
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, [psutil.Process(p).cmdline()[:2] for p in pids_alive(left)]


def load_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's counters, after building its policy from the folder and loading its weights."""
    from policies.base import PolicyConfig, make_policy, read_saved_config

    state = json.loads((checkpoint / "state.json").read_text())
    policy_config, spec = read_saved_config(checkpoint / "policy")
    make_policy(PolicyConfig.from_dict(policy_config, path="policy"), spec).load_weights(
        checkpoint / "policy"
    )
    assert (checkpoint / "optimizer.pt").is_file()
    assert state["env_steps"] == state["iteration"] * STEPS_PER_ITERATION
    assert not list(checkpoint.parent.glob(".iter_*.tmp"))  # no half-written checkpoint
    return state


RESUME = re.compile(r"the last checkpoint is intact: (\S+) \(iteration (\d+), .* Resume with: (.+)$", re.M)


@pytest.fixture
def ray_temp_dir():
    """A short Ray session folder of the run's own (socket paths must stay under ~107 characters)."""
    path = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.sim
def test_ctrl_c_stops_training_and_the_printed_command_resumes_it(tmp_path, ray_temp_dir):
    args = [*TINY, f"run.output_dir={tmp_path}", "run.name=t", f"cluster.temp_dir={ray_temp_dir}"]
    log = tmp_path / "first.log"
    proc = start(["bash", "scripts/run_maniskill_ppo.sh", *args], log)
    wait_for_iteration(tmp_path / "t", 2, proc, log)
    seconds, started = interrupt(proc, signal.SIGINT)
    out = log.read_text()
    assert proc.returncode == 130 and seconds < EXIT_WITHIN_S, out
    (hint,) = RESUME.findall(out)
    checkpoint, iteration = Path(hint[0]), int(hint[1])
    assert checkpoint == latest_checkpoint(checkpoint.parent.parent)
    assert load_checkpoint(checkpoint)["iteration"] == iteration >= 2
    command = shlex.split(hint[2])
    assert command[:2] == ["bash", "scripts/run_maniskill_ppo.sh"]
    assert command[-1] == f"resume={checkpoint.parent.parent}"
    assert_nothing_left(started, ray_temp_dir)

    # the printed command, as printed: continues from the checkpoint; SIGTERM stops it with 143
    log = tmp_path / "resumed.log"
    resumed = start(command, log)
    wait_for_iteration(tmp_path / "t", iteration + 1, resumed, log)
    seconds, started = interrupt(resumed, signal.SIGTERM)
    out = log.read_text()
    assert resumed.returncode == 143 and seconds < EXIT_WITHIN_S, out
    assert f"resumed from {checkpoint} (iteration {iteration}," in out
    assert "interrupted by SIGTERM" in out
    assert not re.search(r"\bit 1 ", out)  # the iterations count on from the checkpoint's
    after = load_checkpoint(latest_checkpoint(checkpoint.parent.parent))
    assert after["iteration"] > iteration
    assert_nothing_left(started, ray_temp_dir)


@pytest.mark.slow
@pytest.mark.sim
def test_a_second_ctrl_c_at_the_terminal_force_exits_at_once(tmp_path, ray_temp_dir):
    args = [*TINY, f"run.output_dir={tmp_path}", "run.name=t", f"cluster.temp_dir={ray_temp_dir}"]
    log = tmp_path / "run.log"
    proc = start([sys.executable, "-m", "embodied.train", *args], log)
    run_dir = wait_for_iteration(tmp_path / "t", 1, proc, log)
    started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole foreground group
    deadline = time.monotonic() + 10
    while "SIGINT: stopping" not in log.read_text():  # the first is being handled (signals that arrive
        assert time.monotonic() < deadline  # together are one: a person presses again a moment later)
        time.sleep(0.02)
    begin = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=EXIT_WITHIN_S)
    seconds = time.monotonic() - begin
    out = log.read_text()
    assert proc.returncode == 130 and seconds < 5, out
    assert "SIGINT again: force-exiting now" in out and "Resume with" not in out
    load_checkpoint(latest_checkpoint(run_dir))
    assert_nothing_left(started, ray_temp_dir)
