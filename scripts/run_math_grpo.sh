#!/usr/bin/env bash
# GRPO (and DAPO, Reinforce++, PPO) on math prompts with a verifiable reward, on the Ray runtime (docs/llm.md).
# Installs what is missing first (scripts/setup.sh, seconds when nothing changed), then runs
# `python -m embodied.train` with the math config.
#
#   bash scripts/run_math_grpo.sh                              # shipped arithmetic set + char-level Llama (CPU)
#   bash scripts/run_math_grpo.sh math_dapo                    # a named config: math_dapo, math_ppo, math_reinforce_pp
#   bash scripts/run_math_grpo.sh math_grpo actor.lr=1e-4 env.num_envs=128     # key=value overrides
#   bash scripts/run_math_grpo.sh math_grpo_qwen2_5_math_1_5b policy.pretrained=/data/Qwen2.5-Math-1.5B   # GPU
#   bash scripts/run_math_grpo.sh resume=auto                  # continue the newest run of this name
#   bash scripts/run_math_grpo.sh describe [CONFIG]            # every config key, its value and help
#
# Runs are written to runs/<run.name>/<timestamp>/ (TensorBoard, W&B offline files, checkpoints).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
PYTHON="${VIRTUAL_ENV:-$ROOT/.venv}/bin/python"
MODE=()
case "${1:-}" in
  -h|--help|help) exec "$PYTHON" -m embodied.train --help ;;
  describe) MODE=(describe); shift ;;
esac
CONFIG="math_grpo"
if [[ $# -gt 0 && "$1" != *=* ]]; then
  CONFIG="$1"
  shift
fi
exec "$PYTHON" -m embodied.train ${MODE[@]+"${MODE[@]}"} "$CONFIG" "$@"
