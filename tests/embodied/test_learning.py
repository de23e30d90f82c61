"""PPO learns ManiSkill PushCube-v1 (state) with the default config within a fixed budget.

The default config (`maniskill_ppo_pushcube`: 16 envs x 100 steps per iteration, ManiSkill's PPO
hyperparameters) for BUDGET env steps, its periodic evaluation off and one evaluation at the end (64 episodes,
deterministic, fixed initial states): its success_once must reach FINAL; the untrained policy scores 0.00.
Measured (docs/benchmarks.md, "the suite against a strong single-process baseline"): from 64k env steps on, the
evaluations of `scripts/bench_learning.py`'s suite runs ranged 0.70-0.97 (seed 0: 0.95 at 80k), and this test's
own run, seed 0 evaluated only at the end, ended at 0.78. FINAL = 0.5 leaves room for that spread. Whether the policy stays above 0.85 after its first eval >= 0.9 takes longer than a CI test may
run; the benchmark measures it (today it does not).
"""

from __future__ import annotations

import pytest

from embodied.compose import load_config
from embodied.train import train

pytestmark = [pytest.mark.sim, pytest.mark.slow]

BUDGET = 80_000
FINAL = 0.5


def test_pushcube_learns_within_budget(tmp_path):
    config, tree = load_config(
        "maniskill_ppo_pushcube",
        [
            f"run.total_env_steps={BUDGET}",
            "run.stop_at_eval_success=null",
            "eval.every_n_iterations=0",
            "eval.at_end=true",
            "checkpoint.at_end=false",
            "checkpoint.every_n_iterations=0",
            "logger.wandb.mode=disabled",
            f"run.output_dir={tmp_path}",
        ],
    )
    final = train(config, tree)
    assert final["eval/success_once"] >= FINAL, (
        f"eval success_once {final['eval/success_once']:.3f} after {BUDGET:,} env steps, below {FINAL}"
    )
