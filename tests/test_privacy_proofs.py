"""Retention, erasure and the auditor's proofs: what is stored is what the report says."""

from __future__ import annotations

import time

import numpy as np

from edge import config as config_mod
from edge.gallery.crypto import init_key
from edge.gallery.store import Gallery

from .gallery_helpers import CONSENT, cli, config, unit


def test_the_privacy_report_counts_people_kept_past_retention(tmp_path, capsys):
    """A pass that ended 400 days ago while the purge did not run (timer off, a failed run):
    the report stated "purged 30 days after their pass expires" and counted the person among
    the people stored as if retention held. It now counts who is kept past retention and says
    to run the purge; `doctor` warns too."""
    from edge.gallery.privacy import privacy_report, report_markdown

    rng = np.random.default_rng(51)
    now = time.time()
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        g.add_person("Ended", CONSENT, list(unit(rng, 2)), "m", "v",
                     valid_until=int(now - 400 * 86400))  # fmt: skip
        g.add_person("Current", CONSENT, list(unit(rng, 2)), "m", "v",
                     valid_until=int(now + 86400))  # fmt: skip
        g.add_person("Recent", CONSENT, list(unit(rng, 2)), "m", "v",
                     valid_until=int(now - 5 * 86400))  # fmt: skip
    cfg_path = config(tmp_path, f'[gallery]\ndb = "{db}"\nkey_file = "{key}"\n')
    cfg = config_mod.load(cfg_path)
    r = privacy_report(cfg, db, key)
    assert r["retention"].get("people_past_retention") == 1
    assert "1 people are kept past retention" in report_markdown(r)
    rc, out, _ = cli(capsys, "doctor", "--config", str(cfg_path))
    assert "kept past retention" in out
    args = ["--config", str(cfg_path), "--db", str(db), "--key-file", str(key)]
    assert cli(capsys, "purge", *args)[0] == 0
    r = privacy_report(cfg, db, key)
    assert r["retention"]["people_past_retention"] == 0
    assert "kept past retention" not in report_markdown(r)


def test_a_forget_at_the_office_drops_the_persons_unsent_enrollment_from_the_queue(tmp_path):
    """`enroll --publish` then `forget --publish` while the office's sync was not running: the
    enrollment (name and templates, sealed with the site key every lane holds) stayed queued in
    the office's fleet.db and went out to every lane after the withdrawal. The forget now
    drops the person's queued enrollment in its own transaction, and its bytes leave the
    file."""
    import base64
    import json
    import sqlite3
    from contextlib import closing

    from edge import tickets as tk
    from edge.fleet.office import publish_person
    from edge.lab.workspace import write_member

    priv, pub = tk.keygen(tmp_path / "keys")
    site_key = tmp_path / "site.key"
    init_key(site_key)
    m = write_member(tmp_path, "office", "mqtt://127.0.0.1:1", "park", pub, site_key=site_key)
    cfg = config_mod.load(m.config)
    pid, other = "P-0123456789abcdef", "P-fedcba9876543210"
    emb = base64.b64encode(unit(np.random.default_rng(52), 1)[0].tobytes()).decode()
    record = json.dumps({"name": "Wilhelmina Quartz", "templates": [{"embedding": emb}]})
    publish_person(cfg, priv, other, "enroll", record.encode())
    publish_person(cfg, priv, pid, "enroll", record.encode())
    db = cfg.resolve(cfg.fleet.state_db)
    with closing(sqlite3.connect(db)) as c:
        (payload,) = c.execute(
            "SELECT payload FROM office_out WHERE topic LIKE ?", (f"%/people/{pid}",)
        ).fetchone()
    sealed = json.loads(payload)["body"]["sealed"].encode()
    publish_person(cfg, priv, pid, "forget")
    with closing(sqlite3.connect(db)) as c:
        queued = [json.loads(p)["body"] for (p,) in c.execute("SELECT payload FROM office_out")]
    mine = [b["op"] for b in queued if b.get("person_id") == pid]
    assert mine == ["forget"]  # the enrollment no longer goes out
    assert [b["op"] for b in queued if b.get("person_id") == other] == ["enroll"]
    on_disk = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    assert sealed[:40] not in on_disk


def test_the_privacy_report_says_a_restored_gallery_still_holds_people_forgotten_since(tmp_path):
    """A gallery restored from a copy taken before a `forget`: the person who withdrew is in the
    file again (their rows open with the key file). `doctor` failed, but the privacy report
    counted them among the people stored and stated that `forget` erases at once, with no word
    of the erasures to replay. It now says the file was restored and what to run."""
    import shutil

    from edge.gallery.crypto import load_key
    from edge.gallery.privacy import privacy_report, report_markdown

    rng = np.random.default_rng(53)
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        gone = g.add_person("Withdrew", CONSENT, list(unit(rng, 2)), "m", "v")
        g.add_person("Stays", CONSENT, list(unit(rng, 2)), "m", "v")
    shutil.copy2(db, tmp_path / "backup.db")
    with Gallery(db, load_key(key), create=False) as g:
        assert g.forget(gone)
    shutil.copy2(tmp_path / "backup.db", db)
    cfg = config_mod.load(config(tmp_path))
    r = privacy_report(cfg, db, key)
    assert "restored from an older copy" in (r["retention"].get("forget_replay_needed") or "")
    text = report_markdown(r)
    assert "edge-gate forget --replay" in text
    with Gallery(db, load_key(key), create=False) as g:
        g.apply_forget_list([])
    r = privacy_report(cfg, db, key)
    assert r["retention"]["forget_replay_needed"] == ""
    assert r["stored"]["people"] == 1
    assert "forget --replay" not in report_markdown(r)


def test_forget_whose_record_cannot_be_written_erases_nothing(tmp_path, capsys, monkeypatch):
    """`edge-gate forget` with an audit log that refuses the record (a full disk): the person
    was erased first and the record then failed, so the erasure was on no record. The
    deletion is now recorded first, then done, as the console does: a record that fails erases
    nothing, and the same command once the log takes records again erases and records."""
    from edge.errors import AuditError
    from edge.gallery.crypto import load_key
    from edge.gate.audit import AuditLog

    rng = np.random.default_rng(54)
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        pid = g.add_person("Withdrawing", CONSENT, list(unit(rng, 2)), "m", "v")
    args = ["--config", str(config(tmp_path)), "--db", str(db), "--key-file", str(key)]
    real = AuditLog.append

    def full(self, r):
        raise AuditError(f"audit log {self.path} is full", "free disk space")

    monkeypatch.setattr(AuditLog, "append", full)
    rc, _, err = cli(capsys, "forget", pid, "--reason", "consent withdrawn", *args)
    assert rc == 2 and "full" in err
    with Gallery(db, load_key(key), create=False) as g:
        assert [p.id for p in g.people()] == [pid]  # not erased without its record
    monkeypatch.setattr(AuditLog, "append", real)
    rc, out, _ = cli(capsys, "forget", pid, "--reason", "consent withdrawn", *args)
    assert rc == 0, out
    with Gallery(db, load_key(key), create=False) as g:
        assert g.people() == []
    (rec,) = AuditLog(tmp_path / "audit.db").records("deletion")
    assert rec.reason == "consent withdrawn" and pid not in rec.detail + rec.subject
