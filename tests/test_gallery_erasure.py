"""Deletion really deletes: loud failure when pages stay on disk, crypto-erasure per person,
schema migration to per-person keys, sealed export/import, the privacy report from the schema."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from edge.errors import KeyFileError
from edge.gallery import schema
from edge.gallery.crypto import init_key, load_key
from edge.gallery.erase import ErasureIncomplete
from edge.gallery.keys import rotate_key
from edge.gallery.matcher import LiveMatcher, Matcher
from edge.gallery.store import Gallery

from .gallery_helpers import CONSENT, cli, config, file_bytes, make_v1_gallery, unit

NAME = "Zebulon Quixote-Marchbanks"


@pytest.fixture
def gal(tmp_path):
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        yield g


def sealed_of(g: Gallery, pid: str) -> list[bytes]:
    """Every sealed value of one person, including their wrapped key."""
    q = (
        "SELECT embedding FROM templates WHERE person_id=?1 UNION ALL SELECT name FROM people"
        " WHERE id=?1 UNION ALL SELECT operator FROM consents WHERE person_id=?1"
        " UNION ALL SELECT wrapped FROM person_keys WHERE person_id=?1"
    )
    return [r[0] for r in g.conn.execute(q, (pid,))]


def test_forget_with_a_reader_holding_old_pages_fails_loudly_then_purge_finishes(
    tmp_path, capsys, quick_retries
):
    cfg = config(tmp_path)
    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        pid = g.add_person(NAME, CONSENT, list(unit(np.random.default_rng(1), 2)), "m", "v")
        keep = g.add_person("Keeper", CONSENT, list(unit(np.random.default_rng(2), 1)), "m", "v")
        sealed = sealed_of(g, pid)
        g.scrub()
    assert len(sealed) == 5  # 2 templates, name, operator, wrapped key
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM templates").fetchone()  # holds a read snapshot
    args = ["--config", str(cfg), "--db", str(db), "--key-file", str(key)]
    rc, out, err = cli(capsys, "forget", *args, pid)
    assert rc == 2, out
    assert "NOT yet erased from disk" in err
    assert "edge-gate purge" in err
    assert "forgot" not in out  # never claims an erasure that did not happen
    raw = file_bytes(db)
    assert any(blob[12:40] in raw for blob in sealed)  # the truth: the bytes are still there
    from edge.gate.audit import AuditLog

    assert (
        AuditLog(tmp_path / "audit.db")
        .records("deletion")[-1]
        .detail.startswith("erasure incomplete")
    )
    rc, out, _ = cli(capsys, "doctor", *args, "--json")
    (check,) = [c for c in json.loads(out) if c["check"] == "gallery database"]
    assert check["status"] == "warn"
    assert "erasure is still pending" in check["detail"]
    reader.execute("COMMIT")
    reader.close()
    rc, out, err = cli(capsys, "purge", *args)
    assert rc == 0, err
    raw = file_bytes(db)
    for blob in sealed:
        assert blob[12:40] not in raw
    with Gallery(db, load_key(key), create=False) as g:
        assert not g.pending_erasure()
        assert [p.id for p in g.people()] == [keep]


@pytest.fixture
def quick_retries(monkeypatch):
    from edge.gallery import erase

    monkeypatch.setattr(erase, "ATTEMPTS", 3)
    monkeypatch.setattr(erase, "WAIT_S", 0.02)


def test_forget_retries_then_raises_a_typed_error_and_a_later_forget_finishes(gal, quick_retries):
    rng = np.random.default_rng(3)
    pid = gal.add_person(NAME, CONSENT, list(unit(rng, 1)), "m", "v")
    other = gal.add_person("Other", CONSENT, list(unit(rng, 1)), "m", "v")
    reader = sqlite3.connect(gal.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM people").fetchall()
    with pytest.raises(ErasureIncomplete, match="another process holds a read transaction"):
        gal.forget(pid)
    assert gal.pending_erasure()
    assert gal.stats()["pending_erasure"]
    reader.execute("COMMIT")
    assert not gal.forget(pid)  # already deleted; the pending scrub is completed on the way
    assert not gal.pending_erasure()
    assert [p.id for p in gal.people()] == [other]


def copy_person_rows(src: sqlite3.Connection, dst: Gallery, pid: str, with_key: bool) -> None:
    """Re-insert a person's rows from an old copy of the file, bypassing edge-gate."""
    dst.conn.execute("PRAGMA foreign_keys=OFF")
    tables = ["people", "consents", "templates"] + (["person_keys"] if with_key else [])
    for table in tables:
        col = "id" if table == "people" else "person_id"
        for row in src.execute(f"SELECT * FROM {table} WHERE {col} = ?", (pid,)):
            dst.conn.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", row)


def test_forgotten_person_restored_from_an_old_backup_does_not_open(gal, tmp_path):
    rng = np.random.default_rng(4)
    keep_e, gone_e = unit(rng, 1)[0], unit(rng, 2)
    keep = gal.add_person("Keeper", CONSENT, [keep_e], "m", "v")
    pid = gal.add_person(NAME, CONSENT, list(gone_e), "m", "v", pass_ref="PASS-1")
    backup = sqlite3.connect(tmp_path / "backup.db")
    gal.conn.backup(backup)  # an operator's backup, taken before the deletion request
    assert gal.forget(pid)
    copy_person_rows(backup, gal, pid, with_key=False)  # their rows re-inserted
    t = gal.templates("m")
    assert t.rejected == 2
    assert list(t.person_ids) == [keep]
    live = LiveMatcher(gal, "m", 0.9, 0.0)
    assert live.match_many(gone_e)[0].person_id is None
    assert live.match_many(keep_e[None])[0].person_id == keep
    assert pid not in gal.pass_refs()
    assert pid not in gal.person_valid_until()
    restored = {p.id: p for p in gal.people()}[pid]
    assert not restored.intact
    assert restored.name == "<damaged>"


def test_old_whole_file_backup_is_unreadable_after_forget_and_key_rotation(gal, tmp_path):
    rng = np.random.default_rng(5)
    keep_e = unit(rng, 1)[0]
    keep = gal.add_person("Keeper", CONSENT, [keep_e], "m", "v")
    pid = gal.add_person(NAME, CONSENT, list(unit(rng, 1)), "m", "v")
    backup = sqlite3.connect(tmp_path / "backup.db")
    gal.conn.backup(backup)
    backup.close()
    gal.forget(pid)
    gal.close()
    rotate_key(tmp_path / "g.db", tmp_path / "k.key")
    with pytest.raises(KeyFileError, match="does not open gallery"):
        Gallery(tmp_path / "backup.db", load_key(tmp_path / "k.key"), create=False)
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key"), create=False) as g:
        t = g.templates("m")  # the people who stay still open and match after the rotation
        assert t.rejected == 0
        assert Matcher(t.matrix, t.person_ids, 0.9, 0.0).match(keep_e).person_id == keep


def test_v1_gallery_migrates_to_per_person_keys_and_leaves_no_old_ciphertext(tmp_path):
    kek = init_key(tmp_path / "k.key")
    rng = np.random.default_rng(6)
    a, b = unit(rng, 2), unit(rng, 1)
    make_v1_gallery(
        tmp_path / "g.db", kek, [("P-a", NAME, None, a), ("P-b", "Bo", 2_000_000_000, b)]
    )
    v1 = sqlite3.connect(tmp_path / "g.db")
    old_blobs = [r[0] for r in v1.execute("SELECT embedding FROM templates")]
    v1.close()
    with Gallery(tmp_path / "g.db", kek, create=False) as g:
        assert g.stats()["schema_version"] == schema.SCHEMA_VERSION
        assert [(p.name, p.valid_until, p.intact) for p in g.people()] == [
            (NAME, None, True),
            ("Bo", 2_000_000_000, True),
        ]
        t = g.templates("m")
        assert t.rejected == 0
        m = Matcher(t.matrix, t.person_ids, 0.9, 0.0)
        assert m.match(a[1]).person_id == "P-a"
        assert m.match(b[0]).person_id == "P-b"
        g.conn.execute("UPDATE people SET valid_until = NULL WHERE id = 'P-b'")
        assert "P-b" not in g.person_valid_until()  # validity is bound after migration too
    raw = file_bytes(tmp_path / "g.db")
    for blob in old_blobs:
        assert blob[12:40] not in raw


def test_privacy_report_lists_exactly_the_columns_of_the_database(gal, tmp_path, capsys):
    from edge import config as config_mod
    from edge.gallery.privacy import privacy_report

    gal.add_person(NAME, CONSENT, list(unit(np.random.default_rng(8), 1)), "m", "v")
    cfg = config_mod.load(config(tmp_path))
    rep = privacy_report(cfg, gal.path, tmp_path / "k.key")
    st = rep["stored"]
    real = {
        f"{t}.{c[1]}"
        for (t,) in gal.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        for c in gal.conn.execute(f"PRAGMA table_info({t})")
    }
    assert set(st["fields_encrypted"]) | set(st["fields_in_clear"]) == real
    assert not set(st["fields_encrypted"]) & set(st["fields_in_clear"])
    for field in st["fields_encrypted"]:  # every column called sealed really holds no plaintext
        t, c = field.split(".")
        for (v,) in gal.conn.execute(f"SELECT {c} FROM {t} WHERE {c} IS NOT NULL"):
            assert isinstance(v, bytes)
            assert len(v) >= 28
    assert "people.valid_until" in st["fields_in_clear"]
    rc, out, _ = cli(
        capsys, "privacy-report", "--config", str(config(tmp_path)), "--db", str(gal.path),
        "--key-file", str(tmp_path / "k.key"), "--json",
    )  # fmt: skip
    assert rc == 0
    assert json.loads(out)["stored"]["fields_encrypted"] == st["fields_encrypted"]


def test_gallery_is_a_context_manager(tmp_path):
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        assert g.people() == []
    with pytest.raises(sqlite3.ProgrammingError):
        g.conn.execute("SELECT 1")


def test_purge_under_a_held_reader_records_the_purge_then_fails_loudly(
    tmp_path, capsys, quick_retries
):
    from edge.gate.audit import AuditLog

    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        old = g.add_person("Old", CONSENT, list(unit(np.random.default_rng(9), 1)), "m", "v",
                           valid_until=1_600_000_000)  # fmt: skip
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM people").fetchone()
    args = ["--config", str(config(tmp_path)), "--db", str(db), "--key-file", str(key)]
    rc, _, err = cli(capsys, "purge", *args)
    assert rc == 2
    assert "NOT yet erased from disk" in err
    (rec,) = AuditLog(tmp_path / "audit.db").records("purge")  # the deletion is on record
    assert rec.detail.startswith("1 people expired")
    reader.execute("COMMIT")
    reader.close()
    assert cli(capsys, "purge", *args)[0] == 0
    with Gallery(db, load_key(key), create=False) as g:
        assert not g.pending_erasure()
        assert old not in {p.id for p in g.people()}
