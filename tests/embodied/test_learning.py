"""PPO learns ManiSkill PushCube-v1 (state) with the default config and stays learned.

The default config (`maniskill_ppo_pushcube`: 16 envs x 100 steps per iteration, ManiSkill's PPO
hyperparameters with the actions' initial log std at -0.75), seed 0, for BUDGET env steps with its own periodic
evaluation (64 episodes, deterministic, fixed initial states, every 8,000 env steps once training episodes
succeed) and the stop at 0.95 turned off. Its evaluations must reach 0.9, never fall below FLOOR after the first
eval >= 0.9, and end at >= 0.9; the untrained policy scores 0.00.
Measured (docs/benchmarks.md, "Stable once learned"): `scripts/bench_learning.py` with this config, seeds 0-2,
first eval >= 0.9 at 88k-112k env steps (seed 0: 0.938 at 104k), lowest of the 10 evals after it 0.906, 0.953,
0.953. With ManiSkill's log std -0.5, seed 0 fell from 0.953 (80k) to 0.703 (96k) and this test fails. Suite runs
are deterministic per seed on CPU, so FLOOR = 0.85 (the issue's goal) leaves room only for float noise.
"""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from embodied.compose import load_config
from embodied.train import train

pytestmark = [pytest.mark.sim, pytest.mark.slow]

BUDGET = 160_000
LEARNED = 0.9
FLOOR = 0.85


def test_pushcube_learns_and_stays_learned(tmp_path):
    config, tree = load_config(
        "maniskill_ppo_pushcube",
        [
            f"run.total_env_steps={BUDGET}",
            "run.stop_at_eval_success=null",
            "eval.at_end=true",
            "eval.video=false",
            "checkpoint.at_end=false",
            "checkpoint.every_n_iterations=0",
            "logger.wandb.mode=disabled",
            f"run.output_dir={tmp_path}",
        ],
    )
    final = train(config, tree)
    (run_dir,) = (tmp_path / "maniskill_ppo_pushcube").iterdir()
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    evals = events.Scalars("eval/success_once")
    curve = [e.value for e in evals]
    shown = ", ".join(f"{e.step // 1000}k {e.value:.3f}" for e in evals)
    first = next((k for k, s in enumerate(curve) if s >= LEARNED), None)
    assert first is not None, f"no eval reached {LEARNED} in {BUDGET:,} env steps: {shown}"
    assert min(curve[first:]) >= FLOOR, f"an eval fell below {FLOOR} after the first >= {LEARNED}: {shown}"
    assert final["eval/success_once"] >= LEARNED, f"ended below {LEARNED}: {shown}"
