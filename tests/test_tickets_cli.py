"""The ticket commands as an operator types them: issue refuses mistakes, verify sees what the gate
sees (--config), revocation fails closed and matches ids exactly."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edge import config as config_mod
from edge import tickets as tk
from edge.cli import main


@pytest.fixture()
def office(tmp_path) -> Path:
    tk.keygen(tmp_path / "office")
    return tmp_path / "office"


def issue(office: Path, *args: str) -> list[str]:
    return [
        "ticket",
        "issue",
        "--key",
        str(office / "issuer.key"),
        "--out",
        str(office.parent / "out"),
        *args,
    ]


def test_issue_requires_an_expiry_or_an_explicit_no_expiry(office, capsys):
    assert main(issue(office, "--id", "T-1")) == 2
    assert "--valid-until" in capsys.readouterr().err
    assert main(issue(office, "--id", "T-2", "--no-expiry")) == 0
    out = capsys.readouterr().out.splitlines()
    assert "no expiry" in out[1]
    assert (
        main(issue(office, "--id", "T-3", "--no-expiry", "--valid-from", "1970-01-01T00:00Z")) == 0
    )
    assert (
        capsys.readouterr().out.splitlines()[1] == "valid any time .. no expiry (UTC)"
    )  # not None


def test_a_season_pass_of_zero_entries_a_day_is_refused_not_made_one_time(office, capsys):
    """--season-per-day 0 issued a one-time ticket, without a word."""
    assert main(issue(office, "--id", "T-1", "--no-expiry", "--season-per-day", "0")) == 2
    assert "--season-per-day: 0 must be 1 or more" in capsys.readouterr().err
    assert not (office.parent / "out" / "T-1.png").exists()


@pytest.mark.parametrize("entries", ["0", "-5", "70000"])
def test_issue_refuses_entry_counts_out_of_range(office, capsys, entries):
    rc = main(issue(office, "--id", "T-1", "--valid-until", "2099-01-01", "--entries", entries))
    assert rc == 2
    assert "out of range" in capsys.readouterr().err
    assert not (office.parent / "out" / "T-1.png").exists()


def test_issue_refuses_to_overwrite_and_prints_file_and_window(office, capsys):
    assert main(issue(office, "--id", "T-1", "--valid-until", "2099-01-01")) == 0
    out = capsys.readouterr().out.splitlines()
    png = office.parent / "out" / "T-1.png"
    assert out[0] == f"wrote {png}"
    assert out[1].startswith("valid ")
    assert "2099-01-0" in out[1]
    assert out[2].startswith("EG")
    before = png.read_bytes()
    assert main(issue(office, "--id", "T-1", "--valid-until", "2099-06-01")) == 2
    assert "already exists" in capsys.readouterr().err
    assert png.read_bytes() == before


@pytest.mark.parametrize("bad", ["T#7", "with space", "../up"])
def test_issue_refuses_ids_outside_the_character_set(office, capsys, bad):
    assert main(issue(office, "--id", bad, "--valid-until", "2099-01-01")) == 2
    assert "not allowed" in capsys.readouterr().err


# --- verify with the gate's config -----------------------------------------------------------


def gate(tmp: Path, office: Path, antipassback: float = 0.0) -> Path:
    (tmp / "revoked.txt").write_text("")
    p = tmp / "gate.toml"
    p.write_text(
        '[gate]\nid = "lane-7"\n[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        f'revocation_list = "revoked.txt"\nanti_passback_s = {antipassback}\n'
        '[audit]\npath = "audit.db"\n'
    )
    assert main(["ledger", "init", "--config", str(p)]) == 0
    return p


def signed(office: Path, tid: str, **kw) -> str:
    now = int(time.time())
    return tk.sign(
        tk.Ticket(tid, valid_from=now - 60, valid_until=now + 3600, **kw),
        tk.load_private(office / "issuer.key"),
    )


def verify(capsys, *args: str) -> tuple[int, list[dict]]:
    rc = main(["ticket", "verify", *args])
    return rc, [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def test_verify_config_uses_the_gates_revocations_ledger_and_id(tmp_path, office, capsys):
    cfg = gate(tmp_path, office)
    capsys.readouterr()
    assert main(["ticket", "revoke", "--list", str(tmp_path / "revoked.txt"), "R-1"]) == 0
    capsys.readouterr()
    rc, out = verify(
        capsys, "--config", str(cfg), "--redeem", signed(office, "R-1"), signed(office, "OK-1")
    )
    assert [(o["ticket_id"], o["valid"], o["reason"]) for o in out] == [
        ("R-1", False, "revoked"),
        ("OK-1", True, "ok"),
    ]
    assert rc == 1
    from edge.tickets.ledger import Ledger

    with Ledger(tmp_path / "ledger.db") as led:
        assert led.used("R-1") == 0
        rows = led.conn.execute("SELECT ticket_id, gate FROM redemptions").fetchall()
    assert rows == [("OK-1", "lane-7")]
    from edge.gate.audit import AuditLog

    with AuditLog(tmp_path / "audit.db") as log:
        assert [(r.subject, r.decision) for r in log.records("decision")] == [
            ("R-1", "deny"),
            ("OK-1", "grant"),
        ]


def test_mistyped_revocations_path_is_an_error(tmp_path, office, capsys):
    rc = main(
        [
            "ticket",
            "verify",
            "--pubkey",
            str(office / "issuer.pub"),
            "--revocations",
            str(tmp_path / "revokd.txt"),
            signed(office, "A-1"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "revokd.txt: no such file" in err
    assert len(err.strip().splitlines()) == 1


def test_antipassback_refusal_uses_its_reason(tmp_path, office, capsys):
    cfg = gate(tmp_path, office, antipassback=60.0)
    capsys.readouterr()
    text = signed(office, "E-3", kind=tk.Kind.ENTRIES, count=3)
    rc, out = verify(capsys, "--config", str(cfg), "--redeem", text, text)
    assert [o["reason"] for o in out] == ["ok", "anti_passback"]


def test_revoke_is_exact_not_duplicated_and_can_be_undone(tmp_path, office, capsys):
    cfg = gate(tmp_path, office)
    lst = str(tmp_path / "revoked.txt")
    assert main(["ticket", "revoke", "--list", lst, "T#7", "day pass 9"]) == 0
    assert main(["ticket", "revoke", "--list", lst, "T#7"]) == 0
    assert "1 already revoked" in capsys.readouterr().out
    assert (tmp_path / "revoked.txt").read_text().splitlines() == ["T#7", "day pass 9"]
    rc, out = verify(
        capsys,
        "--config",
        str(cfg),
        signed(office, "T#7"),
        signed(office, "T"),
        signed(office, "day pass 9"),
    )
    assert [o["reason"] for o in out] == ["revoked", "ok", "revoked"]
    assert main(["ticket", "unrevoke", "--list", lst, "T#7"]) == 0
    capsys.readouterr()
    rc, out = verify(capsys, "--config", str(cfg), signed(office, "T#7"))
    assert out[0]["reason"] == "ok"


def test_a_comma_separated_list_of_ids_is_refused_not_revoked_as_one_id(tmp_path, office, capsys):
    cfg = gate(tmp_path, office)
    lst = str(tmp_path / "revoked.txt")
    for ids in (["T-5,T-6"], ["T-5,", "T-6"]):
        assert main(["ticket", "revoke", "--list", lst, *ids]) == 2
        assert "a list joined by commas" in capsys.readouterr().err
    assert (tmp_path / "revoked.txt").read_text() == ""  # nothing written
    assert main(["ticket", "revoke", "--list", lst, "T-5", "day pass 9"]) == 0
    out = capsys.readouterr().out
    assert "revoked 2 ticket(s)" in out and "'day pass 9' is not an id edge-gate issues" in out
    assert "'T-5'" not in out and "reads the list again within a second" in out
    rc, res = verify(capsys, "--config", str(cfg), signed(office, "T-5"), signed(office, "T-6"))
    assert [o["reason"] for o in res] == ["revoked", "ok"]
    assert main(["ticket", "unrevoke", "--list", lst, "T-5,T-6"]) == 2
    assert "a list joined by commas" in capsys.readouterr().err
    # another system's id that holds a comma is still revoked exactly as written
    assert main(["ticket", "revoke", "--list", lst, "day pass, 9"]) == 0
    assert "day pass, 9" in (tmp_path / "revoked.txt").read_text().splitlines()


def test_gate_keeps_the_last_good_revocation_list_and_alarms(tmp_path, office, caplog):
    from gpiozero.pins.mock import MockFactory

    from edge.gate.daemon import Gate
    from edge.lab.demo import ticket_scene

    cfg = config_mod.load(gate(tmp_path, office))
    tk.revoke(tmp_path / "revoked.txt", ["R-9"])
    clip = ticket_scene(office, tmp_path / "t.mp4", time.time()).clip
    cfg = config_mod.override(cfg, vision={"face_enabled": False}, camera={"source": str(clip)})
    g = Gate(cfg, pin_factory=MockFactory())
    try:
        text = signed(office, "R-9")
        assert g.verifier.verify(text, time.time()).reason == tk.Reason.REVOKED
        for broken in ("missing", "directory", "binary"):
            p = tmp_path / "revoked.txt"
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
            if broken == "directory":
                p.mkdir()
            elif broken == "binary":
                p.write_bytes(b"\xff\xfe\x00")
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                g.reload()
            assert g.verifier.verify(text, time.time()).reason == tk.Reason.REVOKED, broken
            assert any("revocation_list" in r.getMessage() for r in caplog.records), broken
    finally:
        g.close()


def test_gate_refuses_to_start_with_a_missing_configured_list(tmp_path, office):
    from gpiozero.pins.mock import MockFactory

    from edge.errors import ConfigError
    from edge.gate.daemon import Gate

    cfg = config_mod.load(gate(tmp_path, office))
    (tmp_path / "revoked.txt").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        Gate(
            config_mod.override(cfg, camera={"source": str(tmp_path / "none.mp4")}),
            pin_factory=MockFactory(),
        )


def test_a_hand_edited_list_with_a_byte_order_mark_and_joined_ids(tmp_path, office, capsys):
    """Before, a list saved by an editor that puts a byte-order mark first revoked nothing on
    its first line (the mark became part of the id), and a line `R-2,R-3` revoked neither,
    while doctor said OK. Now the mark is dropped, and doctor warns about the joined line."""
    cfg = gate(tmp_path, office)
    (tmp_path / "revoked.txt").write_bytes(b"\xef\xbb\xbfR-1\nR-2,R-3\nday pass, 9\n")
    capsys.readouterr()
    _, out = verify(capsys, "--config", str(cfg), *(signed(office, t) for t in ("R-1", "OK-1")))
    assert [(o["ticket_id"], o["reason"]) for o in out] == [("R-1", "revoked"), ("OK-1", "ok")]
    assert main(["doctor", "--config", str(cfg), "--json"]) in (0, 1)
    (row,) = [c for c in json.loads(capsys.readouterr().out)
              if c["check"] == "revocation list"]  # fmt: skip
    assert row["status"] == "warn", row
    assert "line 2 ('R-2,R-3')" in row["detail"] and "one id per line" in row["fix"]
    assert "more" not in row["detail"]  # another system's id holding a comma is not one


def test_issue_with_the_public_key_says_so_before_its_mode(tmp_path, office, capsys):
    """Before, `ticket issue --key issuer.pub` said the key's mode was too loose (fix: chmod 600,
    which would have locked the gates out of it), then the library's raw PEM error."""

    def issue_with(key: str, tid: str) -> str:
        argv = issue(office, "--id", tid, "--no-expiry")
        argv[argv.index("--key") + 1] = str(office / key)
        capsys.readouterr()
        assert main(argv) == 2
        return capsys.readouterr().err

    err = issue_with("issuer.pub", "X-1")
    assert "is a public key, not the issuer's private key" in err and "chmod" not in err, err
    (office / "junk.key").write_text("not a key\n")
    (office / "junk.key").chmod(0o600)
    err = issue_with("junk.key", "X-2")
    assert "is not an issuer private key (PEM)" in err and "http" not in err, err
