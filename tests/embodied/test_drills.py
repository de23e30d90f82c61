"""A short soak (the recorded one: `python scripts/drill.py soak --iterations 1000`, docs/reliability.md):
a tiny PushCube run of many short iterations keeps its memory, open files and threads flat. The kill drills
in CI are tests/embodied/test_failures_resume.py."""

from __future__ import annotations

import pytest
from drill_trials import soak

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_a_short_soak_keeps_memory_files_and_threads_flat(tmp_path):
    result = soak(tmp_path, iterations=80, sample_every_s=2.0, warmup=0.25)
    assert result["exit"] == 0 and result["last_iteration"] == 80
    assert result["fds_stable"] and result["threads_stable"], result["processes"]
    # 60 iterations after warm-up are too few for the 5 % goal of the recorded soak; a leak of a tensor or a
    # trajectory per iteration grows by tens of percent here
    assert result["max_rss_growth_pct"] < 15.0, result["processes"]
