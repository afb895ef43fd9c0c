"""Ticket defects found in review: an operator's date the ticket format cannot carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import tickets as tk
from edge.cli import main


@pytest.fixture()
def office(tmp_path) -> Path:
    tk.keygen(tmp_path / "office")
    return tmp_path / "office"


@pytest.mark.parametrize(
    "dates",
    [
        ("--valid-until", "9999-12-31"),  # a common "forever": past the format's 2106
        ("--valid-until", "2200-01-01"),
        ("--valid-from", "1960-01-01", "--valid-until", "2099-01-01"),  # before 1970
    ],
)
def test_issue_refuses_a_date_the_ticket_cannot_carry_with_the_fix(office, capsys, dates):
    """Times are 32-bit Unix seconds in the signed payload; before, a date outside that range
    ended `ticket issue` with an internal error (struct.error) instead of saying what to do."""
    out = office.parent / "out"
    rc = main(["ticket", "issue", "--key", str(office / "issuer.key"), "--out", str(out),
               "--id", "T-1", *dates])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "internal error" not in err
    assert "2106" in err and "--no-expiry" in err
    assert not (out / "T-1.png").exists()
