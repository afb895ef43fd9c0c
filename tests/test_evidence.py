"""Evidence that cannot be edited silently (issue 20, rows 6, 7 and 10): the audit log and the
ledger are keyed chains, a restored older copy is caught by the witness beside the key, a spent
ticket stays spent after its rows are deleted, and key files others could change are refused.

Every attack is made the way someone with a shell on a lane would: `sqlite3` (Python's module)
on the files, `cp` of an old copy; every check is the CLI a site runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from edge import tickets as tk
from edge.cli import main
from edge.gate.audit import AuditLog, AuditRecord, record_hash

GENESIS = "0" * 64


def lane(tmp: Path) -> Path:
    """A gate config with an issuer key, a revocation list, a ledger and an audit log."""
    tk.keygen(tmp / "office")
    (tmp / "revoked.txt").touch()
    cfg = tmp / "gate.toml"
    cfg.write_text(
        '[gate]\nid = "g-1"\n[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        'revocation_list = "revoked.txt"\nanti_passback_s = 0.0\n'
        '[audit]\npath = "audit.db"\nevidence_key = "state/evidence.key"\n'
    )
    assert main(["ledger", "init", "--config", str(cfg)]) == 0
    return cfg


def ticket(tmp: Path, tid: str) -> str:
    now = int(time.time())
    t = tk.Ticket(tid, valid_from=now - 60, valid_until=now + 3600)
    return tk.sign(t, tk.load_private(tmp / "office" / "issuer.key"))


def redeem(capsys, cfg: Path, text: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["ticket", "verify", "--config", str(cfg), "--redeem", text])
    return rc, json.loads(capsys.readouterr().out.splitlines()[0])


def audit_verify(capsys, cfg: Path) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["audit", "verify", "--config", str(cfg)])
    return rc, capsys.readouterr().out


def sql(path: Path, script: str) -> None:
    """What an intruder types into `sqlite3 FILE`: triggers dropped first, then the edit."""
    c = sqlite3.connect(path)
    c.executescript(script)
    c.commit()
    c.close()


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite file (its WAL folded in), as a backup tool makes."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    a.backup(b)
    a.close()
    b.close()


def restore(backup: Path, path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, path)


def busy_lane(tmp: Path, capsys, n: int = 6) -> Path:
    cfg = lane(tmp)
    for i in range(n):
        rc, out = redeem(capsys, cfg, ticket(tmp, f"T-{i}"))
        assert (rc, out["reason"]) == (0, "ok")
    assert audit_verify(capsys, cfg)[0] == 0
    return cfg


# --- row 6: the audit log -------------------------------------------------------------------------


def test_intact_lane_verifies_keyed(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys)
    rc, out = audit_verify(capsys, cfg)
    assert rc == 0
    assert "audit chain intact: 6 records" in out
    assert "(hashed and keyed)" in out
    assert "ledger chain intact: 6 entries" in out
    key = tmp_path / "state" / "evidence.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_deleted_record_with_a_forged_checkpoint_is_detected(tmp_path, capsys):
    """Row 6: the plain chain alone verified after this (no secret was needed)."""
    cfg = busy_lane(tmp_path, capsys)
    db = tmp_path / "audit.db"
    c = sqlite3.connect(db)
    rid, prev, h, mac = c.execute("SELECT id, prev, hash, mac FROM events WHERE id = 3").fetchone()
    pmac = c.execute("SELECT mac FROM events WHERE id = 2").fetchone()[0]
    c.close()
    runs = json.dumps([[rid, rid, prev, h]], separators=(",", ":"))
    t = time.time()
    cp_hash = hashlib.sha256(f"{GENESIS}\n{t!r}\n{runs}".encode()).hexdigest()
    macs = json.dumps([[pmac, mac]], separators=(",", ":"))
    sql(
        db,
        "DROP TRIGGER events_retention;"
        f"DELETE FROM events WHERE id = {rid};"
        f"INSERT INTO checkpoints (t, runs, prev, hash, macs, mac) VALUES ({t!r}, '{runs}',"
        f" '{GENESIS}', '{cp_hash}', '{macs}', '{'f' * 64}');",
    )
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "audit chain BROKEN: checkpoint 1 was forged or altered" in out


def rechain_from(db: Path, first: int) -> None:
    """Recompute every plain hash from record `first` on, and the head, as an intruder would."""
    c = sqlite3.connect(db)
    c.executescript("DROP TRIGGER IF EXISTS events_no_update;")
    prev = c.execute("SELECT hash FROM events WHERE id = ?", (first - 1,)).fetchone()
    prev = prev[0] if prev else GENESIS
    cols = "t, gate, kind, decision, via, subject, score, reason, detail"
    for rid, *fields in c.execute(
        f"SELECT id, {cols} FROM events WHERE id >= ? ORDER BY id", (first,)
    ).fetchall():
        h = record_hash(prev, rid, AuditRecord(*fields))
        c.execute("UPDATE events SET prev = ?, hash = ? WHERE id = ?", (prev, h, rid))
        prev = h
    c.execute("UPDATE chain SET head_hash = ?", (prev,))
    c.commit()
    c.close()


def test_edited_record_with_its_chain_recomputed_is_detected(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys)
    db = tmp_path / "audit.db"
    sql(db, "DROP TRIGGER events_no_update; UPDATE events SET decision = 'deny' WHERE id = 2;")
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "record 2 was altered" in out
    rechain_from(db, 2)
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "record 2 was rewritten: its MAC does not match" in out


def test_restored_older_copy_of_the_audit_log_is_detected(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys, n=2)
    copy_db(tmp_path / "audit.db", tmp_path / "audit.bak")
    for i in range(2, 5):
        assert redeem(capsys, cfg, ticket(tmp_path, f"T-{i}"))[0] == 0
    restore(tmp_path / "audit.bak", tmp_path / "audit.db")
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "audit chain BROKEN: the log went back: the lane had keyed 5 records" in out


def test_last_record_cut_off_with_the_head_moved_back_is_detected(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys, n=3)
    db = tmp_path / "audit.db"
    c = sqlite3.connect(db)
    h, mac = c.execute("SELECT hash, mac FROM events WHERE id = 2").fetchone()
    c.close()
    sql(
        db,
        "DROP TRIGGER events_retention; DELETE FROM events WHERE id = 3;"
        f"UPDATE chain SET head_id = 2, head_hash = '{h}', mac_id = 2, mac_head = '{mac}';",
    )
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "the log went back: the lane had keyed 3 records" in out


def test_a_keyed_log_verified_without_its_key_is_not_intact(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys, n=2)
    (tmp_path / "state" / "evidence.key").rename(tmp_path / "elsewhere.key")
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1
    assert "keyed (evidence key" in out
    assert "no evidence key was given" in out


# --- row 7: a spent ticket stays spent --------------------------------------------------------


def test_deleted_redemption_rows_do_not_readmit_the_ticket(tmp_path, capsys):
    """Row 7: the rows of a spent one-time ticket deleted with sqlite3; the ticket came back."""
    cfg = busy_lane(tmp_path, capsys, n=3)
    spent = ticket(tmp_path, "T-1")
    assert redeem(capsys, cfg, spent)[1]["reason"] == "already_used"
    db = tmp_path / "ledger.db"
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        sql(db, "DELETE FROM redemptions WHERE ticket_id = 'T-1';")
    sql(db, "DROP TRIGGER redemptions_no_delete; DELETE FROM redemptions WHERE ticket_id = 'T-1';")
    rc, out = redeem(capsys, cfg, spent)
    assert rc != 0
    assert out["valid"] is False
    assert out["reason"] == "ledger_error"
    assert "chain broken: entry 2 is missing" in out["detail"]
    assert "edge-gate ledger recover" in out["detail"]
    rc, text = audit_verify(capsys, cfg)
    assert rc == 1
    assert "ledger chain BROKEN" in text
    # recovery keeps the spent ticket spent and lets new tickets in again
    assert main(["ledger", "recover", "--config", str(cfg)]) == 0
    assert "1 ticket grants restored from the audit log" in capsys.readouterr().out
    assert redeem(capsys, cfg, spent)[1]["reason"] == "already_used"
    assert redeem(capsys, cfg, ticket(tmp_path, "T-NEW"))[1]["reason"] == "ok"
    rc, text = audit_verify(capsys, cfg)
    assert rc == 0, text
    assert list(tmp_path.glob("ledger.db.broken-*"))  # the evidence is kept


def test_rows_deleted_and_the_whole_chain_recomputed_are_still_caught(tmp_path, capsys):
    """An intruder who knows the format recomputes every plain hash and drops the MACs."""
    from edge.evidence import link

    cfg = busy_lane(tmp_path, capsys, n=4)
    db = tmp_path / "ledger.db"
    c = sqlite3.connect(db)
    c.executescript(
        "DROP TRIGGER redemptions_no_delete; DROP TRIGGER redemptions_no_update;"
        "DELETE FROM redemptions WHERE ticket_id = 'T-2';"
    )
    h, pos = GENESIS, 0
    for rid, tid, t, day, gate in c.execute(
        "SELECT id, ticket_id, t, day, gate FROM redemptions ORDER BY pos"
    ).fetchall():
        pos += 1
        h = link(h, json.dumps([pos, "L", tid, t, day, gate], separators=(",", ":")))
        q = "UPDATE redemptions SET pos = ?, hash = ?, mac = NULL WHERE id = ?"
        c.execute(q, (pos, h, rid))
    c.executemany(
        "UPDATE meta SET value = ? WHERE key = ?",
        [(str(pos), "chain_n"), (h, "chain_hash"), ("0", "mac_n"), ("", "mac_head")],
    )
    c.execute("DELETE FROM meta WHERE key = 'kid'")
    c.execute("UPDATE meta SET value = '3' WHERE key = 'seq'")
    c.commit()
    c.close()
    sql(tmp_path / "audit.db", "UPDATE ledger_mark SET seq = 3;")
    rc, out = redeem(capsys, cfg, ticket(tmp_path, "T-2"))
    assert (rc != 0, out["reason"]) == (True, "ledger_error")
    assert "the ledger went back: the lane had keyed 4 entries" in out["detail"]


def test_restored_older_copy_of_the_ledger_is_refused(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys, n=2)
    copy_db(tmp_path / "ledger.db", tmp_path / "ledger.bak")
    spent = ticket(tmp_path, "T-LATER")
    assert redeem(capsys, cfg, spent)[1]["reason"] == "ok"
    restore(tmp_path / "ledger.bak", tmp_path / "ledger.db")
    rc, out = redeem(capsys, cfg, spent)
    assert (rc != 0, out["reason"]) == (True, "ledger_error")
    assert "went back" in out["detail"]
    rc, text = audit_verify(capsys, cfg)
    assert rc == 1
    assert "ledger chain BROKEN" in text and "went back" in text
    assert main(["ledger", "recover", "--config", str(cfg)]) == 0
    assert redeem(capsys, cfg, spent)[1]["reason"] == "already_used"


def test_a_running_gate_notices_rows_deleted_behind_its_back(tmp_path, capsys):
    """The hot path: only new entries are verified, and the whole chain after a schema change."""
    from edge import config as config_mod
    from edge.gate.audit import open_audit
    from edge.gate.desk import open_ledger

    cfg_path = busy_lane(tmp_path, capsys, n=3)
    cfg = config_mod.load(cfg_path)
    with open_audit(cfg) as audit, open_ledger(cfg, audit) as led:
        now = time.time()
        t = tk.Ticket("T-0", valid_from=0, valid_until=int(now) + 60)
        assert led.check(t, now).reason == "already_used"
        sql(tmp_path / "ledger.db", "DROP TRIGGER redemptions_no_delete;"
            "DELETE FROM redemptions WHERE ticket_id = 'T-0';")  # fmt: skip
        r = led.check(t, now)
        assert (r.ok, r.reason) == (False, "ledger_error")
        assert "chain broken" in r.detail
        assert led.problem  # the daemon shows it and logs it once a minute


# --- row 10: key files others could change ---------------------------------------------------


def test_world_writable_issuer_key_is_refused_with_the_chmod(tmp_path, capsys):
    """Row 10: the issuer public key made world-writable was used without a word."""
    cfg = lane(tmp_path)
    pub, text = tmp_path / "office" / "issuer.pub", ticket(tmp_path, "T-1")
    os.chmod(pub, 0o666)
    capsys.readouterr()
    rc = main(["ticket", "verify", "--config", str(cfg), text])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"chmod go-w {pub}" in err
    os.chmod(pub, 0o644)
    os.chmod(pub.parent, 0o777)
    rc = main(["ticket", "verify", "--config", str(cfg), text])
    assert rc != 0
    assert f"chmod go-w {pub.parent}" in capsys.readouterr().err
    os.chmod(pub.parent, 0o755)
    assert main(["ticket", "verify", "--config", str(cfg), text]) == 0


@pytest.mark.parametrize("mode,fix", [(0o644, "chmod 600"), (0o620, "chmod 600")])
def test_loose_evidence_key_is_refused(tmp_path, capsys, mode, fix):
    cfg = lane(tmp_path)
    key = tmp_path / "state" / "evidence.key"
    os.chmod(key, mode)
    capsys.readouterr()
    rc = main(["audit", "verify", "--config", str(cfg)])
    assert rc != 0
    assert f"{fix} {key}" in capsys.readouterr().err


def test_group_writable_state_dir_is_refused(tmp_path, capsys):
    cfg = lane(tmp_path)
    os.chmod(tmp_path / "state", 0o775)
    capsys.readouterr()
    rc = main(["ticket", "verify", "--config", str(cfg), "--redeem", ticket(tmp_path, "T-1")])
    assert rc != 0
    assert f"chmod go-w {tmp_path / 'state'}" in capsys.readouterr().err


def test_loose_gallery_and_site_keys_name_the_chmod(tmp_path):
    from edge.errors import KeyFileError
    from edge.gallery.crypto import init_key, load_key

    init_key(tmp_path / "site.key")
    os.chmod(tmp_path / "site.key", 0o640)
    with pytest.raises(KeyFileError, match=f"chmod 600 {tmp_path / 'site.key'}"):
        load_key(tmp_path / "site.key")
    os.chmod(tmp_path / "site.key", 0o600)
    os.chmod(tmp_path, 0o777)
    try:
        with pytest.raises(KeyFileError, match=f"chmod go-w {tmp_path}"):
            load_key(tmp_path / "site.key")
    finally:
        os.chmod(tmp_path, 0o700)


# --- what sync writes without the key is keyed by the gate ------------------------------------


def test_records_sync_wrote_are_keyed_by_the_gate_and_checked_first(tmp_path):
    from edge.evidence import create_key
    from edge.gate.audit import AuditLog

    key = create_key(tmp_path / "state" / "evidence.key")
    db = tmp_path / "audit.db"
    with AuditLog(db, 30, key) as gate, AuditLog(db, 30) as sync:
        gate.record(AuditRecord(time.time(), "g", "decision", "grant", "ticket", "T-1"))
        sync.record(AuditRecord(time.time(), "g", "fleet", reason="double_use", subject="T-1"))
        rep = gate.verify()
        assert rep.ok and "records 2..2 are not keyed yet" in rep.note
        gate.maintain(time.time())  # the daemon's tick
        rep = gate.verify()
        assert (rep.ok, rep.keyed, rep.note) == (True, True, "")
        sync.record(AuditRecord(time.time(), "g", "fleet", reason="refused", detail="x"))
        sql(db, "DROP TRIGGER events_no_update; UPDATE events SET detail = 'y' WHERE id = 3;")
        gate.maintain(time.time())  # refuses to key an altered record, and says why
        assert "record 3, written without the evidence key, was altered" in gate.problem
        assert not gate.verify().ok


def test_redemptions_sync_applied_are_keyed_by_the_gate(tmp_path):
    from edge.evidence import create_key
    from edge.tickets.ledger import Ledger, init_ledger

    key = create_key(tmp_path / "state" / "evidence.key")
    init_ledger(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db", key=key) as gate, Ledger(tmp_path / "l.db", outbox=True) as sync:
        assert sync.apply_remote("lane2", 1, "T-9", time.time(), "2027-01-01", epoch="e1")
        assert not sync.apply_remote("lane2", 1, "T-9", time.time(), "2027-01-01", epoch="e1")
        assert sync.apply_remote("lane2", 1, "T-9", time.time(), "2027-01-01", epoch="e2")
        t = tk.Ticket("T-9", valid_from=0, valid_until=int(time.time()) + 60)
        assert gate.check(t, time.time()).reason == "already_used"
        gate.maintain()
        assert gate.kid == key.kid and gate.verify() == ""
        assert gate.head()[0] == 2


def test_the_office_checks_published_records_without_any_key(tmp_path):
    from dataclasses import replace

    from edge.gate.audit import AuditLog, verify_published

    with AuditLog(tmp_path / "a.db", 30) as log:
        for i in range(4):
            log.record(AuditRecord(1.7e9 + i, "g", "decision", "deny", "ticket", f"T-{i}"))
        rows, head = log.batch(0, 10), log.head()
    assert verify_published(rows, head) == ""
    assert verify_published(rows[2:], head, start=None) == ""
    forged = [
        *rows[:2],
        replace(rows[2], record=replace(rows[2].record, decision="grant")),
        rows[3],
    ]
    assert verify_published(forged, head) == "record 3 was altered"
    assert verify_published([rows[0], rows[2]], head) == "records 2..2 missing"
    assert "another hash" in verify_published(rows, type(head)(4, "0" * 64))


def test_outbox_numbers_survive_publishing_and_a_new_epoch_is_explicit(tmp_path):
    from edge.tickets.ledger import Ledger, init_ledger

    init_ledger(tmp_path / "l.db")
    with Ledger(tmp_path / "l.db", anti_passback_s=0, outbox=True) as led:
        first = led.epoch
        assert first == led.ledger_id
        for i in range(3):
            assert led.redeem(tk.Ticket(f"T-{i}"), 1.7e9 + i).ok
        batch = led.outbox_batch()
        assert [e.seq for e in batch] == [1, 2, 3]
        assert led.outbox_done([e.seq for e in batch]) == 3
        assert (led.outbox_size(), led.outbox_high()) == (0, 3)
        second = led.new_epoch()
        assert second != first and led.epoch == second


def test_an_audit_log_found_restored_is_adopted_with_a_record_saying_so(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys, n=2)
    copy_db(tmp_path / "audit.db", tmp_path / "audit.bak")
    assert redeem(capsys, cfg, ticket(tmp_path, "T-8"))[0] == 0
    restore(tmp_path / "audit.bak", tmp_path / "audit.db")
    assert audit_verify(capsys, cfg)[0] == 1
    capsys.readouterr()
    assert main(["audit", "adopt", "--config", str(cfg)]) == 0
    assert "the log went back" in capsys.readouterr().out
    rc, out = audit_verify(capsys, cfg)
    assert rc == 0, out
    assert "(hashed and keyed)" in out
    from edge.gate.audit import AuditLog

    with AuditLog(tmp_path / "audit.db", 90) as log:
        (rec,) = log.records("system")
    assert rec.reason == "audit_adopted" and "went back" in rec.detail


def test_doctor_names_a_broken_audit_chain(tmp_path, capsys):
    cfg = busy_lane(tmp_path, capsys, n=2)
    capsys.readouterr()
    main(["doctor", "--config", str(cfg), "--json"])
    report = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert report["evidence"]["status"] == "ok"
    assert "hashed and keyed" in report["evidence"]["detail"]
    sql(tmp_path / "audit.db", "DROP TRIGGER events_no_update; UPDATE events SET via = 'face';")
    main(["doctor", "--config", str(cfg), "--json"])
    report = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert report["evidence"]["status"] == "fail"
    assert "record 1 was altered" in report["evidence"]["detail"]


def test_doctor_names_an_audit_log_deleted_that_the_witness_signed_for(tmp_path, capsys):
    """With audit.db deleted, doctor said "no audit log yet" (OK) while the lane's witness
    named a log of several records; a folder at audit.path was OK too."""
    cfg = busy_lane(tmp_path, capsys, n=2)
    (tmp_path / "audit.db").unlink()
    capsys.readouterr()
    main(["doctor", "--config", str(cfg), "--json"])
    report = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert report["evidence"]["status"] == "fail", report["evidence"]
    assert "is missing, yet the lane's evidence witness names log" in report["evidence"]["detail"]
    (tmp_path / "audit.db").mkdir()
    main(["doctor", "--config", str(cfg), "--json"])
    report = {r["check"]: r for r in json.loads(capsys.readouterr().out)}
    assert report["evidence"]["status"] == "fail"
    assert "is a folder" in report["evidence"]["detail"]


def both_went_back(tmp_path: Path, capsys) -> tuple[Path, str]:
    """A lane whose ledger and audit log were put back to a copy taken together, before a
    ticket (returned) was spent."""
    cfg = busy_lane(tmp_path, capsys, n=2)
    for f in ("ledger.db", "audit.db"):
        copy_db(tmp_path / f, tmp_path / f"{f}.bak")
    spent = ticket(tmp_path, "T-SINCE")
    assert redeem(capsys, cfg, spent)[1]["reason"] == "ok"
    for f in ("ledger.db", "audit.db"):
        restore(tmp_path / f"{f}.bak", tmp_path / f)
    return cfg, spent


def test_both_files_restored_then_adopted_and_recovered_keep_a_spent_ticket_out(tmp_path, capsys):
    """Before, an older copy of both the ledger and the audit log, taken together, then the
    printed fixes followed (`audit adopt`, `ledger recover`), let a ticket spent since the copy
    in again: the adopted log holds no grant of it, and the rebuilt ledger "0 restored".
    Now recover compares with the entries the evidence witness counted and refuses what it
    cannot account for, unless `--accept-loss` (recorded); a deleted ledger names no kept file."""
    cfg, spent = both_went_back(tmp_path, capsys)
    assert redeem(capsys, cfg, spent)[1]["reason"] == "ledger_error"
    capsys.readouterr()
    assert main(["audit", "adopt", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["ledger", "recover", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "counted 3 redemptions at this lane" in err and "1 are in neither" in err, err
    assert "--accept-loss" in err
    assert redeem(capsys, cfg, spent)[1]["reason"] == "ledger_error"  # nothing was changed
    assert main(["ledger", "recover", "--config", str(cfg), "--accept-loss"]) == 0
    out = capsys.readouterr().out
    assert "1 entries lost" in out and "kept as ledger.db.broken-" in out
    with AuditLog(tmp_path / "audit.db") as log:
        (rec,) = [r for r in log.records("ledger") if r.reason == "ledger_recovered"]
        assert "1 lost (accepted)" in rec.detail
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()  # and then the ledger lost outright: its grants are in the audit log
    assert main(["ledger", "recover", "--config", str(cfg)]) == 0
    assert "there was no old file" in capsys.readouterr().out


def test_older_copies_restored_and_the_witness_deleted_are_still_caught(tmp_path, capsys):
    """Before, an older copy of the ledger and the audit log put back, with the evidence
    witness deleted (or emptied), verified "intact" and the ticket spent since was let in
    again: a witness naming no store was read as "nothing witnessed yet". Now a store holding
    entries keyed with the lane's key and no witness for it is a break, until adopted."""
    cfg, spent = both_went_back(tmp_path, capsys)
    witness = tmp_path / "state" / "evidence.witness"
    for gone in (lambda: witness.write_text(""), witness.unlink):
        gone()
        rc, out = redeem(capsys, cfg, spent)
        assert (rc != 0, out["reason"]) == (True, "ledger_error"), out
        assert "witness" in out["detail"] and "deleted or emptied" in out["detail"]
        rc, text = audit_verify(capsys, cfg)
        assert rc == 1 and "names no audit log" in text and "names no ledger" in text, text
    capsys.readouterr()
    assert main(["audit", "adopt", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["ledger", "recover", "--config", str(cfg)]) == 2  # how much was lost is unknown
    assert "names no ledger" in capsys.readouterr().err
    assert redeem(capsys, cfg, spent)[1]["reason"] == "ledger_error"


def test_verify_reports_records_written_without_the_key_and_a_fix_for_a_broken_log(
    tmp_path, capsys
):
    """Before, `audit verify` keyed at open whatever had been appended without the key, then
    called the log intact with no note: a record a file writer appended read as the lane's own.
    Now verify leaves them as found and names them; and a broken audit chain gets its fix line,
    as a broken ledger does."""
    cfg = busy_lane(tmp_path, capsys, n=2)
    with AuditLog(tmp_path / "audit.db") as log:  # no key: as sync, or a file writer
        log.record(AuditRecord(time.time(), "g", "decision", decision="grant", via="face",
                               subject="P-deadbeef"))  # fmt: skip
    rc, out = audit_verify(capsys, cfg)
    assert rc == 0 and "records 3..3 are not keyed yet" in out, out
    rc, out = audit_verify(capsys, cfg)  # verify itself keyed nothing
    assert "records 3..3 are not keyed yet" in out, out
    copy_db(tmp_path / "audit.db", tmp_path / "audit.bak")
    assert redeem(capsys, cfg, ticket(tmp_path, "T-LATER"))[1]["reason"] == "ok"
    restore(tmp_path / "audit.bak", tmp_path / "audit.db")
    rc, out = audit_verify(capsys, cfg)
    assert rc == 1 and "audit chain BROKEN" in out
    assert "fix: keep the file as evidence" in out and f"audit adopt --config {cfg}" in out, out


def test_a_lost_ledger_holding_other_lanes_entries_is_recovered_without_asking(tmp_path, capsys):
    """The witness counts every entry keyed, other lanes' too, and the audit log holds only
    this lane's grants: a normal recovery of a lost ledger on a fleet lane was refused as a
    loss. Recovery compares this lane's own redemptions, which the witness counts apart."""
    from edge.tickets.ledger import Ledger

    cfg = lane(tmp_path)
    with Ledger(tmp_path / "ledger.db", outbox=True) as sync:  # as sync applies them: no key
        for i in range(3):
            day = time.strftime("%Y-%m-%d")
            assert sync.apply_remote("lane2", i + 1, f"R-{i}", time.time(), day, epoch="e1")
    for i in range(2):
        assert redeem(capsys, cfg, ticket(tmp_path, f"T-{i}"))[1]["reason"] == "ok"
    marks = json.loads((tmp_path / "state" / "evidence.witness").read_text())["marks"]
    assert (marks["ledger"]["n"], marks["ledger"]["local"]) == (5, 2)
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()  # the disk lost it; the audit log is intact
    capsys.readouterr()
    assert main(["ledger", "recover", "--config", str(cfg)]) == 0, capsys.readouterr().err
    assert "2 ticket grants restored" in capsys.readouterr().out
    assert redeem(capsys, cfg, ticket(tmp_path, "T-1"))[1]["reason"] == "already_used"
