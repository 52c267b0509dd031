#!/usr/bin/env bash
# The main job: SPO training of a ReTool agent, end to end, on whatever this machine has.
# Installs everything first (scripts/bootstrap.sh). Every option is `spo-gym train`'s:
#   ./run_retool.sh --help                 the flag table
#   ./run_retool.sh                        SPO on the nano model (CPU) or verl (GPU), then held-out gain
#   METHOD=GRPO ./run_retool.sh            the GRPO baseline on the same episode budget
#   ./run_retool.sh --model smollm2 --steps 4     a short SPO run on SmolLM2-135M-Instruct
#   ./run_retool.sh --dry-run              print the resolved plan (and, for verl, the launch command)
#   METHOD=SPO MODEL_PATH=Qwen/Qwen3-8B ./run_retool.sh --backend verl --offline-values FILE
#                                          SPO on verl (GPUs; scripts/gpu_env.sh builds .venv-gpu)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$ROOT/scripts/bootstrap.sh" >&2
ARGS=()
if [ -n "${METHOD:-}" ]; then ARGS+=(--method "$(printf '%s' "$METHOD" | tr '[:upper:]' '[:lower:]')"); fi
if [ -n "${MODEL_PATH:-}" ]; then ARGS+=(--model "$MODEL_PATH"); fi
exec "$ROOT/.venv/bin/spo-gym" train "${ARGS[@]}" "$@"
