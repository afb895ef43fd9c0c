"""Print the lines of a universal lock file that apply to one machine and Python, markers resolved.

pip evaluates a requirement's marker for the machine it runs on, even when it installs for
another (--platform, --python-version): scripts/check-aarch64.sh, installing aarch64 wheels on
x86, asks this script which of requirements/test.txt's pins apply to aarch64 and Python X.Y.
Each printed line is `name==version --hash=... ...`, ready for `pip install --require-hashes`.

    python scripts/lock_for.py requirements/test.txt --machine aarch64 --python 3.11
"""

from __future__ import annotations

import argparse
from pathlib import Path

from packaging.requirements import Requirement


def pins_for(text: str, machine: str, python: str) -> list[str]:
    """The lock's requirements whose markers hold on `machine` with `python`, with their hashes."""
    env = {
        "platform_machine": machine,
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        spec, *hashes = line.split("#", 1)[0].split(" --hash=")
        if not spec.strip():
            continue
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        req.marker = None
        out.append(" ".join([str(req), *(f"--hash={h.strip()}" for h in hashes)]))
    return out


def main() -> None:
    """Print the pins of one machine and Python."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock", type=Path)
    ap.add_argument("--machine", default="aarch64")
    ap.add_argument("--python", required=True, help="X.Y")
    a = ap.parse_args()
    print("\n".join(pins_for(a.lock.read_text(), a.machine, a.python)))


if __name__ == "__main__":
    main()
