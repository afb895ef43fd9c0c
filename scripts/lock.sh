#!/usr/bin/env bash
# Lock every Python dependency with hashes, for x86_64 and aarch64 (Bookworm's Python 3.11 and
# Trixie's 3.13) in one universal resolution (uv pip compile --universal --generate-hashes):
#   requirements/dev.txt      pyproject's dependencies, every extra but `pi` and `tflite`, and
#                             pip/setuptools (requirements/build.in): scripts/setup.sh and CI
#   requirements/runtime.txt  the same pins, the product only: scripts/install-pi.sh
#   requirements/test.txt     the same pins, the product and the `test` extra:
#                             scripts/check-aarch64.sh (aarch64 wheels, under emulation)
#   requirements/gpiozero-oldest.txt  the oldest gpiozero pyproject allows (check-gpiozero.sh)
# requirements/constraints.txt keeps out releases that refuse our Pythons (uv ignores the upper
# bound of a Requires-Python).
# Run after changing a dependency in pyproject.toml; pins already in the files are kept unless
# you pass uv's --upgrade or --upgrade-package NAME (arguments go to every uv pip compile).
# A changed version of numpy, OpenCV, LiteRT or simsimd needs the aarch64 check and the model
# figures re-measured (models/MODELS.md, "Builds measured").
# Env: EDGE_UV   a uv binary to use (default: uv 0.13.8 installed once, hash-checked, into
#                ~/.cache/edge-gate/uv-0.13.8; that wheel is the x86_64 Linux one)
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.8
UV_SHA256=e18a57b8b352eb7c8feb317b9f6f533c8f0ad9673fd6cf34bbe3cf1a9f6a8984
UV=${EDGE_UV:-}
if [ -z "$UV" ]; then
  tools=$HOME/.cache/edge-gate/uv-$UV_VERSION
  if [ ! -x "$tools/bin/uv" ]; then
    python3 -m venv "$tools"
    printf 'uv==%s --hash=sha256:%s\n' "$UV_VERSION" "$UV_SHA256" >"$tools/uv.txt"
    "$tools/bin/pip" install -q --require-hashes -r "$tools/uv.txt" 2>&1 | grep -v "WARNING: Location" >&2 || true
  fi
  UV=$tools/bin/uv
fi
# Extras locked for development and CI: all but `pi` (picamera2, lgpio, evdev come from
# Raspberry Pi OS's apt) and `tflite` (the fallback runtime, for Pis without LiteRT wheels).
mapfile -t extras < <(python3 -c 'import tomllib
for e in tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {}):
    if e not in ("pi", "tflite"): print("--extra"); print(e)')
compile() { # OUT ARGS...
  local out=$1
  shift
  "$UV" pip compile --quiet --universal --generate-hashes --python-version 3.11 \
    --custom-compile-command "bash scripts/lock.sh" -c requirements/constraints.txt -o "$out" "$@"
}
compile requirements/dev.txt pyproject.toml requirements/build.in "${extras[@]}" "$@"
compile requirements/runtime.txt pyproject.toml requirements/build.in -c requirements/dev.txt "$@"
compile requirements/test.txt pyproject.toml --extra test -c requirements/dev.txt "$@"
floor=$(python3 -c 'import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.search(r">=([\w.]+)", d).group(1) for d in deps if d.startswith("gpiozero")))')
echo "gpiozero==$floor" | compile requirements/gpiozero-oldest.txt --no-deps - "$@"
git --no-pager diff --stat -- requirements/ 2>/dev/null || true
echo "locked: requirements/{dev,runtime,test,gpiozero-oldest}.txt; now: bash scripts/setup.sh"
