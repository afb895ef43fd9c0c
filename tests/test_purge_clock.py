"""`purge` erases by the wall clock, and an erasure cannot be undone: a clock set forward must not
erase pass holders whose passes are still valid, or audit records still within retention."""

from __future__ import annotations

import re

from edge.config import PROJECT_ROOT


def _deps(unit_text: str) -> tuple[set[str], set[str]]:
    after = {u for line in re.findall(r"^After=(.*)$", unit_text, re.M) for u in line.split()}
    wants = {u for line in re.findall(r"^Wants=(.*)$", unit_text, re.M) for u in line.split()}
    return after, wants


def test_the_purge_unit_waits_for_the_clock_as_the_gate_unit_does():
    """Before: edge-gate-purge.service was ordered after local-fs.target only, so the timer's
    catch-up run at boot (Persistent=true) judged retention by a clock not yet synced (a Pi
    without a real-time clock). Now it waits for time sync as edge-gate.service does."""
    gate = _deps((PROJECT_ROOT / "systemd" / "edge-gate.service").read_text())
    purge = _deps((PROJECT_ROOT / "systemd" / "edge-gate-purge.service").read_text())
    time_units = {"time-sync.target", "systemd-time-wait-sync.service"}
    assert time_units <= gate[0] and time_units <= gate[1]  # what the purge copies
    assert time_units <= purge[0], purge
    assert time_units <= purge[1], purge
