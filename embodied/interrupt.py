"""Ctrl-C (SIGINT) and SIGTERM in the driver of a run (`embodied.train`, `embodied.eval_policy`).

The first signal raises `Interrupted` in the driver's main thread at once, also while it waits on Ray (Ray's
`wait`/`get` check for signals), so the run unwinds through its `finally` blocks: the workers are killed and
the Ray cluster it started is shut down. Inside `protected()` (a checkpoint or report being written) the
signal is only noted and raised when the section ends, so what is being written is completed, never cut in
half. A second signal kills this process's own descendants (Ray's processes, simulators) and exits at once.

The handlers are installed explicitly: a process started in the background by a non-interactive shell
(`cmd &` in a script) inherits SIGINT *ignored*, and Python then never raises KeyboardInterrupt. That is why
Ctrl-C/`kill -INT` once did not stop a run started that way. `ray.init` replaces the SIGTERM handler with
its own: `Cluster` calls `reclaim()` after it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is 128 + the signal number (130 SIGINT, 143 SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    signum: int | None = None  # the first signal received
    depth = 0  # nesting of protected() sections
    deferred = False  # a signal arrived inside a protected section
    previous: dict[int, object] = {}


_state = _State()


def signal_of(exc: KeyboardInterrupt) -> int | None:
    """The signal that stopped the run: an `Interrupted`'s own; for a plain KeyboardInterrupt the first signal
    the handler saw, if any (stamped on it as it left `handling_signals`, or the one seen so far inside). Ray's
    C++ `get`/`wait` runs the handler while it waits and turns the exception it raised into a new, plain
    KeyboardInterrupt, so the `Interrupted` itself may not reach the caller."""
    if isinstance(exc, Interrupted):
        return exc.signum
    return getattr(exc, "inflow_signum", _state.signum)


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the run; 130 (SIGINT's) when no handler saw one."""
    signum = signal_of(exc)
    return 128 + (signum if signum is not None else signal.SIGINT)


def _say(text: str) -> None:
    try:
        os.write(sys.stderr.fileno(), f"\n{text}\n".encode())  # not print: re-entrant inside a handler
    except (OSError, ValueError):
        pass


def _force_exit(signum: int) -> None:
    """Kill this process's descendants (Ray's head processes and workers, simulators) and exit now."""
    _say(f"{signal.Signals(signum).name} again: force-exiting now (the last complete checkpoint is intact)")
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.Error:
                pass
    finally:
        os._exit(128 + signum)


def _handle(signum: int, frame) -> None:
    if _state.signum is not None:
        _force_exit(signum)
    _state.signum = signum
    name = signal.Signals(signum).name
    if _state.depth:
        _state.deferred = True
        _say(f"{name}: stopping once the file being written is complete (press Ctrl-C again to force-exit)")
        return
    _say(f"{name}: stopping and shutting the workers down (press Ctrl-C again to force-exit)")
    raise Interrupted(signum)


def install() -> None:
    """Handle SIGINT and SIGTERM as described in the module docstring (in the main thread; elsewhere, where
    Python does not allow signal handlers, the signals keep their handlers)."""
    _state.signum, _state.depth, _state.deferred = None, 0, False
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        _state.previous[sig] = signal.signal(sig, _handle)


def reclaim() -> None:
    """Take SIGINT/SIGTERM back after a library replaced the handlers (`ray.init` installs its own SIGTERM
    handler, which exits with status 15 and no message); a no-op when the handlers are not installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _state.previous:
        if signal.getsignal(sig) is not _handle:
            signal.signal(sig, _handle)


def uninstall() -> None:
    for sig, previous in _state.previous.items():
        signal.signal(sig, previous)
    _state.previous = {}


@contextmanager
def handling_signals() -> Iterator[None]:
    """The handlers installed for the block. A KeyboardInterrupt leaving it carries the signal the handler saw
    (`signal_of`), and that signal is forgotten: a later interrupt in this process is not named after it."""
    install()
    try:
        yield
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Interrupted):
            exc.inflow_signum = _state.signum
        raise
    finally:
        uninstall()
        _state.signum = None


@contextmanager
def protected() -> Iterator[None]:
    """A section a first signal does not cut short: it raises `Interrupted` when the section ends (unless an
    exception is on its way out already). Without installed handlers it changes nothing."""
    _state.depth += 1
    try:
        yield
    except BaseException:
        _state.depth -= 1
        raise
    _state.depth -= 1
    if not _state.depth and _state.deferred:
        _state.deferred = False
        raise Interrupted(_state.signum)


def shutdown_ray_if_left() -> None:
    """After an interruption before the cluster object existed (during `ray.init`): stop Ray if it runs."""
    if "ray" in sys.modules:
        from embodied.cluster import stop_ray

        stop_ray()
