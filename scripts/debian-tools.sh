#!/usr/bin/env bash
# Install the Debian tools the tests and checks use, where missing (scripts/setup.sh runs this):
# systemd (`systemd-analyze verify`), mosquitto (the fleet tests' broker), for the aarch64 check
# (scripts/check-aarch64.sh) qemu-user-static and mmdebstrap, and for the console's browser tests
# Debian's Chromium (driven by Playwright, never `playwright install`) and CJK fonts so the zh-CN
# pages and lane screen render. Installed only as root with apt. A Pi's first boot runs unattended upgrades, which hold apt's lock for minutes: this waits
# for the lock, saying so, and fails (exit 1) if it is still held after EDGE_APT_WAIT_S.
#
# Env: EDGE_APT_WAIT_S   seconds to wait for apt's lock (600)
#      EDGE_APT_LOCK     the lock file to watch (/var/lib/dpkg/lock-frontend)
#      EDGE_APT_GET      the apt-get command (apt-get)
#      EDGE_DEBIAN_TOOLS "command:package ..." to check (the list below; a command starting
#                        with / is a path that must exist)
set -euo pipefail
WAIT_S=${EDGE_APT_WAIT_S:-600}
LOCK=${EDGE_APT_LOCK:-/var/lib/dpkg/lock-frontend}
APT=${EDGE_APT_GET:-apt-get}
TOOLS=${EDGE_DEBIAN_TOOLS:-systemd-analyze:systemd qemu-aarch64-static:qemu-user-static \
mmdebstrap:mmdebstrap mosquitto:mosquitto chromium:chromium \
/usr/share/fonts/opentype/noto:fonts-noto-cjk}
NEEDED_BY="the systemd unit tests, fleet tests, browser tests and the aarch64 check need them"

missing=()
for pair in $TOOLS; do
  cmd=${pair%%:*}
  if [[ $cmd == /* ]]; then
    [ -e "$cmd" ] || missing+=("${pair#*:}")
  else
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${pair#*:}")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v "${APT%% *}" >/dev/null 2>&1; then
  echo "note: ${missing[*]} missing (install as root with apt-get): $NEEDED_BY" >&2
  exit 0
fi

# Held by another process? apt takes an fcntl lock on the file; flock(1) users take flock(2).
lock_held() {
  [ -e "$LOCK" ] || return 1
  python3 - "$LOCK" <<'PY'
import fcntl, sys
with open(sys.argv[1], "rb+") as f:
    for take in (fcntl.lockf, fcntl.flock):
        try:
            take(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit(0)  # held
sys.exit(1)
PY
}

waited=0
while lock_held; do
  if [ "$waited" -ge "$WAIT_S" ]; then
    echo "error: apt's lock $LOCK is still held after ${WAIT_S} s (unattended upgrades?);" \
      "${missing[*]} not installed. Run scripts/setup.sh again when apt is free" \
      "(see: ps aux | grep -E 'apt|dpkg'), or set EDGE_APT_WAIT_S to wait longer." >&2
    exit 1
  fi
  [ $((waited % 30)) -eq 0 ] && echo "waiting for apt's lock $LOCK (held by another process, e.g." \
    "unattended upgrades on a first boot): ${waited} of ${WAIT_S} s" >&2
  sleep 1
  waited=$((waited + 1))
done

left=$((WAIT_S - waited))
if ! { DEBIAN_FRONTEND=noninteractive $APT -o DPkg::Lock::Timeout="$left" update -qq \
  && DEBIAN_FRONTEND=noninteractive $APT -o DPkg::Lock::Timeout="$left" install -y -qq \
    "${missing[@]}" >/dev/null; }; then
  echo "error: apt-get could not install ${missing[*]}: $NEEDED_BY" >&2
  exit 1
fi
