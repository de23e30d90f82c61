#!/usr/bin/env bash
# Train PPO on ManiSkill3 with the Ray runtime. Installs what is missing first (scripts/setup.sh, seconds when
# nothing changed), then runs `python -m embodied.train`.
#
#   bash scripts/run_maniskill_ppo.sh                                  # PushCube-v1, state obs, MLP policy
#   bash scripts/run_maniskill_ppo.sh maniskill_ppo_pickcube           # a named config from configs/
#   bash scripts/run_maniskill_ppo.sh my_run.yaml actor.lr=1e-4        # a YAML file, key=value overrides
#   bash scripts/run_maniskill_ppo.sh cluster=disaggregated rollout.pipeline_stages=2
#   bash scripts/run_maniskill_ppo.sh resume=auto                      # continue the newest run of this name
#   bash scripts/run_maniskill_ppo.sh describe                         # every config key, its value and help
#   bash scripts/run_maniskill_ppo.sh --help
#
# Runs are written to runs/<run.name>/<timestamp>/ (TensorBoard, W&B offline files, checkpoints, videos).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
PYTHON="${VIRTUAL_ENV:-$ROOT/.venv}/bin/python"
# the script as called, for the command that an interrupted run prints (Ctrl-C: see docs/runtime.md)
export INFLOW_LAUNCHER="$0"
exec "$PYTHON" -m embodied.train "$@"
