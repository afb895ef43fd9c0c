#!/usr/bin/env bash
# gpiozero at both ends of the range pyproject.toml allows. edge/gate/lgpio_pins.py relies on two
# internals of gpiozero's lgpio pins (see its docstring), so tests/test_relay.py runs against the
# oldest release the range allows (requirements/gpiozero-oldest.txt, hash-checked, installed once
# into a cache) and against the one in .venv (the lock's: the newest in the range when the lock
# was made).
# Env: EDGE_GPIOZERO_CACHE  where the oldest release is installed (~/.cache/edge-gate/gpiozero)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "check-gpiozero: run scripts/setup.sh first (no .venv)" >&2; exit 2; }
CACHE=${EDGE_GPIOZERO_CACHE:-$HOME/.cache/edge-gate/gpiozero}
PIN=requirements/gpiozero-oldest.txt
oldest=$(sed -n 's/^gpiozero==\([^ ]*\).*/\1/p' "$PIN")
floor=$("$PY" -c 'import tomllib, re
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.search(r">=([\w.]+)", d).group(1) for d in deps if d.startswith("gpiozero")))')
[ "$oldest" = "$floor" ] || {
  echo "check-gpiozero: $PIN holds gpiozero $oldest but pyproject.toml allows >=$floor; run scripts/lock.sh" >&2
  exit 1
}
site=$CACHE/$oldest
if [ ! -f "$site/.edge-gate-ok" ]; then
  rm -rf "$site.tmp"
  "$PY" -m pip install -q --no-deps --require-hashes --target "$site.tmp" -r "$PIN" 2>&1 \
    | grep -v "WARNING: Location" >&2 || true
  [ -d "$site.tmp/gpiozero" ] || { echo "check-gpiozero: installing gpiozero $oldest failed" >&2; exit 1; }
  touch "$site.tmp/.edge-gate-ok" && rm -rf "$site" && mv "$site.tmp" "$site"
fi
status=0
for where in "$site" ""; do
  v=$(PYTHONPATH=$where "$PY" -c 'import importlib.metadata as m; print(m.version("gpiozero"))')
  if PYTHONPATH=$where "$PY" -m pytest -q -p no:cacheprovider tests/test_relay.py >/dev/null; then
    echo "gpiozero $v: tests/test_relay.py passed"
  else
    echo "gpiozero $v: tests/test_relay.py FAILED (run: PYTHONPATH=$where $PY -m pytest tests/test_relay.py)"
    status=1
  fi
done
exit $status
