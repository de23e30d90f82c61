#!/usr/bin/env bash
# GRPO on math prompts with a verifiable reward (docs/llm.md).
#
#   bash scripts/run_math_grpo.sh                         # the shipped arithmetic set + the small char-level Llama (CPU)
#   bash scripts/run_math_grpo.sh math_dapo               # another named config in configs/
#   bash scripts/run_math_grpo.sh math_grpo actor.lr=1e-4 env.num_envs=128   # key=value overrides
#   bash scripts/run_math_grpo.sh math_grpo_qwen2_5_math_1_5b policy.pretrained=/data/Qwen2.5-Math-1.5B   # GPU
#
# Installs what is missing first (scripts/setup.sh, idempotent), then runs `python -m embodied.train`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh   # INFLOW_EXTRAS=llm,dev installs only what math runs need
PYTHON="${VIRTUAL_ENV:-$ROOT/.venv}/bin/python"
CONFIG="math_grpo"
if [[ $# -gt 0 && "$1" != *=* ]]; then
  CONFIG="$1"
  shift
fi
exec "$PYTHON" -m embodied.train "$CONFIG" "$@"
