"""The read side of the gallery: per-person keys opened and checked, rows opened for callers.

A person is readable only while their key exists and their clear `valid_until`/`minor` columns
match the sealed copy; anything else is logged and left out, so it can never match.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import GalleryError
from edge.gallery.crypto import SealError, aad, open_sealed
from edge.gallery.schema import attrs_aad

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Person:
    """One enrolled person as operators see them; never biometric data."""

    id: str
    name: str
    pass_ref: str
    valid_until: int | None
    minor: bool
    created: int
    consent_time: int | None
    template_count: int
    intact: bool = True  # False: a sealed value or the bound validity failed authentication


@dataclass(frozen=True)
class Templates:
    """Decrypted templates for one model, ready for the matcher. Memory only."""

    matrix: np.ndarray  # (N, D) float32, L2-normalised rows
    person_ids: np.ndarray  # (N,) object array of person ids
    rejected: int  # rows that failed authentication and were skipped


@dataclass(frozen=True)
class PersonKey:
    """A person's unwrapped key with the validity their sealed record vouches for."""

    key: bytes
    valid_until: int | None
    minor: bool
    aead: AESGCM  # prepared once per person, reused for each of their templates


class GalleryReader:
    """Reads of `Gallery` (which supplies the connection, data key and cache)."""

    conn: sqlite3.Connection
    dek: bytes
    path: Path
    _cache: tuple[tuple[int, int], dict[str, PersonKey]] | None
    # people whose key opens but whose clear validity the sealed copy does not vouch for, as of
    # the last `person_keys` read: their real validity cannot be known (see `unbound_validity`)
    _unbound: tuple[str, ...] = ()

    def _follow(self) -> None:
        """Open the data key of the gallery's current generation (Gallery)."""

    def _wait_for_writers(self) -> bool:
        """Wait for another process's write in flight (Gallery); False when it cannot tell."""
        return False

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        """Reads that must agree, in one read transaction (Gallery: Store.snapshot)."""
        return nullcontext(self.conn)

    def needs_forget_replay(self) -> bool:
        """A restored older copy that must replay the forget list first (Gallery)."""
        return False

    def person_keys(self) -> dict[str, PersonKey]:
        """Every person whose key opens and whose clear validity matches their sealed one.

        A person whose key is gone, or whose `valid_until`/`minor` columns were changed without
        the key, is left out (and logged): they can never match. Cached per database version.
        """
        version = (self.data_version(), self.conn.total_changes)  # others' and own commits
        if self._cache is not None and self._cache[0] == version:
            return self._cache[1]
        out: dict[str, PersonKey] = {}
        for settled in (False, True):
            # one snapshot: a forget (a new data key) committed between the generation and
            # the rows would make every person's key fail to open (a commit landing before it
            # but after `version` only makes the next call read again)
            with self.snapshot():
                self._follow()
                restored = self.needs_forget_replay()
                if not restored:
                    rows = self.conn.execute(
                        "SELECT p.id, p.valid_until, p.minor, p.attrs, k.wrapped"
                        " FROM people p LEFT JOIN person_keys k ON k.person_id = p.id"
                    ).fetchall()
                    break
            # The forget list is written before the forget commits: ahead of this snapshot,
            # it is a forget in flight, or a restored older copy if it still is once no write
            # is in flight (nobody is admitted until the list is replayed).
            if settled or not self._wait_for_writers():
                log.error("gallery restored from an older copy: every person refused until "
                          "`edge-gate forget --replay`")  # fmt: skip
                self._cache, self._unbound = (version, out), ()
                return out
        dek = AESGCM(self.dek)
        unbound: list[str] = []
        for pid, vu, minor, attrs, wrapped in rows:  # one unwrap per person, not per template
            try:
                if wrapped is None:
                    raise SealError("no key for this person")
                key = open_sealed(dek, wrapped, aad("person_keys", pid, "wrapped"))
            except SealError:
                log.error("gallery row rejected table=people id=%s reason=key_unavailable", pid)
                continue
            aead = AESGCM(key)
            try:
                open_sealed(aead, attrs, attrs_aad(pid, vu, bool(minor)))
            except SealError:
                log.error("gallery row rejected table=people id=%s reason=tampered_attrs", pid)
                unbound.append(pid)
                continue
            out[pid] = PersonKey(key, vu, bool(minor), aead)
        self._cache, self._unbound = (version, out), tuple(unbound)
        return out

    def unbound_validity(self) -> list[str]:
        """People whose key opens but whose `valid_until`/`minor` columns no longer match the
        sealed copy (edited or damaged): they never match, and how long they may be kept cannot
        be known, so retention cannot vouch for them (the purge removes them)."""
        self.person_keys()
        return list(self._unbound)

    def _open(self, key: bytes, blob: bytes | None, table: str, row: str, column: str) -> str:
        return open_sealed(key, blob, aad(table, row, column)).decode("utf-8") if blob else ""

    def pending_erasure(self) -> bool:
        """True while deleted rows may still be on disk (a scrub has not completed since)."""
        q = "SELECT value FROM gallery_state WHERE key = 'pending_erasure'"
        row = self.conn.execute(q).fetchone()
        return bool(row and row[0])

    def holds(self, person_id: str) -> bool:
        """Whether this person is enrolled here (by id alone: no name is opened)."""
        q = "SELECT 1 FROM people WHERE id = ?"
        return self.conn.execute(q, (person_id,)).fetchone() is not None

    def data_version(self) -> int:
        """Changes whenever another connection commits: the running gate reloads on it."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def people(self, person_id: str | None = None) -> list[Person]:
        """Everyone (or one person), names opened; a row failing authentication is marked."""
        self.person_keys()  # read (and settled) outside: inside, a cache hit unless it moved
        with self.snapshot():  # rows and keys from the same commit (else: "<damaged>")
            rows = self.conn.execute(
                "SELECT p.id, p.name, p.pass_ref, p.valid_until, p.minor, p.created,"
                " (SELECT max(time) FROM consents c WHERE c.person_id = p.id),"
                " (SELECT count(*) FROM templates t WHERE t.person_id = p.id)"
                " FROM people p WHERE ? IS NULL OR p.id = ? ORDER BY p.created, p.id",
                (person_id, person_id),
            ).fetchall()
            keys, out = self.person_keys(), []
        for pid, name, pref, vu, minor, created, ctime, n in rows:
            pk = keys.get(pid)
            try:
                if pk is None:
                    raise SealError("person key unavailable or validity tampered")
                name_s = self._open(pk.key, name, "people", pid, "name")
                pref_s = self._open(pk.key, pref, "people", pid, "pass_ref")
                out.append(Person(pid, name_s, pref_s, vu, bool(minor), created, ctime, n))
            except SealError:
                log.error(
                    "gallery row rejected table=people id=%s reason=authentication_failed", pid
                )
                out.append(Person(pid, "<damaged>", "", vu, bool(minor), created, ctime, n, False))
        return out

    def person(self, person_id: str) -> Person:
        """One person; GalleryError naming the fix when there is no such id."""
        found = self.people(person_id)
        if not found:
            raise GalleryError(
                f"no person {person_id} in {self.path}", "check the id with `edge-gate people`"
            )
        return found[0]

    def latest_consent(self, person_id: str) -> dict[str, Any] | None:
        """The person's newest consent (notice version and hash, method, time), or None: what
        another gallery of the site needs to hold the same consent."""
        row = self.conn.execute(
            "SELECT notice_version, notice_sha256, method, time FROM consents WHERE person_id = ?"
            " ORDER BY time DESC LIMIT 1",
            (person_id,),
        ).fetchone()
        keys = ("notice_version", "notice_sha256", "method", "time")
        return dict(zip(keys, row, strict=True)) if row else None

    def template_models(self, person_id: str) -> list[tuple[str, str]]:
        """The (model id, model version) pairs the person has templates of."""
        q = "SELECT DISTINCT model_id, model_version FROM templates WHERE person_id = ?"
        return [(m, v) for m, v in self.conn.execute(q, (person_id,))]

    def person_valid_until(self) -> dict[str, int | None]:
        """Person id -> pass expiry, only for people whose sealed record vouches for it."""
        return {pid: pk.valid_until for pid, pk in self.person_keys().items()}

    def pass_refs(self) -> dict[str, str]:
        """Person id -> pass reference (opens only that column; names stay sealed)."""
        with self.snapshot():
            keys, out = self.person_keys(), {}
            q = "SELECT id, pass_ref FROM people WHERE pass_ref IS NOT NULL"
            found = self.conn.execute(q).fetchall()
        for pid, blob in found:
            try:
                if pid in keys:
                    out[pid] = self._open(keys[pid].key, blob, "people", pid, "pass_ref")
            except SealError:
                log.error("gallery row rejected table=people id=%s column=pass_ref", pid)
        return out

    def templates(self, model_id: str, person_id: str | None = None) -> Templates:
        """Decrypt the templates of one model (optionally one person); bad rows are skipped."""
        self.person_keys()  # read (and settled) outside: inside, a cache hit unless it moved
        with self.snapshot():  # templates and the keys that open them from one commit
            rows = self.conn.execute(
                "SELECT id, person_id, embedding FROM templates WHERE model_id = ?"
                " AND (? IS NULL OR person_id = ?) ORDER BY person_id, id",
                (model_id, person_id, person_id),
            ).fetchall()
            keys = self.person_keys()
        vecs, pids, rejected = [], [], 0
        for tid, pid, blob in rows:  # one AEAD open per row; matching itself is vectorised
            try:
                if pid not in keys:
                    raise SealError("person key unavailable")
                a = aad("templates", tid, "embedding", f"{model_id}|{pid}")
                raw = open_sealed(keys[pid].aead, blob, a)
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
        """Counts and dates for `doctor` and the privacy report; nothing personal."""

        def one(sql: str) -> Any:
            return self.conn.execute(sql).fetchone()[0]

        def group(sql: str) -> dict:
            return dict(self.conn.execute(sql))

        return {
            "people": one("SELECT count(*) FROM people"),
            "minors": one("SELECT count(*) FROM people WHERE minor = 1"),
            "templates": one("SELECT count(*) FROM templates"),
            "templates_by_model": group(
                "SELECT model_id, count(*) FROM templates GROUP BY model_id"
            ),
            "consents": one("SELECT count(*) FROM consents"),
            "oldest_consent": one("SELECT min(time) FROM consents"),
            "newest_consent": one("SELECT max(time) FROM consents"),
            "notice_versions": group(
                "SELECT notice_version, count(*) FROM consents GROUP BY notice_version"
            ),
            "people_without_expiry": one("SELECT count(*) FROM people WHERE valid_until IS NULL"),
            "key_ids": [r[0] for r in self.conn.execute("SELECT kid FROM data_keys")],
            "schema_version": one("PRAGMA user_version"),
            "pending_erasure": self.pending_erasure(),
        }  # fmt: skip
