#!/usr/bin/env bash
# Set up edge-gate on a fresh machine: a virtualenv in .venv with the package and its test tools
# at the locked versions, plus the Debian tools listed below where they are missing. Safe to run
# again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Every package from the lock, hash-checked (requirements/dev.txt: scripts/lock.sh); then the
# project itself, built with the locked setuptools (no unlocked build environment is fetched).
quiet() { "$@" 2>&1 | { grep -v "WARNING: Location" || true; }; }  # fails when the command fails
quiet .venv/bin/python -m pip install -q --require-hashes -r requirements/dev.txt
quiet .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
.venv/bin/python -c "import edge.vision.runtime as r; assert r.RUNTIME, 'no TFLite runtime'; print('edge-gate ready, runtime:', r.RUNTIME)"
# Debian tools the tests and checks use (systemd, mosquitto, qemu-user-static, mmdebstrap, and
# for the console's browser tests Chromium and CJK fonts), as root with apt; waits for apt's lock
# (a Pi's first boot runs unattended upgrades) and fails if it stays held or the install fails.
bash scripts/debian-tools.sh
