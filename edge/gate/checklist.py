"""The records `edge-gate doctor` prints, and how a module registers the checks that make them.

A leaf of edge/gate: doctor.py (the vision, gallery and clock checks, and the run) and
doctor_site.py (the lane's own checks) both register here, so neither imports the other's
registry back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from edge import config as config_mod

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of the checklist: what was checked, how it went, and what to do about it."""

    status: Status
    check: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        """JSON form for `doctor --json` (keys status, check, detail, fix)."""
        return asdict(self)


@dataclass(frozen=True)
class Site:
    """What the checks look at: the configuration and the gallery paths in use."""

    cfg: config_mod.Config
    db: Path
    key: Path


CheckFn = Callable[[Site], "str | Check"]


def registry() -> tuple[list[tuple[str, CheckFn]], Callable[[str], Callable[[CheckFn], CheckFn]]]:
    """A module's list of checks, and the decorator `@check(name)` that appends to it in order."""
    checks: list[tuple[str, CheckFn]] = []

    def check(name: str) -> Callable[[CheckFn], CheckFn]:
        def deco(fn: CheckFn) -> CheckFn:
            checks.append((name, fn))
            return fn

        return deco

    return checks, check
