#!/usr/bin/env bash
# Install edge-gate on Raspberry Pi OS (Bookworm, 64-bit) from this checkout. Run as root:
#     sudo bash scripts/install-pi.sh [--issuer-pub PATH] [--broker ADDR] [--pretix-addr ADDR]
# Installs: /opt/edge-gate (code + venv), /etc/edge-gate (gate.toml, gallery.key, issuer.pub),
# /var/lib/edge-gate (state, via systemd StateDirectory), the systemd units, udev rules and the
# firmware fragment. Safe to run again: it never overwrites the config or the gallery key (in an
# existing gate.toml it changes only a revocation list an earlier install put in /etc).
# --screen also installs the lane screen (edge-gate-screen.service, its own user, Chromium in
# the cage kiosk) and points the gate's [screen] socket at it (docs/CONSOLE.md).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
SRC=$(cd "$(dirname "$0")/.." && pwd)
SCREEN=0  # --screen (a flag without a value): taken out here, the pairs are read below
ARGS=()
for a in "$@"; do if [ "$a" = --screen ]; then SCREEN=1; else ARGS+=("$a"); fi; done
set -- ${ARGS[@]+"${ARGS[@]}"}
ISSUER_PUB=""
BROKER_ADDR=""
PRETIX_ADDR=""
while [ $# -ge 2 ]; do
  case "$1" in
    --issuer-pub) ISSUER_PUB=$2 ;;
    --broker) BROKER_ADDR=$2 ;;  # fleet: the MQTT broker's IP address (edge-gate-sync may reach it)
    --pretix-addr) PRETIX_ADDR=$2 ;;  # pretix: the shop's IP address(es) (pretix sync may reach it)
  esac
  shift 2
done

echo "== packages"
apt-get update -qq
# picamera2, lgpio and evdev (the `pi` extra) from Raspberry Pi OS, built for its kernel and libcamera
apt-get install -y -qq python3-venv python3-picamera2 python3-lgpio python3-evdev libcap-dev >/dev/null
# The unit's ExecStartPre=/ExecStopPost= drive the relay off with pinctrl (Raspberry Pi OS),
# raspi-gpio or gpioset (libgpiod): without one, a crash mid-pulse could leave the gate open.
if ! command -v pinctrl >/dev/null && ! command -v raspi-gpio >/dev/null; then
  command -v gpioset >/dev/null || apt-get install -y -qq gpiod >/dev/null || true
fi
if ! command -v pinctrl >/dev/null && ! command -v raspi-gpio >/dev/null && ! command -v gpioset >/dev/null; then
  echo "!! none of pinctrl, raspi-gpio, gpioset is installed: install raspi-utils or gpiod, then run this again" >&2
  exit 1
fi

echo "== user"
id edge-gate >/dev/null 2>&1 || useradd --system --home-dir /var/lib/edge-gate --shell /usr/sbin/nologin edge-gate
for g in video gpio input; do getent group $g >/dev/null && usermod -aG $g edge-gate; done

echo "== code and venv in /opt/edge-gate (root-owned, not editable)"
# A copy owned by root, not the checkout: the user who cloned the repository must not own code
# that root and the service run. The package is installed into the venv (not editable).
install -d -m 0755 -o root -g root /opt/edge-gate
for d in edge models firmware_config requirements scripts systemd; do rm -rf "/opt/edge-gate/$d"; done
cp -r --no-preserve=mode,ownership "$SRC"/{pyproject.toml,README.md,edge,models,firmware_config,requirements,scripts,systemd} /opt/edge-gate/
chown -R root:root /opt/edge-gate
chmod -R u=rwX,go=rX /opt/edge-gate
chmod 0755 /opt/edge-gate/scripts/relay-off
# --system-site-packages: picamera2 and lgpio come from Raspberry Pi OS, built for its libcamera
[ -x /opt/edge-gate/venv/bin/python ] || python3 -m venv --system-site-packages /opt/edge-gate/venv
# Every Python package from the lock, hash-checked and into the venv even where Raspberry Pi OS
# has one (requirements/runtime.txt, scripts/lock.sh); then edge-gate itself, built with the
# locked setuptools.
/opt/edge-gate/venv/bin/pip install -q --no-cache-dir --ignore-installed --require-hashes \
  -r /opt/edge-gate/requirements/runtime.txt
/opt/edge-gate/venv/bin/pip install -q --no-cache-dir --no-deps --no-build-isolation /opt/edge-gate
rm -rf /opt/edge-gate/build /opt/edge-gate/*.egg-info
chown -R root:root /opt/edge-gate/venv

echo "== configuration in /etc/edge-gate"
install -d -m 0750 -o root -g edge-gate /etc/edge-gate
if [ ! -f /etc/edge-gate/gate.toml ]; then
  sed -e 's#^source = "demo"#source = "picamera2"#' \
      -e 's#^pin_factory = "mock"#pin_factory = "lgpio"#' \
      -e 's#^db = "var/gallery.db"#db = "/var/lib/edge-gate/gallery.db"#' \
      -e 's#^key_file = "var/gallery.key"#key_file = "/etc/edge-gate/gallery.key"#' \
      -e 's#^ledger = "var/ledger.db"#ledger = "/var/lib/edge-gate/ledger.db"#' \
      -e 's#^revocation_list = "var/revoked.txt"#revocation_list = "/var/lib/edge-gate/revoked.txt"#' \
      -e 's#^path = "var/audit.db"#path = "/var/lib/edge-gate/audit.db"#' \
      -e 's#^pubkeys = \[\]#pubkeys = ["/etc/edge-gate/issuer.pub"]#' \
      -e 's#^models_dir = ""#models_dir = "/opt/edge-gate/models"#' \
      -e 's#^state_db = "var/fleet.db"#state_db = "/var/lib/edge-gate/fleet.db"#' \
      -e 's#^keys_dir = "var/fleet-keys"#keys_dir = "/var/lib/edge-gate/fleet-keys"#' \
      -e 's#^lane_key_file = "var/lane.key"#lane_key_file = "/var/lib/edge-gate/lane.key"#' \
      /opt/edge-gate/firmware_config/gate.toml > /etc/edge-gate/gate.toml
  chmod 0640 /etc/edge-gate/gate.toml; chgrp edge-gate /etc/edge-gate/gate.toml
fi
if [ -n "$ISSUER_PUB" ]; then install -m 0644 "$ISSUER_PUB" /etc/edge-gate/issuer.pub; fi
[ -f /etc/edge-gate/issuer.pub ] || echo "!! copy the ticket office's issuer.pub to /etc/edge-gate/issuer.pub (the gate refuses to start without a ticket key)"
if [ ! -f /etc/edge-gate/gallery.key ]; then
  # Created in an unpredictable directory inside /etc/edge-gate (mktemp), never in /tmp, then
  # renamed into place on the same filesystem.
  KEYDIR=$(mktemp -d /etc/edge-gate/.keyinit.XXXXXXXX)
  trap 'rm -rf "$KEYDIR"' EXIT
  chown edge-gate:edge-gate "$KEYDIR"; chmod 0700 "$KEYDIR"
  sudo -u edge-gate /opt/edge-gate/venv/bin/edge-gate keys init --config /etc/edge-gate/gate.toml --key-file "$KEYDIR/gallery.key"
  mv -n "$KEYDIR/gallery.key" /etc/edge-gate/gallery.key
  rm -rf "$KEYDIR"; trap - EXIT
  echo "!! back up /etc/edge-gate/gallery.key offline: without it the gallery cannot be opened"
fi

echo "== redemption ledger (never created implicitly: a lost ledger must not reset redemptions)"
install -d -m 0700 -o edge-gate -g edge-gate /var/lib/edge-gate
# The revocation list is state: edge-gate-sync replaces it (a temp file and a lock beside it) with
# the office's revocations, so it lives in the folder the service user owns.
[ -f /var/lib/edge-gate/revoked.txt ] || install -m 0644 -o edge-gate -g edge-gate /dev/null /var/lib/edge-gate/revoked.txt
sudo -u edge-gate /opt/edge-gate/venv/bin/edge-gate ledger init --config /etc/edge-gate/gate.toml

echo "== firmware, udev, systemd"
CFG=/boot/firmware/config.txt; [ -f $CFG ] || CFG=/boot/config.txt
if ! grep -q "edge-gate begin" $CFG; then cat /opt/edge-gate/firmware_config/config.txt >> $CFG; echo "   (reboot once for $CFG)"; fi
install -m 0644 /opt/edge-gate/firmware_config/99-edge-gate.rules /etc/udev/rules.d/99-edge-gate.rules
udevadm control --reload && udevadm trigger
install -m 0644 /opt/edge-gate/systemd/edge-gate.service /opt/edge-gate/systemd/edge-gate-purge.service \
  /opt/edge-gate/systemd/edge-gate-purge.timer /opt/edge-gate/systemd/edge-gate-sync.service \
  /opt/edge-gate/systemd/edge-gate-pretix-sync.service /etc/systemd/system/
if [ -n "$BROKER_ADDR" ]; then  # fleet: sync may reach this address only
  install -d /etc/systemd/system/edge-gate-sync.service.d
  printf '[Service]\nIPAddressAllow=%s\n' "$BROKER_ADDR" > /etc/systemd/system/edge-gate-sync.service.d/broker.conf
fi
if [ -n "$PRETIX_ADDR" ]; then  # pretix: the shop sync may reach (run `pretix sync --once` first)
  install -d /etc/systemd/system/edge-gate-pretix-sync.service.d
  printf '[Service]\nIPAddressAllow=%s\n' "$PRETIX_ADDR" > /etc/systemd/system/edge-gate-pretix-sync.service.d/shop.conf
fi
install -d -m 0755 /etc/systemd/system/systemd-time-wait-sync.service.d
install -m 0644 /opt/edge-gate/systemd/systemd-time-wait-sync.service.d/edge-gate.conf \
  /etc/systemd/system/systemd-time-wait-sync.service.d/edge-gate.conf
systemctl daemon-reload
# An install made before the revocation list moved to /var/lib/edge-gate names
# /etc/edge-gate/revoked.txt in gate.toml (which a later run keeps), a folder sync cannot write:
# office revocations never reached such a lane. The old list's lines join the list there (the
# union of both files, so no revoked id is lost from either), gate.toml is pointed there, then
# the old list goes. A second run finds gate.toml pointed there and changes nothing; an old list
# still there then (a run cut before removing it, or one made by hand) is named, never read. It
# runs after the units are reloaded: an earlier sync unit names the old list in ReadWritePaths=
# (without "-") and would not start once it is gone.
migrate_revocation_list() {  # CONFIG OLD_LIST NEW_LIST OWNER
  local conf=$1 old=$2 new=$3 owner=$4 kept=/dev/null moved=/dev/null merged
  if ! grep -Fqx "revocation_list = \"$old\"" "$conf"; then
    [ ! -f "$old" ] || echo "!! $old is not the lane's revocation list (gate.toml names another): join its lines to the configured list by hand if they still hold, then remove it"
    return 0
  fi
  # Hold each list's lock (the one `ticket revoke` and `edge-gate sync` take) while merging,
  # the configured list's first: a revocation written meanwhile waits and is not lost.
  exec 8>>"$(dirname "$old")/.$(basename "$old").lock" 9>>"$(dirname "$new")/.$(basename "$new").lock"
  flock 8
  flock 9
  [ ! -f "$new" ] || kept=$new
  [ ! -f "$old" ] || moved=$old
  merged=$(mktemp "$new.XXXXXXXX")
  trap "rm -f '$merged'" EXIT  # a failed step leaves no temp file beside the list (named now:
  # the function's locals are gone when the trap runs)
  # every line of the list here as it is, then each line of the old list not already in it
  awk 'FILENAME == ARGV[1] { seen[$0]; print; next } !($0 in seen) { seen[$0]; print }' \
    "$kept" "$moved" > "$merged"
  chown "$owner:$owner" "$merged"; chmod 0644 "$merged"; sync "$merged"
  mv -f "$merged" "$new"
  trap - EXIT
  sed -i "s#^revocation_list = \"$old\"\$#revocation_list = \"$new\"#" "$conf"
  rm -f "$old" "$(dirname "$old")/.$(basename "$old").lock"
  exec 8>&- 9>&-
  echo "!! the revocation list moved to $new: restart edge-gate and edge-gate-sync"
}
migrate_revocation_list /etc/edge-gate/gate.toml /etc/edge-gate/revoked.txt /var/lib/edge-gate/revoked.txt edge-gate
systemctl enable systemd-time-wait-sync.service edge-gate-purge.timer edge-gate.service
if [ "$SCREEN" = 1 ]; then
  echo "== lane screen: edge-gate-screen.service, user edge-gate-screen, Chromium in cage"
  apt-get install -y -qq chromium cage fonts-noto-cjk >/dev/null
  # Its own user in the gate's group (to read gate.toml and share the socket's folder), never
  # the gate's user: the kiosk browser cannot read the gallery, its key or the ledger.
  id edge-gate-screen >/dev/null 2>&1 || useradd --system --gid edge-gate --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin edge-gate-screen
  for g in video render input gpio; do getent group $g >/dev/null && usermod -aG $g edge-gate-screen; done
  install -m 0644 /opt/edge-gate/systemd/edge-gate-screen.service /etc/systemd/system/
  # The gate sends its notices to the socket the screen binds (the unit's RuntimeDirectory);
  # a socket the park set already is kept.
  sed -i -e '/^\[screen\]/,/^\[/ s#^socket = ""#socket = "/run/edge-gate-screen/notices.sock"#' \
    /etc/edge-gate/gate.toml
  systemctl daemon-reload
  systemctl enable edge-gate-screen.service
fi
ln -sf /opt/edge-gate/venv/bin/edge-gate /usr/local/bin/edge-gate

echo "== check"
/opt/edge-gate/scripts/relay-off --config /etc/edge-gate/gate.toml --dry-run
sudo -u edge-gate /opt/edge-gate/venv/bin/edge-gate doctor --config /etc/edge-gate/gate.toml || true
echo "Start with: systemctl start edge-gate && journalctl -fu edge-gate"
