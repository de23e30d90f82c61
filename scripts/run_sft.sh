#!/usr/bin/env bash
# Supervised fine-tuning (SFT) of a policy on demonstrations, with the Ray runtime of RL (actor workers with FSDP2,
# in-simulator evaluation, atomic checkpoints, resume, TensorBoard/W&B, Ctrl-C). Installs what is missing first
# (scripts/setup.sh, seconds when nothing changed), then runs `python -m embodied.sft`.
#
#   bash scripts/run_sft.sh sft_maniskill_pickcube                       # MLP on PickCube-v1 state demos
#   bash scripts/run_sft.sh sft_maniskill_pickcube sft.demos=/data/demos sft.steps=2000
#   bash scripts/run_sft.sh sft_maniskill_pickcube resume=auto           # continue the newest run of this name
#   bash scripts/run_sft.sh describe sft_maniskill_pickcube              # every config key, its value and help
#   bash scripts/run_sft.sh --help
#
# Then RL from its checkpoint: bash scripts/run_maniskill_ppo.sh maniskill_ppo_pickcube \
#     policy.pretrained=runs/sft_maniskill_pickcube/<timestamp>/checkpoints/iter_<N>/policy
# See docs/sft.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
PYTHON="${VIRTUAL_ENV:-$ROOT/.venv}/bin/python"
# the script as called, for the command that an interrupted run prints (Ctrl-C: see docs/runtime.md)
export INFLOW_LAUNCHER="$0"
exec "$PYTHON" -m embodied.sft "$@"
