"""A short soak (the recorded one: `python scripts/drill.py soak --iterations 1000`, docs/reliability.md):
a tiny PushCube run of many short iterations keeps its memory, open files and threads flat. The kill drills
in CI are tests/embodied/test_failures_resume.py."""

from __future__ import annotations

import pytest
from drill_trials import _growth, soak


@pytest.mark.sim
@pytest.mark.slow
def test_a_short_soak_keeps_memory_files_and_threads_flat(tmp_path):
    result = soak(tmp_path, iterations=80, sample_every_s=2.0, warmup=0.25)
    assert result["exit"] == 0 and result["last_iteration"] == 80
    assert result["fds_stable"] and result["threads_stable"], result["processes"]
    # 60 iterations after warm-up are too few for the 5 % goal of the recorded soak; a leak of a tensor or a
    # trajectory per iteration grows by tens of percent here
    assert result["max_rss_growth_pct"] < 15.0, result["processes"]


def _sample(iteration: int, **processes: tuple[int, int, int]) -> dict:
    return {"time": float(iteration), "iteration": iteration, "processes": processes}


MIB = 2**20


def test_soak_growth_fails_on_open_files_or_threads_not_only_memory():
    flat = [_sample(i, driver=(100 * MIB, 40, 30), env=(200 * MIB, 50, 60)) for i in (1, 50, 100)]
    assert _growth(flat, warm=10)["ok"]
    leaking = [*flat[:2], _sample(100, driver=(100 * MIB, 40, 30), env=(200 * MIB, 90, 61))]
    result = _growth(leaking, warm=10)
    assert not result["ok"] and not result["fds_stable"] and result["threads_stable"]
    assert result["failed"] == ["fds of env: 50 -> 90"]
    threads = [*flat[:2], _sample(100, driver=(100 * MIB, 40, 45), env=(200 * MIB, 50, 60))]
    assert _growth(threads, warm=10)["failed"] == ["threads of driver: 30 -> 45"]


def test_soak_growth_ends_at_the_last_sample_holding_every_process():
    # the run tearing down: the last sample holds the driver alone, with fewer threads than before
    samples = [
        _sample(10, driver=(100 * MIB, 40, 30), env=(200 * MIB, 50, 60)),
        _sample(90, driver=(102 * MIB, 40, 30), env=(201 * MIB, 50, 60)),
        _sample(100, driver=(130 * MIB, 12, 3)),
    ]
    result = _growth(samples, warm=10)
    assert result["end_iteration"] == 90 and set(result["processes"]) == {"driver", "env"}
    assert result["ok"] and result["max_rss_growth_pct"] == pytest.approx(2.0)
    assert result["series"][0]["fds"] == {"driver": 40, "env": 50}
