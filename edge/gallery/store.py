"""The gallery database: one SQLite file (WAL) holding people, consents and templates, sealed.

Nothing personal is stored in the clear: names, pass references, operator and guardian names and
every template are AES-GCM sealed under the person's own key, with associated data that binds
table, row, column and model. The schema and what each column holds are declared in
`edge.gallery.schema`. Raw face images never reach this module.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.db import Store, migrate, tables, user_version
from edge.errors import GalleryError, KeyFileError
from edge.gallery import schema
from edge.gallery.crypto import Kek, SealError, aad, open_sealed, seal
from edge.gallery.erase import scrub_file
from edge.gallery.reads import GalleryReader, Person, PersonKey, Templates
from edge.gallery.schema import Consent, NewPerson

log = logging.getLogger(__name__)

SCHEMA_VERSION = schema.SCHEMA_VERSION
FILING_THRESHOLD = 100_000  # people; above it a processor has extra filing duties (China, 2025)
UNCHANGED: Any = object()  # update_person: leave this field as it is


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class Gallery(Store, GalleryReader):
    """Open (or create) a gallery with its key; a wrong key fails here and writes nothing."""

    error = GalleryError
    what = "gallery"

    def __init__(
        self,
        path: str | os.PathLike[str],
        kek: Kek,
        create: bool = True,
        busy_timeout_s: float = 5.0,
    ):
        path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        exists = path.exists() and path.stat().st_size > 0
        if not exists and not create:
            raise GalleryError(
                f"gallery {path} does not exist", "enroll someone first, or check --db"
            )
        if not exists:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._connect(path, timeout_s=busy_timeout_s, secure_delete=True, foreign_keys=True)
        try:
            version = user_version(self.conn)
            have = tables(self.conn)
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise GalleryError(
                f"gallery {self.path} is unreadable ({e})",
                "the file is damaged: restore it from backup or move it aside and re-enroll",
            ) from None
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise GalleryError(
                f"gallery {self.path} has schema version {version}, newer than this edge-gate "
                f"understands ({SCHEMA_VERSION})",
                "upgrade edge-gate; do not downgrade a gate",
            )
        self.kek = kek
        self._cache: tuple[tuple[int, int], dict[str, PersonKey]] | None = None
        if exists and "data_keys" in have:
            self.dek = self._unwrap()  # before any write
        if not exists or "data_keys" not in have:
            self.dek = os.urandom(32)
            self.write(lambda c: (schema.create(c), self._store_dek(c, kek)))
        elif version < SCHEMA_VERSION:
            self.write(lambda c: migrate(c, schema.migrations(self.dek), schema.too_new))
            log.info("gallery migrated path=%s schema=%d", self.path, SCHEMA_VERSION)
            self.scrub()  # the values sealed the old way leave the file

    # --- setup -------------------------------------------------------------------------------

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store_dek(self, c: sqlite3.Connection, kek: Kek) -> None:
        c.execute(
            "INSERT OR REPLACE INTO data_keys (kid, wrapped, created) VALUES (?, ?, ?)",
            (
                kek.kid,
                seal(kek.key, self.dek, aad("data_keys", kek.kid, "wrapped")),
                int(time.time()),
            ),
        )  # fmt: skip

    def _unwrap(self) -> bytes:
        rows = self.conn.execute("SELECT kid, wrapped FROM data_keys").fetchall()
        for kid, wrapped in rows:
            if kid == self.kek.kid:
                try:
                    return open_sealed(self.kek.key, wrapped, aad("data_keys", kid, "wrapped"))
                except SealError:
                    break
        expected = ", ".join(r[0] for r in rows) or "none"
        self.conn.close()
        raise KeyFileError(
            f"key file {self.kek.path} does not open gallery {self.path} "
            f"(key id {self.kek.kid}; the gallery expects {expected})",
            "use the key file this gallery was created with, or restore it from backup",
        )

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn(conn) in one IMMEDIATE transaction: all of it lands, or none of it."""
        self._cache = None
        with self.transaction() as c:
            return fn(c)

    # --- per-person keys -----------------------------------------------------------------------

    def wrap_person_key(self, pid: str, key: bytes) -> bytes:
        """A person's key sealed under this gallery's data key, bound to their id."""
        return seal(self.dek, key, aad("person_keys", pid, "wrapped"))

    def _seal(self, key: bytes, value: str, table: str, row: str, column: str) -> bytes | None:
        return seal(key, value.encode("utf-8"), aad(table, row, column)) if value else None

    # --- writes ------------------------------------------------------------------------------

    def add_person(
        self,
        name: str,
        consent: Consent,
        templates: Sequence[np.ndarray],
        model_id: str,
        model_version: str,
        qualities: Sequence[float] = (),
        pass_ref: str = "",
        valid_until: int | None = None,
        minor: bool = False,
    ) -> str:
        """A new person with their own key, their consent and templates, in one transaction."""
        new = NewPerson(name, consent, templates, qualities, pass_ref, valid_until, minor)
        return self.add_people([new], model_id, model_version)[0]

    def add_people(
        self, people: Sequence[NewPerson], model_id: str, model_version: str
    ) -> list[str]:
        """Many new people in one transaction (bulk enrollment); returns their ids in order."""
        now = int(time.time())

        def write(c):
            return [self._insert_person(c, p, model_id, model_version, now) for p in people]

        return self.write(write)

    def _insert_person(self, c, p: NewPerson, model_id: str, model_version: str, now: int) -> str:
        pid, key = p.person_id or _new_id("P-"), os.urandom(32)
        c.execute(
            "INSERT INTO people (id, name, pass_ref, valid_until, minor, created, attrs)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                pid,
                self._seal(key, p.name, "people", pid, "name"),
                self._seal(key, p.pass_ref, "people", pid, "pass_ref"),
                p.valid_until,
                int(p.minor),
                now,
                schema.attrs_blob(key, pid, p.valid_until, p.minor),
            ),
        )
        c.execute(
            "INSERT INTO person_keys (person_id, wrapped) VALUES (?, ?)",
            (pid, self.wrap_person_key(pid, key)),
        )
        self._insert_consent(c, pid, key, p.consent, now)
        self._insert_templates(c, pid, key, p.templates, model_id, model_version, p.qualities, now)
        return pid

    def add_templates(
        self,
        person_id: str,
        consent: Consent,
        templates: Sequence[np.ndarray],
        model_id: str,
        model_version: str,
        qualities: Sequence[float] = (),
        replace: bool = False,
    ) -> int:
        """Add templates to a person (replace=True: drop all of theirs first); consent recorded.

        Returns how many templates were removed. Checking that the new face is this person is
        the caller's job (`edge.gallery.enroll`): this only writes.
        """
        now = int(time.time())
        key = self._key_for_write(person_id)

        def write(c):
            removed = 0
            if replace:
                q = "DELETE FROM templates WHERE person_id = ?"
                removed = c.execute(q, (person_id,)).rowcount
            self._insert_consent(c, person_id, key, consent, now)
            self._insert_templates(
                c, person_id, key, templates, model_id, model_version, qualities, now
            )
            return removed

        removed = self.write(write)
        if removed:
            self.scrub()  # the replaced templates leave the file
        return removed

    def update_person(
        self,
        person_id: str,
        *,
        name: str = UNCHANGED,
        pass_ref: str = UNCHANGED,
        valid_until: int | None = UNCHANGED,
    ) -> Person:
        """Rename, change the pass reference or renew the pass; validity stays sealed-bound."""
        key = self._key_for_write(person_id)
        current = self.person(person_id)
        vu = current.valid_until if valid_until is UNCHANGED else valid_until

        def write(c):
            sets = {
                "valid_until": vu,
                "attrs": schema.attrs_blob(key, person_id, vu, current.minor),
            }
            if name is not UNCHANGED:
                sets["name"] = self._seal(key, name, "people", person_id, "name")
            if pass_ref is not UNCHANGED:
                sets["pass_ref"] = self._seal(key, pass_ref, "people", person_id, "pass_ref")
            cols = ", ".join(f"{k} = ?" for k in sets)
            c.execute(f"UPDATE people SET {cols} WHERE id = ?", (*sets.values(), person_id))

        self.write(write)
        return self.person(person_id)

    def _key_for_write(self, person_id: str) -> bytes:
        row = self.conn.execute(
            "SELECT k.wrapped FROM people p LEFT JOIN person_keys k ON k.person_id = p.id"
            " WHERE p.id = ?",
            (person_id,),
        ).fetchone()
        if row is None:
            raise GalleryError(
                f"no person {person_id} in {self.path}", "check the id with `edge-gate people`"
            )
        if person_id not in self.person_keys():
            raise GalleryError(
                f"person {person_id} failed authentication (their sealed record or key was"
                " changed outside edge-gate); nothing was written",
                "forget them and enroll again, or restore the gallery from backup",
            )
        return self.person_keys()[person_id].key

    def _insert_consent(self, c, pid: str, key: bytes, consent: Consent, now: int) -> None:
        cid = _new_id("C-")
        c.execute(
            "INSERT INTO consents (id, person_id, notice_version, notice_sha256, method, time,"
            " operator, guardian) VALUES (?,?,?,?,?,?,?,?)",
            (
                cid, pid, consent.notice_version, consent.notice_sha256, consent.method,
                consent.time or now,
                self._seal(key, consent.operator, "consents", cid, "operator"),
                self._seal(key, consent.guardian, "consents", cid, "guardian"),
            ),
        )  # fmt: skip

    def _insert_templates(self, c, pid, key, templates, model_id, model_version, qualities, now):
        for i, emb in enumerate(templates):
            tid = _new_id("T-")
            blob = seal(
                key,
                np.asarray(emb, dtype=np.float32).tobytes(),
                aad("templates", tid, "embedding", f"{model_id}|{pid}"),
            )
            c.execute(
                "INSERT INTO templates (id, person_id, model_id, model_version, quality, created,"
                " embedding) VALUES (?,?,?,?,?,?,?)",
                (tid, pid, model_id, model_version,
                 float(qualities[i]) if i < len(qualities) else 0.0, now, blob),
            )  # fmt: skip

    def _delete_people(self, c: sqlite3.Connection, ids: Sequence[str]) -> int:
        """Delete people, their key, consents and templates; mark an erasure as pending."""
        n = 0
        for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
            q = ",".join("?" * len(chunk))
            for table, col in (("templates", "person_id"), ("consents", "person_id"),
                               ("person_keys", "person_id")):  # fmt: skip
                c.execute(f"DELETE FROM {table} WHERE {col} IN ({q})", chunk)
            n += c.execute(f"DELETE FROM people WHERE id IN ({q})", chunk).rowcount
        if n:
            c.execute(
                "INSERT INTO gallery_state (key, value) VALUES ('pending_erasure', 1)"
                " ON CONFLICT(key) DO UPDATE SET value = 1"
            )
        return n

    def forget(self, person_id: str) -> bool:
        """Erase a person: their key is destroyed and their bytes leave the file.

        Raises ErasureIncomplete (never claims an erasure that did not happen) when another
        process keeps old pages alive; a later `forget` or `purge` finishes the job.
        """
        found = self.write(lambda c: self._delete_people(c, [person_id])) > 0
        if found or self.pending_erasure():
            self.scrub()
        return found

    def purge_expired(self, now: float, after_days: int, scrub: bool = True) -> list[str]:
        """Forget everyone whose pass expired more than after_days ago; returns their ids.

        scrub=False leaves the on-disk erasure (marked pending) to a later `scrub()`, so a caller
        can commit its own record of the deletion first.
        """
        cutoff = int(now - after_days * 86400)
        q = "SELECT id FROM people WHERE valid_until IS NOT NULL AND valid_until < ?"
        ids = [r[0] for r in self.conn.execute(q, (cutoff,))]
        if ids:
            self.write(lambda c: self._delete_people(c, ids))
        if scrub and (ids or self.pending_erasure()):
            self.scrub()
        return ids

    def scrub(self) -> None:
        """Push deletions out of the WAL and rebuild the file so no freed page keeps old bytes."""
        scrub_file(self)

    def rewrap(self, new: Kek) -> None:
        """Wrap the data key under a new KEK too (the old wrapping stays until drop_other_keys)."""
        self.write(lambda c: self._store_dek(c, new))

    def drop_other_keys(self, keep: Kek) -> None:
        """Keep only the data key's wrapping under `keep` (last step of a key rotation)."""
        self.write(lambda c: c.execute("DELETE FROM data_keys WHERE kid != ?", (keep.kid,)))
        self.kek = keep
        self.scrub()


__all__ = ["Consent", "Gallery", "NewPerson", "Person", "PersonKey", "Templates"]
