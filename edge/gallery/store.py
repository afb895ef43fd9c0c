"""The gallery database: one SQLite file (WAL) holding people, consents and templates, sealed.

Nothing personal is stored in the clear: names, pass references, operator and guardian names and
every template are AES-GCM sealed with associated data that binds table, row, column and model.
Raw face images never reach this module.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from edge.errors import GalleryError, KeyFileError
from edge.gallery.crypto import Kek, SealError, aad, load_key, open_sealed, seal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILING_THRESHOLD = (
    100_000  # people; a processor above it has extra filing duties (China, 2025 measures)
)


@dataclass(frozen=True)
class Consent:
    notice_version: str
    method: str = "written"
    operator: str = ""
    guardian: str = ""
    notice_sha256: str = ""
    time: int = 0


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    pass_ref: str
    valid_until: int | None
    minor: bool
    created: int
    consent_time: int | None
    template_count: int


@dataclass(frozen=True)
class Templates:
    """Decrypted templates for one model, ready for the matcher. Memory only."""

    matrix: np.ndarray  # (N, D) float32, L2-normalised rows
    person_ids: np.ndarray  # (N,) object array of person ids
    rejected: int  # rows that failed authentication and were skipped


def _create_v1(db: sqlite_utils.Database) -> None:
    db["data_keys"].create({"kid": str, "wrapped": bytes, "created": int}, pk="kid")
    db["people"].create(
        {
            "id": str,
            "name": bytes,
            "pass_ref": bytes,
            "valid_until": int,
            "minor": int,
            "created": int,
        },
        pk="id",
    )
    db["consents"].create(
        {
            "id": str,
            "person_id": str,
            "notice_version": str,
            "notice_sha256": str,
            "method": str,
            "time": int,
            "operator": bytes,
            "guardian": bytes,
        },
        pk="id",
        foreign_keys=[("person_id", "people", "id")],
    )
    db["templates"].create(
        {
            "id": str,
            "person_id": str,
            "model_id": str,
            "model_version": str,
            "quality": float,
            "created": int,
            "embedding": bytes,
        },
        pk="id",
        foreign_keys=[("person_id", "people", "id")],
    )
    db["templates"].create_index(["model_id"])
    db["templates"].create_index(["person_id"])
    db["consents"].create_index(["person_id"])


MIGRATIONS = {1: _create_v1}  # version -> step from version-1


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class Gallery:
    """Open (or create) a gallery with its key; a wrong key fails here and writes nothing."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        kek: Kek,
        create: bool = True,
        busy_timeout_s: float = 5.0,
    ):
        self.path = Path(path)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise GalleryError(
                f"gallery {self.path} does not exist", "enroll someone first, or check --db"
            )
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(
                str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            self.conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as e:
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
        if exists and "data_keys" in tables:
            self.dek = self._unwrap()  # before any write
        self._pragmas()
        if not exists or "data_keys" not in tables:
            self._migrate(version)
            self.dek = os.urandom(32)
            self._tx(lambda c: self._store_dek(c, kek))
        elif version < SCHEMA_VERSION:
            self._migrate(version)

    # --- setup -------------------------------------------------------------------------------

    def _pragmas(self) -> None:
        c = self.conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten with zeros
        c.execute("PRAGMA foreign_keys=ON")

    def _migrate(self, version: int) -> None:
        db = sqlite_utils.Database(self.conn)
        for v in range(version + 1, SCHEMA_VERSION + 1):

            def step(c, v=v):
                MIGRATIONS[v](db)
                c.execute(f"PRAGMA user_version={v}")

            self._tx(step)

    def _store_dek(self, c: sqlite3.Connection, kek: Kek) -> None:
        c.execute(
            "INSERT OR REPLACE INTO data_keys (kid, wrapped, created) VALUES (?, ?, ?)",
            (
                kek.kid,
                seal(kek.key, self.dek, aad("data_keys", kek.kid, "wrapped")),
                int(time.time()),
            ),
        )

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

    def _tx(self, fn):
        """Run fn(conn) in one IMMEDIATE transaction: all of it lands, or none of it."""
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
            result = fn(c)
            c.execute("COMMIT")
            return result
        except BaseException as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError):
                full = "full" in str(e)
                raise GalleryError(
                    f"gallery {self.path}: {e}; nothing was written",
                    "free disk space and retry"
                    if full
                    else "another process holds the gallery; retry",
                ) from None
            raise

    def close(self) -> None:
        self.conn.close()

    # --- sealing -----------------------------------------------------------------------------

    def _seal(self, value: str, table: str, row: str, column: str) -> bytes | None:
        return seal(self.dek, value.encode("utf-8"), aad(table, row, column)) if value else None

    def _open(self, blob: bytes | None, table: str, row: str, column: str) -> str:
        return open_sealed(self.dek, blob, aad(table, row, column)).decode("utf-8") if blob else ""

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
        person_id: str | None = None,
    ) -> str:
        """Person, consent and templates in one transaction; with person_id, add to that person."""
        now = int(time.time())

        def write(c):
            pid = person_id
            if pid is None:
                pid = _new_id("P-")
                c.execute(
                    "INSERT INTO people (id, name, pass_ref, valid_until, minor, created) VALUES (?,?,?,?,?,?)",
                    (
                        pid,
                        self._seal(name, "people", pid, "name"),
                        self._seal(pass_ref, "people", pid, "pass_ref"),
                        valid_until,
                        int(minor),
                        now,
                    ),
                )
            elif c.execute("SELECT 1 FROM people WHERE id = ?", (pid,)).fetchone() is None:
                raise GalleryError(
                    f"no person {pid} in {self.path}", "check the id with `edge-gate people`"
                )
            cid = _new_id("C-")
            c.execute(
                "INSERT INTO consents (id, person_id, notice_version, notice_sha256, method, time, operator, guardian)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (
                    cid,
                    pid,
                    consent.notice_version,
                    consent.notice_sha256,
                    consent.method,
                    consent.time or now,
                    self._seal(consent.operator, "consents", cid, "operator"),
                    self._seal(consent.guardian, "consents", cid, "guardian"),
                ),
            )
            for i, emb in enumerate(templates):
                self._insert_template(
                    c,
                    pid,
                    emb,
                    model_id,
                    model_version,
                    qualities[i] if i < len(qualities) else 0.0,
                    now,
                )
            return pid

        return self._tx(write)

    def _insert_template(self, c, pid, emb, model_id, model_version, quality, now) -> None:
        tid = _new_id("T-")
        blob = seal(
            self.dek,
            np.asarray(emb, dtype=np.float32).tobytes(),
            aad("templates", tid, "embedding", f"{model_id}|{pid}"),
        )
        c.execute(
            "INSERT INTO templates (id, person_id, model_id, model_version, quality, created, embedding)"
            " VALUES (?,?,?,?,?,?,?)",
            (tid, pid, model_id, model_version, float(quality), now, blob),
        )

    def forget(self, person_id: str) -> bool:
        """Remove a person's templates, fields and consents so their bytes are gone from the file."""

        def delete(c):
            c.execute("DELETE FROM templates WHERE person_id = ?", (person_id,))
            c.execute("DELETE FROM consents WHERE person_id = ?", (person_id,))
            return c.execute("DELETE FROM people WHERE id = ?", (person_id,)).rowcount > 0

        found = self._tx(delete)
        if found:
            self.scrub()
        return found

    def purge_expired(self, now: float, after_days: int) -> list[str]:
        """Forget everyone whose pass expired more than after_days ago; returns their ids."""
        cutoff = int(now - after_days * 86400)
        ids = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM people WHERE valid_until IS NOT NULL AND valid_until < ?", (cutoff,)
            )
        ]

        def delete(c):
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                q = ",".join("?" * len(chunk))
                c.execute(f"DELETE FROM templates WHERE person_id IN ({q})", chunk)
                c.execute(f"DELETE FROM consents WHERE person_id IN ({q})", chunk)
                c.execute(f"DELETE FROM people WHERE id IN ({q})", chunk)

        if ids:
            self._tx(delete)
            self.scrub()
        return ids

    def scrub(self) -> None:
        """Push deletions out of the WAL and rebuild the file so no freed page keeps old bytes."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def rewrap(self, new: Kek) -> None:
        """Add a wrapping of the data key under a new KEK (old wrapping kept until drop_other_keys)."""
        self._tx(lambda c: self._store_dek(c, new))

    def drop_other_keys(self, keep: Kek) -> None:
        self._tx(lambda c: c.execute("DELETE FROM data_keys WHERE kid != ?", (keep.kid,)))
        self.kek = keep
        self.scrub()

    # --- reads -------------------------------------------------------------------------------

    def data_version(self) -> int:
        """Changes whenever another connection commits: the running gate reloads on it."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def people(self) -> list[Person]:
        rows = self.conn.execute(
            "SELECT p.id, p.name, p.pass_ref, p.valid_until, p.minor, p.created,"
            " (SELECT max(time) FROM consents c WHERE c.person_id = p.id),"
            " (SELECT count(*) FROM templates t WHERE t.person_id = p.id)"
            " FROM people p ORDER BY p.created, p.id"
        ).fetchall()
        out = []
        for pid, name, pref, vu, minor, created, ctime, n in rows:
            try:
                name_s, pref_s = (
                    self._open(name, "people", pid, "name"),
                    self._open(pref, "people", pid, "pass_ref"),
                )
            except SealError:
                log.error(
                    "gallery row rejected table=people id=%s reason=authentication_failed", pid
                )
                name_s, pref_s = "<damaged>", ""
            out.append(Person(pid, name_s, pref_s, vu, bool(minor), created, ctime, n))
        return out

    def person_valid_until(self) -> dict[str, int | None]:
        return dict(self.conn.execute("SELECT id, valid_until FROM people"))

    def pass_refs(self) -> dict[str, str]:
        """Person id -> pass reference (opens only that column; names stay sealed)."""
        out = {}
        for pid, blob in self.conn.execute(
            "SELECT id, pass_ref FROM people WHERE pass_ref IS NOT NULL"
        ):
            try:
                out[pid] = self._open(blob, "people", pid, "pass_ref")
            except SealError:
                log.error(
                    "gallery row rejected table=people id=%s column=pass_ref reason=authentication_failed",
                    pid,
                )
        return out

    def templates(self, model_id: str) -> Templates:
        """Decrypt every template of one model; a row that fails authentication is logged and skipped."""
        rows = self.conn.execute(
            "SELECT id, person_id, embedding FROM templates WHERE model_id = ?"
            " ORDER BY person_id, id",
            (model_id,),
        ).fetchall()
        vecs, pids, rejected = [], [], 0
        for tid, pid, blob in rows:  # one AEAD open per row; matching itself is vectorised
            try:
                raw = open_sealed(
                    self.dek, blob, aad("templates", tid, "embedding", f"{model_id}|{pid}")
                )
            except SealError:
                log.error(
                    "gallery row rejected table=templates id=%s reason=authentication_failed", tid
                )
                rejected += 1
                continue
            vecs.append(raw)
            pids.append(pid)
        if not vecs:
            return Templates(np.zeros((0, 0), np.float32), np.array([], dtype=object), rejected)
        mat = np.frombuffer(b"".join(vecs), dtype=np.float32).reshape(len(vecs), -1).copy()
        return Templates(mat, np.array(pids, dtype=object), rejected)

    def stats(self) -> dict:
        q = self.conn.execute
        return {
            "people": q("SELECT count(*) FROM people").fetchone()[0],
            "minors": q("SELECT count(*) FROM people WHERE minor = 1").fetchone()[0],
            "templates": q("SELECT count(*) FROM templates").fetchone()[0],
            "templates_by_model": dict(
                q("SELECT model_id, count(*) FROM templates GROUP BY model_id")
            ),
            "consents": q("SELECT count(*) FROM consents").fetchone()[0],
            "oldest_consent": q("SELECT min(time) FROM consents").fetchone()[0],
            "newest_consent": q("SELECT max(time) FROM consents").fetchone()[0],
            "notice_versions": dict(
                q("SELECT notice_version, count(*) FROM consents GROUP BY notice_version")
            ),
            "people_without_expiry": q(
                "SELECT count(*) FROM people WHERE valid_until IS NULL"
            ).fetchone()[0],
            "key_ids": [r[0] for r in q("SELECT kid FROM data_keys")],
            "schema_version": q("PRAGMA user_version").fetchone()[0],
        }


def open_gallery(
    db: str | os.PathLike[str], key_file: str | os.PathLike[str], create: bool = True
) -> Gallery:
    return Gallery(db, load_key(Path(key_file)), create=create)


def rotate_key(db: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> tuple[str, str]:
    """Replace the key-encryption key; crash-safe: at every instant the key file on disk opens the gallery.

    1. the new key is written beside the old one (KEY.next), 2. the data key is wrapped under it
    too (commit), 3. KEY.next atomically replaces KEY, 4. the old wrapping is dropped. Until step 3
    the old KEY is the authority (its wrapping stays in the database), so a KEY.next left by an
    interrupted rotation is discarded and made anew. A rotation killed anywhere is finished by
    running it again.
    """
    from edge.gallery.crypto import init_key

    key_path = Path(key_file)
    old = load_key(key_path)
    g = Gallery(db, old, create=False)
    try:
        nxt_path = key_path.with_name(key_path.name + ".next")
        nxt_path.unlink(missing_ok=True)
        new = init_key(nxt_path)
        g.rewrap(new)
        os.replace(nxt_path, key_path)
        dfd = os.open(key_path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        g.drop_other_keys(Kek(new.key, key_path))
        return old.kid, new.kid
    finally:
        g.close()
