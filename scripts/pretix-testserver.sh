#!/usr/bin/env bash
# A real pretix for the tests (tests/pretix_server.py starts it): pretix from PyPI in its own
# virtualenv plus a migrated SQLite template database, built once per pretix version into a cache
# outside the repository. `migrate` takes 1.5-2 minutes; every test run copies the template.
#
#   scripts/pretix-testserver.sh build    # build the cache if it is not complete (safe to re-run)
#   scripts/pretix-testserver.sh path     # print the cache folder (exit 1 when not built)
#
# Cache: $EDGE_PRETIX_CACHE, else /var/cache/edge-gate-pretix when writable, else
# ~/.cache/edge-gate/pretix; one folder per version holding venv/, template.sqlite3 and READY.
set -euo pipefail
PRETIX_VERSION=2026.8.0   # pinned: the tests and docs/TICKETS.md are checked against this release
PY=${PYTHON:-python3}

cache_root() {
  if [ -n "${EDGE_PRETIX_CACHE:-}" ]; then
    echo "$EDGE_PRETIX_CACHE"
  elif mkdir -p /var/cache/edge-gate-pretix 2>/dev/null && [ -w /var/cache/edge-gate-pretix ]; then
    echo /var/cache/edge-gate-pretix
  else
    echo "${XDG_CACHE_HOME:-$HOME/.cache}/edge-gate/pretix"
  fi
}

DIR="$(cache_root)/$PRETIX_VERSION"

case "${1:-build}" in
  path)
    [ -f "$DIR/READY" ] || { echo "pretix $PRETIX_VERSION not built: run $0 build" >&2; exit 1; }
    echo "$DIR"
    exit 0
    ;;
  version)
    echo "$PRETIX_VERSION"
    exit 0
    ;;
  build) ;;
  *) echo "usage: $0 build|path|version" >&2; exit 2 ;;
esac

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9   # two test runs building at once: the second waits, then finds READY
if [ -f "$DIR/READY" ]; then
  echo "$DIR"
  exit 0
fi
rm -rf "$DIR/venv" "$DIR/build" "$DIR/template.sqlite3"
echo "pretix $PRETIX_VERSION: creating virtualenv in $DIR/venv" >&2
"$PY" -m venv "$DIR/venv" || { echo "pretix $PRETIX_VERSION: '$PY -m venv' failed" >&2; exit 1; }
"$DIR/venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$DIR/venv/bin/python" -m pip install -q "pretix==$PRETIX_VERSION" 2>&1 | grep -v "WARNING: Location" >&2 || true
[ -x "$DIR/venv/bin/python" ] && "$DIR/venv/bin/python" -c "import pretix" || { echo "pretix $PRETIX_VERSION did not install" >&2; exit 1; }
mkdir -p "$DIR/build/data"
cat > "$DIR/build/pretix.cfg" <<CFG
[pretix]
instance_name=edge-gate-test
url=http://127.0.0.1:8000
datadir=$DIR/build/data
currency=EUR
ecb_rates=false
[database]
backend=sqlite3
[django]
debug=false
[mail]
from=pretix@localhost
CFG
echo "pretix $PRETIX_VERSION: migrating the template database (1.5-2 minutes)" >&2
PRETIX_CONFIG_FILE="$DIR/build/pretix.cfg" "$DIR/venv/bin/python" -m pretix migrate -v 0 >&2 \
  || { echo "pretix $PRETIX_VERSION: migrate failed" >&2; exit 1; }
cp "$DIR/build/data/db.sqlite3" "$DIR/template.sqlite3"
rm -rf "$DIR/build"
date -u +%FT%TZ > "$DIR/READY"
echo "$DIR"
