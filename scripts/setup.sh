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
# Debian tools the tests and checks use: systemd (`systemd-analyze verify`), mosquitto (the fleet
# tests' broker), and for the aarch64 check (scripts/check-aarch64.sh) qemu-user-static and
# mmdebstrap. Installed only as root with apt.
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v qemu-aarch64-static >/dev/null 2>&1 || missing+=(qemu-user-static)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
# The console's browser tests: Debian's Chromium driven by Playwright (never `playwright install`),
# and CJK fonts so the zh-CN pages and lane screen render (screenshots in docs/).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -d /usr/share/fonts/opentype/noto ] || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "warning: could not install ${missing[*]}; the systemd unit tests, fleet tests, browser tests and the aarch64 check need them" >&2
  else
    echo "note: ${missing[*]} missing (install as root with apt-get): the systemd unit tests, fleet tests, browser tests and the aarch64 check need them" >&2
  fi
fi
