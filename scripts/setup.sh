#!/usr/bin/env bash
# Set up edge-gate on a fresh machine: a virtualenv in .venv with the package and its test tools,
# plus Debian's systemd (for `systemd-analyze verify`) and mosquitto (the fleet tests' broker)
# where they are missing. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v "WARNING: Location" || true
.venv/bin/python -c "import edge.vision.runtime as r; assert r.RUNTIME, 'no TFLite runtime'; print('edge-gate ready, runtime:', r.RUNTIME)"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null) \
      || echo "warning: could not install systemd; systemd unit tests will fail" >&2
  fi
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null) \
      || echo "warning: could not install mosquitto; fleet tests will skip (fail with CI=true)" >&2
  else
    echo "note: mosquitto missing (apt-get install mosquitto as root); fleet tests will skip" >&2
  fi
fi
