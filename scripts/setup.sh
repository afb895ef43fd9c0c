#!/usr/bin/env bash
# Set up edge-gate on a fresh machine: a virtualenv in .venv with the package and its test tools,
# plus the Debian tools listed below where they are missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev,console,browser]' 2>&1 | grep -v "WARNING: Location" || true
.venv/bin/python -c "import edge.vision.runtime as r; assert r.RUNTIME, 'no TFLite runtime'; print('edge-gate ready, runtime:', r.RUNTIME)"
# Debian tools the tests and checks use (systemd, mosquitto, qemu-user-static, mmdebstrap, and
# for the console's browser tests Chromium and CJK fonts), as root with apt; waits for apt's lock
# (a Pi's first boot runs unattended upgrades) and fails if it stays held or the install fails.
bash scripts/debian-tools.sh
