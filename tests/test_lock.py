"""The lock drives every install: it covers what pyproject.toml asks for, with hashes, one version
per package and Python across its files, and the aarch64 check reads the right pins from it."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"
sys.path.insert(0, str(ROOT / "scripts"))
from lock_for import pins_for  # noqa: E402

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NOT_LOCKED = ("pi", "tflite")  # from Raspberry Pi OS's apt / the fallback runtime


def entries(name: str) -> list[tuple[Requirement, list[str]]]:
    """(requirement with its marker, its hashes) of every pin in a lock file."""
    text = (LOCKS / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        spec, *hashes = line.split("#", 1)[0].split(" --hash=")
        if spec.strip():
            out.append((Requirement(spec), [h.strip() for h in hashes]))
    return out


def wanted() -> list[Requirement]:
    reqs = list(PROJECT["dependencies"])
    for extra, items in PROJECT["optional-dependencies"].items():
        if extra not in NOT_LOCKED:
            reqs += items
    return [r for r in map(Requirement, reqs) if r.name != PROJECT["name"]]


def test_every_pin_is_exact_and_hashed():
    for name in ("dev.txt", "runtime.txt", "test.txt", "gpiozero-oldest.txt"):
        for req, hashes in entries(name):
            assert [s.operator for s in req.specifier] == ["=="], (name, str(req))
            assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), req


def test_the_lock_satisfies_pyproject():
    """Fails when a dependency was added or its range changed without `bash scripts/lock.sh`."""
    pins: dict[str, list[str]] = {}
    for req, _ in entries("dev.txt"):
        pins.setdefault(req.name, []).append(next(iter(req.specifier)).version)
    for req in wanted():
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{req} is not in requirements/dev.txt: run bash scripts/lock.sh"
        assert all(req.specifier.contains(v, prereleases=True) for v in pins[name]), (req, pins)


def test_the_product_lock_and_the_test_lock_pin_what_dev_pins():
    dev = {(r.name, str(r.specifier)) for r, _ in entries("dev.txt")}
    for name in ("runtime.txt", "test.txt"):
        pins = {(r.name, str(r.specifier)) for r, _ in entries(name)}
        assert pins <= dev, name
    runtime = {r.name for r, _ in entries("runtime.txt")}
    assert {"numpy", "ai-edge-litert", "gpiozero", "pip", "setuptools"} <= runtime
    assert not {"pytest", "ruff", "mypy"} & runtime  # never installed on a lane


def test_aarch64_pins_follow_the_python_of_each_pi_os():
    text = (LOCKS / "test.txt").read_text()
    forked = {r.name for r, _ in entries("test.txt") if "python_full_version" in str(r.marker)}
    names = {}
    for py in ("3.11", "3.13"):
        lines = pins_for(text, "aarch64", py)
        assert all("--hash=sha256:" in ln and ";" not in ln for ln in lines)
        names[py] = [ln.split("==")[0] for ln in lines]
        assert len(names[py]) == len(set(names[py]))  # one version of each package, forks too
        assert forked <= set(names[py])
    assert names["3.11"] == names["3.13"]
    assert "ai-edge-litert" in names["3.11"]  # the runtime is installed on a Pi
    assert "colorama" not in names["3.11"]  # Windows only
