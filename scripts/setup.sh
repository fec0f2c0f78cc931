#!/usr/bin/env bash
# Installs what the repo needs on a fresh Debian machine: the venv with pinned Python packages,
# and the Debian packages the tests drive for real (prometheus + promtool).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "==> installing Prometheus (Debian package)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a system service; the repo runs its own instances.
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || $SUDO pkill -x prometheus || true
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing Python packages (torch is a few GB the first time)"
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install --progress-bar on -e '.[dev]'
echo "==> setup done"
