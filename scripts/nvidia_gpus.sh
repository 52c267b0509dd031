# shellcheck shell=bash
# Sourced by scripts/gpu_env.sh and scripts/gpu_smoke.sh.
# nvidia_gpus: how many NVIDIA GPUs this machine shows (the driver lists one folder per GPU;
# nvidia-smi where it does not).
nvidia_gpus() {
  if [ -d /proc/driver/nvidia/gpus ]; then
    find /proc/driver/nvidia/gpus -mindepth 1 -maxdepth 1 | wc -l
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}
