"""The gallery schema, declared once: tables, columns, which are sealed, and what each holds.

The database is created from this declaration and the privacy report derives its lists of
sealed and clear fields from it, so the report cannot drift from what is really stored.

Keys: the key file (KEK) wraps the gallery data key (`data_keys`); the data key wraps one key per
person (`person_keys`); the person's key seals every personal value of that person. `forget`
deletes the person's key, so their rows copied back from an old backup no longer open.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.db import Migration
from edge.errors import GalleryError, NotTextError
from edge.gallery.crypto import Kek, SealError, aad, open_sealed, seal

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Consent:
    """What the person agreed to, how, and who took it (operator and guardian are sealed)."""

    notice_version: str
    method: str = "written"
    operator: str = ""
    guardian: str = ""
    notice_sha256: str = ""
    time: int = 0


@dataclass(frozen=True)
class NewPerson:
    """Everything needed to enroll one person (see `Gallery.add_people`)."""

    name: str
    consent: Consent
    templates: Sequence[np.ndarray]
    qualities: Sequence[float] = ()
    pass_ref: str = ""
    valid_until: int | None = None
    minor: bool = False
    person_id: str = ""  # "" = a new id; set when a lane imports the office's person (fleet)


@dataclass(frozen=True)
class Column:
    """One column: its SQLite type, whether it is sealed (AES-GCM), and what it holds."""

    name: str
    type: type
    sealed: bool = False
    holds: str = ""


@dataclass(frozen=True)
class Table:
    """One table of the gallery, with its columns, primary key, indexes and foreign keys."""

    name: str
    columns: tuple[Column, ...]
    pk: str = "id"
    indexes: tuple[str, ...] = ()
    foreign_keys: tuple[tuple[str, str, str], ...] = ()


TABLES: tuple[Table, ...] = (
    Table(
        "data_keys",
        (
            Column("kid", str, holds="key id of the key file (a public fingerprint)"),
            Column("wrapped", bytes, True, "the gallery data key, wrapped by the key file"),
            Column("created", int, holds="creation time"),
        ),
        pk="kid",
    ),
    Table(
        "people",
        (
            Column("id", str, holds="pseudonymous person id"),
            Column("name", bytes, True, "name"),
            Column("pass_ref", bytes, True, "pass reference"),
            Column("valid_until", int, holds="pass valid-until (bound to the sealed attrs)"),
            Column("minor", int, holds="minor flag (bound to the sealed attrs)"),
            Column("created", int, holds="creation time"),
            Column(
                "attrs", bytes, True, "seal binding valid-until and minor flag to the person key"
            ),
        ),
    ),
    Table(
        "person_keys",
        (
            Column("person_id", str, holds="pseudonymous person id"),
            Column("wrapped", bytes, True, "the person's own data key, wrapped by the data key"),
        ),
        pk="person_id",
        foreign_keys=(("person_id", "people", "id"),),
    ),
    Table(
        "consents",
        (
            Column("id", str, holds="consent record id"),
            Column("person_id", str, holds="pseudonymous person id"),
            Column("notice_version", str, holds="consent notice version"),
            Column("notice_sha256", str, holds="SHA-256 of the notice text"),
            Column("method", str, holds="consent method"),
            Column("time", int, holds="consent time"),
            Column("operator", bytes, True, "staff member who took consent"),
            Column("guardian", bytes, True, "guardian who gave consent"),
        ),
        indexes=("person_id",),
        foreign_keys=(("person_id", "people", "id"),),
    ),
    Table(
        "templates",
        (
            Column("id", str, holds="template id"),
            Column("person_id", str, holds="pseudonymous person id"),
            Column("model_id", str, holds="face model id"),
            Column("model_version", str, holds="face model version"),
            Column("quality", float, holds="face quality score"),
            Column("created", int, holds="creation time"),
            Column("embedding", bytes, True, "face template"),
        ),
        indexes=("model_id", "person_id"),
        foreign_keys=(("person_id", "people", "id"),),
    ),
    Table(
        "gallery_state",
        (
            Column("key", str, holds="state name"),
            Column(
                "value",
                int,
                holds="state value (erasures not yet flushed from disk, the gallery's random id,"
                " its generation, the office forget list applied)",
            ),
        ),
        pk="key",
    ),
)


MAX_DETAIL_CHARS = 1000  # a name, a pass reference, an operator: far more than any needs


def check_text(value: str, what: str) -> None:
    """Refuse a detail that cannot be stored: bytes Python could not decode (a Latin-1
    terminal, a folder name from an old USB stick) arrive as lone surrogates; and a detail
    longer than any name (a file pasted in by mistake, or a form filled by a script)."""
    if len(value) > MAX_DETAIL_CHARS:
        raise NotTextError(
            f"{what} is {len(value):,} characters long, more than {MAX_DETAIL_CHARS:,}",
            "give the name or reference itself, not a file's contents",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NotTextError(
            f"{what} is not UTF-8 text (character {e.start + 1} is a byte it cannot read)",
            "type it again in a UTF-8 terminal, or rename the folder or file it came from",
        ) from None


def sealed_fields() -> list[str]:
    """`table.column` of every sealed column, as declared."""
    return [f"{t.name}.{c.name}" for t in TABLES for c in t.columns if c.sealed]


def clear_fields() -> dict[str, str]:
    """`table.column` -> what it holds, for every column stored in the clear."""
    return {f"{t.name}.{c.name}": c.holds for t in TABLES for c in t.columns if not c.sealed}


def describe_fields() -> dict[str, str]:
    """`table.column` -> what it holds, for every column."""
    return {f"{t.name}.{c.name}": c.holds for t in TABLES for c in t.columns}


SQL_TYPES = {str: "TEXT", bytes: "BLOB", int: "INTEGER", float: "REAL"}


def table_sql(t: Table) -> list[str]:
    """CREATE TABLE and CREATE INDEX statements for one declared table."""
    refs = {col: (table, other) for col, table, other in t.foreign_keys}
    cols = []
    for c in t.columns:
        sql = f'"{c.name}" {SQL_TYPES[c.type]}' + (" PRIMARY KEY" if c.name == t.pk else "")
        if c.name in refs:
            sql += f' REFERENCES "{refs[c.name][0]}"("{refs[c.name][1]}")'
        cols.append(sql)
    out = [f'CREATE TABLE "{t.name}" ({", ".join(cols)})']
    out += [f'CREATE INDEX "idx_{t.name}_{col}" ON "{t.name}" ("{col}")' for col in t.indexes]
    return out


def create(conn: sqlite3.Connection) -> None:
    """Create every table of the current schema (inside the caller's transaction); fails if
    another process created them first, so two creators never both write a data key."""
    for t in TABLES:
        for sql in table_sql(t):
            conn.execute(sql)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def too_new(found: int, newest: int) -> GalleryError:
    """A gallery written by a newer edge-gate is refused."""
    return GalleryError(
        f"gallery has schema version {found}, newer than this edge-gate understands ({newest})",
        "upgrade edge-gate; do not downgrade a gate",
    )


def migrations(dek: bytes, kek: Kek) -> tuple[Migration, ...]:
    """The steps from older schemas; v2 reseals with per-person keys (it needs the data key),
    v3 binds the data key's wrapping to the gallery's id and generation (it needs the key file)."""
    return (
        Migration(2, lambda c: migrate_v1(c, dek), "one key per person"),
        Migration(3, lambda c: migrate_v2(c, dek, kek), "generations"),
    )


def dek_aad(kid: str, gallery_id: int | None, generation: int | None) -> bytes:
    """Associated data of the data key's wrapping: schema 3 binds the gallery's id and generation,
    so a generation number edited in the file no longer opens the data key."""
    if gallery_id is None:
        return aad("data_keys", kid, "wrapped")  # schema 2 and older
    return aad("data_keys", kid, "wrapped", f"{gallery_id}.{generation}")


def state(conn: sqlite3.Connection, key: str) -> int | None:
    """One value of gallery_state (None when absent)."""
    row = conn.execute("SELECT value FROM gallery_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else int(row[0])


def set_state(conn: sqlite3.Connection, **values: int) -> None:
    """Write gallery_state values (inside the caller's transaction)."""
    conn.executemany(
        "INSERT OR REPLACE INTO gallery_state (key, value) VALUES (?, ?)", list(values.items())
    )


def new_gallery_id() -> int:
    """A random id (62 bits: an INTEGER in SQLite, never read as anything else)."""
    return secrets.randbits(62)


def migrate_v2(conn: sqlite3.Connection, dek: bytes, kek: Kek) -> None:
    """v2 -> v3: the gallery gets a random id and generation 1; its data key is rewrapped bound
    to them (other key files' wrappings, left by an unfinished rotation, are dropped)."""
    gid = new_gallery_id()
    set_state(conn, gallery_id=gid, generation=1)
    conn.execute("DELETE FROM data_keys")
    conn.execute(
        "INSERT INTO data_keys (kid, wrapped, created) VALUES (?, ?, strftime('%s','now'))",
        (kek.kid, seal(kek.key, dek, dek_aad(kek.kid, gid, 1))),
    )


def attrs_aad(pid: str, valid_until: int | None, minor: bool) -> bytes:
    """Associated data binding a person's clear validity and minor flag to their key."""
    return aad("people", pid, "attrs", f"{valid_until}|{int(bool(minor))}")


def attrs_blob(key: bytes, pid: str, valid_until: int | None, minor: bool) -> bytes:
    """An empty value sealed with the validity as associated data: a changed column won't open."""
    return seal(key, b"", attrs_aad(pid, valid_until, minor))


def migrate_v1(conn: sqlite3.Connection, dek: bytes) -> None:
    """v1 -> v2: one key per person; reseal that person's values under it; bind validity.

    Runs inside the caller's transaction: all of it lands, or none of it.
    """
    for t in TABLES:
        if t.name in ("person_keys", "gallery_state"):
            for sql in table_sql(t):
                conn.execute(sql)
    conn.execute("ALTER TABLE people ADD COLUMN attrs BLOB")

    def reseal(key: bytes, blob, table: str, row: str, column: str, model: str = ""):
        if blob is None:
            return None
        a = aad(table, row, column, model)
        try:
            return seal(key, open_sealed(dek, blob, a), a)
        except SealError:  # already damaged: kept as is, it is rejected on every read
            return blob

    people = conn.execute("SELECT id, name, pass_ref, valid_until, minor FROM people").fetchall()
    for pid, name, pref, vu, minor in people:
        k = os.urandom(32)
        conn.execute(
            "INSERT INTO person_keys (person_id, wrapped) VALUES (?, ?)",
            (pid, seal(dek, k, aad("person_keys", pid, "wrapped"))),
        )
        conn.execute(
            "UPDATE people SET name=?, pass_ref=?, attrs=? WHERE id=?",
            (
                reseal(k, name, "people", pid, "name"),
                reseal(k, pref, "people", pid, "pass_ref"),
                attrs_blob(k, pid, vu, bool(minor)),
                pid,
            ),
        )
        for cid, op, gu in conn.execute(
            "SELECT id, operator, guardian FROM consents WHERE person_id=?", (pid,)
        ).fetchall():
            conn.execute(
                "UPDATE consents SET operator=?, guardian=? WHERE id=?",
                (
                    reseal(k, op, "consents", cid, "operator"),
                    reseal(k, gu, "consents", cid, "guardian"),
                    cid,
                ),
            )
        for tid, mid, emb in conn.execute(
            "SELECT id, model_id, embedding FROM templates WHERE person_id=?", (pid,)
        ).fetchall():
            conn.execute(
                "UPDATE templates SET embedding=? WHERE id=?",
                (reseal(k, emb, "templates", tid, "embedding", f"{mid}|{pid}"), tid),
            )
