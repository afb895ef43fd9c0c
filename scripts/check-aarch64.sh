#!/usr/bin/env bash
# Prove edge-gate on the Pi's CPU without a Pi: QEMU user-mode emulation of aarch64.
#
# For each Raspberry Pi OS base (bookworm: Python 3.11 on a Pi 4's Cortex-A72; trixie: Python
# 3.13 on a Pi 5's Cortex-A76) this builds or reuses an arm64 root from Debian packages
# (mmdebstrap --variant=extract), installs the project's locked runtime and test dependencies as
# aarch64 wheels (requirements/test.txt, hash-checked: pip --target --platform
# manylinux_2_NN_aarch64 --only-binary=:all: --require-hashes), then runs under
# qemu-aarch64-static: (a) the test files that need no hardware and no network, and (b) the
# equivalence check (edge/lab/equivalence.py): every model in models/models.json on the same
# photos, and the gate on the Hamilton clip, compared with x86; any per-image cosine below
# 0.999 or any different gate decision fails.
#
# Usage: bash scripts/check-aarch64.sh [bookworm] [trixie]     (default: both, side by side)
# Env:   EDGE_AARCH64_CACHE   roots and wheels, reused between runs (/var/cache/edge-gate-aarch64)
#        EDGE_AARCH64_IMAGES  photos for the equivalence check (4)
#        EDGE_AARCH64_TESTS   test files run under emulation (the list below)
#        EDGE_AARCH64_SKIP    pytest -k expression of tests left out under emulation: those that
#                             start many Python processes (kill -9 loops, CLI subprocesses), which
#                             take minutes each when every process start is emulated, and one
#                             gallery test that enrolls real photos over and over (6 min alone)
#        EDGE_AARCH64_CLIP    0: leave the Hamilton clip out of the equivalence check (1)
#        EDGE_AARCH64_CLIP_FRAMES  frames of the clip played (110: his grant is at frame 93; 0: all)
#        EDGE_AARCH64_OUT     JSON and logs of this run (var/aarch64)
#        EDGE_FUZZ_SCALE      hypothesis examples under emulation, as a fraction (0.05)
#        EDGE_DEBIAN_MIRROR   Debian mirror (default: the one apt on this machine uses)
#        QEMU_CPU             force one emulated core for every suite (e.g. max, to see it fail)
# Two traps, both handled here: the TFLite runtime crashes on the host's x86 /proc/cpuinfo (a
# Pi's is written into each root, which `qemu-aarch64-static -L ROOT` reads instead), and QEMU's
# default core `max` gives wrong int8 results (a named Pi core is always set).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
REPO=$PWD
HOST_PY=$REPO/.venv/bin/python
CACHE=${EDGE_AARCH64_CACHE:-/var/cache/edge-gate-aarch64}
IMAGES=${EDGE_AARCH64_IMAGES:-4}
CLIP_ARG=(--clip-frames "${EDGE_AARCH64_CLIP_FRAMES:-110}")
[ "${EDGE_AARCH64_CLIP:-1}" = 1 ] || CLIP_ARG=(--no-clip)
OUT=${EDGE_AARCH64_OUT:-$REPO/var/aarch64}
TESTS=${EDGE_AARCH64_TESTS:-tests/test_vision.py tests/test_policy.py tests/test_tickets.py \
tests/test_gallery.py tests/test_ledger.py tests/test_config.py tests/test_evaluate.py \
tests/test_liveness.py}
SKIP=${EDGE_AARCH64_SKIP:-not kill and not killed and not from_video and not cli_ and not reenroll}
SUITES=("$@")
[ ${#SUITES[@]} -gt 0 ] || SUITES=(bookworm trixie)
# Long steps report progress (edge/progress.py): their output passes through pipes here, so on
# a terminal they print a progress line every few seconds; in a log, one summary line each.
if [ -t 2 ]; then export EDGE_PROGRESS=${EDGE_PROGRESS:-lines}; fi

for tool in qemu-aarch64-static mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "check-aarch64: $tool is missing (apt-get install qemu-user-static mmdebstrap)" >&2; exit 2; }
done
[ -x "$HOST_PY" ] || { echo "check-aarch64: run scripts/setup.sh first (no .venv)" >&2; exit 2; }
mkdir -p "$CACHE" "$OUT"

# suite -> python version, newest glibc of its wheels, emulated core, Pi board
suite_facts() {
  case "$1" in
    bookworm) echo "3.11 36 cortex-a72 pi4" ;;
    trixie) echo "3.13 41 cortex-a76 pi5" ;;
    *) echo "check-aarch64: unknown suite $1 (bookworm or trixie)" >&2; return 1 ;;
  esac
}

debian_mirror() {
  if [ -n "${EDGE_DEBIAN_MIRROR:-}" ]; then echo "$EDGE_DEBIAN_MIRROR"; return; fi
  local m
  m=$(apt-get indextargets --format '$(REPO_URI) $(ORIGIN) $(SUITE)' 2>/dev/null \
    | awk '$2 == "Debian" && $3 !~ /-(security|updates|backports)$/ {print $1; exit}')
  [ -n "$m" ] || m=$(grep -hoE '^(deb +|URIs: *)[a-z]+://[^ ]+/debian/?( |$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | awk '{print $NF; exit}')
  [ -n "$m" ] || { echo "check-aarch64: no Debian mirror in apt's sources; set EDGE_DEBIAN_MIRROR" >&2; return 1; }
  echo "$m"
}

# A Pi's /proc/cpuinfo and device-tree model, read by the runtime and by `doctor`.
write_pi_proc() { # ROOT BOARD
  local root=$1 n
  mkdir -p "$root/proc/device-tree"
  : >"$root/proc/cpuinfo"
  for n in 0 1 2 3; do
    if [ "$2" = pi5 ]; then
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$n"
    else
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$n"
    fi >>"$root/proc/cpuinfo"
  done
  if [ "$2" = pi5 ]; then
    printf 'Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n' >>"$root/proc/cpuinfo"
    printf 'Raspberry Pi 5 Model B Rev 1.0\0' >"$root/proc/device-tree/model"
  else
    printf 'Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$root/proc/cpuinfo"
    printf 'Raspberry Pi 4 Model B Rev 1.1\0' >"$root/proc/device-tree/model"
  fi
}

# The locked runtime and test requirements for aarch64 and this Python, with their hashes
# (requirements/test.txt; markers resolved by scripts/lock_for.py, since pip evaluates them for
# the host, not for the --platform it installs for).
requirements() { # PYVER
  "$HOST_PY" scripts/lock_for.py requirements/test.txt --machine aarch64 --python "$1"
}

prepare() { # SUITE -> prints "ROOT SITE PYVER CORE"
  local suite=$1 py glibc core board root site reqs key plats n mirror
  read -r py glibc core board <<<"$(suite_facts "$suite")"
  root=$CACHE/$suite/root
  if [ ! -f "$root/.edge-gate-ok" ]; then
    echo "building the arm64 $suite root (python$py) in $root" >&2
    mirror=$(debian_mirror)
    rm -rf "$root.tmp" && mkdir -p "$CACHE/$suite"
    mmdebstrap --quiet --variant=extract --architectures=arm64 \
      --include="python$py,libpython$py-stdlib,libstdc++6,libgcc-s1,ca-certificates,tzdata" \
      "$suite" "$root.tmp" "$mirror" >&2
    for n in bin lib sbin; do [ -e "$root.tmp/$n" ] || ln -s "usr/$n" "$root.tmp/$n"; done
    touch "$root.tmp/.edge-gate-ok" && rm -rf "$root" && mv "$root.tmp" "$root"
  fi
  write_pi_proc "$root" "$board"
  reqs=$(requirements "$py")
  key=$(printf '%s\n%s %s\n' "$reqs" "$py" "$glibc" | sha256sum | cut -c1-16)
  site=$CACHE/$suite/site-$key
  if [ ! -f "$site/.edge-gate-ok" ]; then
    echo "installing aarch64 wheels for cp${py/./} into $site" >&2
    plats=()
    for n in $(seq "$glibc" -1 17); do plats+=(--platform "manylinux_2_${n}_aarch64"); done
    rm -rf "$site.tmp"
    printf '%s\n' "$reqs" >"$CACHE/$suite/requirements.txt"
    "$HOST_PY" -m pip install -q --target "$site.tmp" "${plats[@]}" --platform manylinux2014_aarch64 \
      --only-binary=:all: --python-version "$py" --implementation cp --abi "cp${py/./}" \
      --require-hashes --no-deps -r "$CACHE/$suite/requirements.txt" 2>&1 \
      | grep -v "WARNING: Location" >&2 || true
    [ -d "$site.tmp/numpy" ] || { echo "check-aarch64: wheel install for $suite failed" >&2; return 1; }
    # subprocesses started with sys.executable must run under emulation too
    printf 'import os, sys\nif os.environ.get("EDGE_AARCH64_PYTHON"):\n    sys.executable = os.environ["EDGE_AARCH64_PYTHON"]\n' \
      >"$site.tmp/sitecustomize.py"
    touch "$site.tmp/.edge-gate-ok"
    find "$CACHE/$suite" -maxdepth 1 -name 'site-*' ! -name "site-$key*" -exec rm -rf {} +
    mv "$site.tmp" "$site"
  fi
  # the interpreter as a host command: a wrapper the tests' subprocesses can exec too
  cat >"$CACHE/$suite/python" <<EOF
#!/bin/sh
export PYTHONPATH="$site:$REPO\${PYTHONPATH:+:\$PYTHONPATH}" EDGE_AARCH64_PYTHON="$CACHE/$suite/python"
export PYTHONPYCACHEPREFIX="$CACHE/$suite/pycache"  # bytecode kept here, never in the repo
unset PYTHONDONTWRITEBYTECODE
exec qemu-aarch64-static -L "$root" "$root/usr/bin/python$py" "\$@"
EOF
  chmod +x "$CACHE/$suite/python"
  echo "$core"
}

timed() { # LABEL CMD...: run CMD, then print its wall time and CPU time (CPU is what load hides)
  local TIMEFORMAT="$1: %0R s wall, %0U+%0S s CPU"
  shift
  time "$@"
}

run_tests() { # PY
  # shellcheck disable=SC2086
  (cd "$REPO" && EDGE_FUZZ_SCALE=${EDGE_FUZZ_SCALE:-0.05} "$1" -m pytest -q -p no:cacheprovider -m "not heavy" -k "$SKIP" --durations=10 $TESTS)
}

run_equivalence() { # PY SUITE
  "$1" -m edge.lab.equivalence run --out "$OUT/$2.json" --images "$IMAGES" "${CLIP_ARG[@]}" 2>&1 \
    | grep -v "XNNPACK delegate for CPU"
  "$HOST_PY" -m edge.lab.equivalence compare "$OUT/x86.json" "$OUT/$2.json" \
    --json "$OUT/$2-figures.json"
}

check_suite() { # SUITE
  local suite=$1 core rc=0 py step
  core=$(timed prepare prepare "$suite")
  export QEMU_CPU=${FORCE_CPU:-$core}
  py=$CACHE/$suite/python
  "$py" -c 'import platform, sys; from edge.vision.cpu import read_cpu
print(platform.machine(), "Python", sys.version.split()[0], "|", read_cpu().summary())'
  echo "QEMU_CPU=$QEMU_CPU"
  for step in equivalence tests; do
    if timed "$step" "run_$step" "$py" "$suite"; then
      echo "$suite $step passed" >>"$OUT/status"
    else
      echo "$suite $step failed" >>"$OUT/status" && rc=1
    fi
  done
  return $rc
}

FORCE_CPU=${QEMU_CPU:-}
unset QEMU_CPU
[ -z "$FORCE_CPU" ] || echo "QEMU_CPU=$FORCE_CPU forced for every suite"
T0=$SECONDS
: >"$OUT/status"
what="the Hamilton clip"
[ "${EDGE_AARCH64_CLIP:-1}" = 1 ] || what="no clip"
echo "x86 reference: $IMAGES photos, every model in models/models.json, $what"
timed "x86 reference" "$HOST_PY" -m edge.lab.equivalence run --out "$OUT/x86.json" \
  --images "$IMAGES" "${CLIP_ARG[@]}" 2>&1 | grep -v "XNNPACK delegate for CPU"
pids=()
for s in "${SUITES[@]}"; do
  suite_facts "$s" >/dev/null
  (set -o pipefail; check_suite "$s" 2>&1 | sed -u "s/^/[$s] /") &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then echo "aarch64 ${SUITES[$i]}: passed"; else echo "aarch64 ${SUITES[$i]}: FAILED"; status=1; fi
done
echo "check-aarch64: $((SECONDS - T0)) s in all (cache $CACHE)"
echo "aarch64: $(grep -c ' passed$' "$OUT/status") passed, $(grep -c ' failed$' "$OUT/status") failed"
exit $status
