#!/usr/bin/env bash
# Evaluate a policy in its simulator (env + rollout workers only, deterministic actions, fixed initial states,
# eval.num_episodes episodes per task). Installs what is missing first (scripts/setup.sh), then runs
# `python -m embodied.eval_policy`.
#
#   bash scripts/eval_policy.sh ckpt=runs/maniskill_ppo_pushcube/20250101-120000      # a training run: its
#                                                     # newest checkpoint, evaluated with the run's own config
#   bash scripts/eval_policy.sh maniskill_ppo_pushcube ckpt=latest eval.num_episodes=20
#   bash scripts/eval_policy.sh eval_libero_spatial ckpt=/models/my_policy    # a policy folder (HF layout)
#   bash scripts/eval_policy.sh eval_libero_spatial ckpt=none env.task_ids=[0] eval.num_episodes=2  # smoke test
#   bash scripts/eval_policy.sh --help
#
# The report goes to runs/<run.name>/eval-<timestamp>/: results.md (also printed), results.csv, results.json,
# success_per_task.png, videos/*.mp4, TensorBoard and W&B (offline) files. See docs/evaluation.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
PYTHON="${VIRTUAL_ENV:-$ROOT/.venv}/bin/python"
# the script as called, for the command that an interrupted run prints (Ctrl-C: see docs/runtime.md)
export INFLOW_LAUNCHER="$0"
exec "$PYTHON" -m embodied.eval_policy "$@"
