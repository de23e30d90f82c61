"""LIBERO's tasks: their language instruction, BDDL problem file and the benchmark's fixed initial states."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from functools import cache

import numpy as np

from envs.libero.config import NUM_TASKS, SUITES
from envs.libero.offline import load_libero


@dataclass(frozen=True)
class LiberoTask:
    suite: str
    task_id: int  # index in the suite's standard order (LIBERO's task order 0)
    name: str
    language: str  # the instruction, as LIBERO's benchmark (and OpenVLA, openpi, RLinf) gives it
    bddl_file: str
    init_states: np.ndarray  # [K, D] flattened MuJoCo states, the benchmark's fixed initial states


@cache
def _benchmark(suite: str):
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; the suites are {', '.join(SUITES)}")
    libero = load_libero()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the task order it uses
        return libero.benchmark.get_benchmark_dict()[suite](task_order_index=0)


@cache
def load_task(suite: str, task_id: int) -> LiberoTask:
    """Task `task_id` of `suite` (0-based, in the suite's standard order) with its fixed initial states."""
    if not 0 <= task_id < NUM_TASKS[suite]:
        raise ValueError(f"{suite} has tasks 0..{NUM_TASKS[suite] - 1}, not {task_id}")
    bench = _benchmark(suite)
    task = bench.get_task(task_id)
    init_states = np.asarray(bench.get_task_init_states(task_id), dtype=np.float64)
    return LiberoTask(
        suite=suite,
        task_id=task_id,
        name=task.name,
        language=task.language,
        bddl_file=bench.get_task_bddl_file_path(task_id),
        init_states=init_states,
    )


def suite_instructions(suite: str) -> list[str]:
    """The language instruction of every task of `suite`, by task id (no simulator is built)."""
    return [load_task(suite, t).language for t in range(NUM_TASKS[suite])]
