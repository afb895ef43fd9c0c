"""The gallery database: one SQLite file (WAL) holding people, consents and templates, sealed.

Nothing personal is stored in the clear: names, pass references, operator and guardian names and
every template are AES-GCM sealed under the person's own key, with associated data that binds
table, row, column and model. The schema and what each column holds are declared in
`edge.gallery.schema`. Raw face images never reach this module.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.db import Store, migrate, tables, user_version
from edge.errors import GalleryError, KeyFileError
from edge.files import make_private_dirs
from edge.gallery import schema
from edge.gallery.crypto import Kek, SealError, aad, open_sealed, seal
from edge.gallery.erase import scrub_file
from edge.gallery.forgetlist import ForgetList
from edge.gallery.reads import GalleryReader, Person, PersonKey, Templates
from edge.gallery.schema import Consent, NewPerson

log = logging.getLogger(__name__)

SCHEMA_VERSION = schema.SCHEMA_VERSION
FILING_THRESHOLD = 100_000  # people; above it a processor has extra filing duties (China, 2025)
UNCHANGED: Any = object()  # update_person: leave this field as it is
_DETAIL = {"name": "the name", "pass_ref": "the pass reference", "operator": "the operator's "
           "name", "guardian": "the guardian's name"}  # fmt: skip


@dataclass(frozen=True)
class ForgetState:
    """Where a gallery file stands against the lane's forget list (see `Gallery.forget_state`)."""

    generation: int  # this file's
    listed: int  # the newest the lane's forget list records for this gallery
    office: int  # the office forget list generation last applied here
    reason: str  # why nobody is admitted by face ("" = current)


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
            make_private_dirs(path.parent)
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
        other = sorted(t for t in have if not t.startswith("sqlite_"))
        if other and "data_keys" not in have:  # a gallery is created whole, with its data key
            self.conn.close()
            raise GalleryError(
                f"gallery {self.path} is another database, not a gallery (it holds "
                f"{', '.join(other[:6])}); nothing was written to it",
                "check gallery.db in the config or --db (the ledger or the audit log?); a new "
                "gallery needs a file of its own",
            )
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise GalleryError(
                f"gallery {self.path} has schema version {version}, newer than this edge-gate "
                f"understands ({SCHEMA_VERSION})",
                "upgrade edge-gate; do not downgrade a gate",
            )
        self.kek = kek
        self._cache: tuple[tuple[int, int], dict[str, PersonKey]] | None = None
        self.forgets = ForgetList(path.with_name(path.name + ".forgotten"))
        self.gallery_id, self.generation = 0, 0
        if exists and "data_keys" in have:
            self.dek = self._unwrap()  # before any write
        if not exists or "data_keys" not in have:
            if not create:
                self.conn.close()
                raise GalleryError(
                    f"gallery {self.path} is not set up (another process may be creating it)",
                    "enroll someone first, or check --db",
                )
            if self.write(self._create):
                if self.forgets.newest() is not None:  # a list of an earlier gallery here
                    self.forgets.append(1, time.time(), [], self.gallery_id)
                    log.warning(
                        "gallery created_empty path=%s where the forget list of an earlier "
                        "gallery is: was that gallery lost? restore it from its backup (then "
                        "`edge-gate forget --replay`) before enrolling anyone here",
                        self.path,
                    )
            else:  # another process created it meanwhile
                self.dek = self._unwrap()
        elif version < SCHEMA_VERSION:
            self.write(lambda c: migrate(c, schema.migrations(self.dek, kek), schema.too_new))
            self._unwrap()  # the id and generation the migration gave it
            log.info("gallery migrated path=%s schema=%d", self.path, SCHEMA_VERSION)
            self.scrub()  # the values sealed the old way leave the file
        if self.needs_forget_replay():
            log.error(
                "gallery RESTORED %s: nobody is admitted by face until the forget list is "
                "replayed (edge-gate forget --replay)",
                self.forget_state().reason,
            )

    # --- setup -------------------------------------------------------------------------------

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self, c: sqlite3.Connection) -> bool:
        """A new gallery: its tables, a random id, generation 1, a data key. False when another
        process created it between our look and our write lock."""
        if "data_keys" in tables(c):
            return False
        self.dek, self.gallery_id, self.generation = os.urandom(32), schema.new_gallery_id(), 1
        schema.create(c)
        schema.set_state(c, gallery_id=self.gallery_id, generation=1)
        self._store_dek(c, self.kek)
        return True

    def _store_dek(self, c: sqlite3.Connection, kek: Kek) -> None:
        c.execute(
            "INSERT OR REPLACE INTO data_keys (kid, wrapped, created) VALUES (?, ?, ?)",
            (
                kek.kid,
                seal(kek.key, self.dek, schema.dek_aad(kek.kid, self.gallery_id, self.generation)),
                int(time.time()),
            ),
        )  # fmt: skip

    def _unwrap(self, opening: bool = True) -> bytes:
        """The data key, opened for the id and generation the file states (schema 3), and those.
        A key that does not open it closes a gallery being opened; an open one (`_follow`)
        stays open and says so again at the next read, never "closed database"."""
        with self.snapshot() as c:  # a forget committing between the reads moves both on
            gid, gen = None, None
            if user_version(c) >= 3:
                gid, gen = schema.state(c, "gallery_id"), schema.state(c, "generation")
            rows = c.execute("SELECT kid, wrapped FROM data_keys").fetchall()
        for kid, wrapped in rows:
            if kid == self.kek.kid:
                try:
                    dek = open_sealed(self.kek.key, wrapped, schema.dek_aad(kid, gid, gen))
                except SealError:
                    break
                self.gallery_id, self.generation, self.dek = gid or 0, gen or 0, dek
                return dek
        expected = ", ".join(r[0] for r in rows) or "none"
        if opening:
            self.conn.close()
        raise KeyFileError(
            f"key file {self.kek.path} does not open gallery {self.path} "
            f"(key id {self.kek.kid}; the gallery expects {expected}; or its generation was "
            "edited)",
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
        if not value:
            return None
        schema.check_text(value, _DETAIL.get(column, column))
        return seal(key, value.encode("utf-8"), aad(table, row, column))

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
        """Rename, change the pass reference or renew the pass; validity stays sealed-bound.

        A new validity re-seals the person under a new key and moves the gallery to a new
        generation, so an older copy of their rows (a longer pass, say) no longer opens. The
        write-ahead log is then emptied into the file (`checkpoint`): the page that held the
        old sealed values (a name, a pass id, which the person's key still opens) is written
        over in the file and the log emptied. Before, the file kept the old page until the
        next checkpoint, which a running gate holding the gallery open puts off for long."""
        key = self._key_for_write(person_id)
        current = self.person(person_id)
        vu = current.valid_until if valid_until is UNCHANGED else valid_until
        renewal = vu != current.valid_until

        def write(c):
            k = self._reseal_person(c, person_id, key) if renewal else key
            sets = {
                "valid_until": vu,
                "attrs": schema.attrs_blob(k, person_id, vu, current.minor),
            }
            if name is not UNCHANGED:
                sets["name"] = self._seal(k, name, "people", person_id, "name")
            if pass_ref is not UNCHANGED:
                sets["pass_ref"] = self._seal(k, pass_ref, "people", person_id, "pass_ref")
            cols = ", ".join(f"{col} = ?" for col in sets)
            c.execute(f"UPDATE people SET {cols} WHERE id = ?", (*sets.values(), person_id))
            if renewal:
                return self._bump(c, [])
            return None

        self._adopt(self.write(write))
        self.checkpoint()
        return self.person(person_id)

    def _reseal_person(self, c: sqlite3.Connection, pid: str, old: bytes) -> bytes:
        """Seal every value of one person under a new key of theirs; returns the new key."""
        new = os.urandom(32)
        a_old = AESGCM(old)

        def again(blob, a: bytes):
            if blob is None:
                return None
            try:
                return seal(new, open_sealed(a_old, blob, a), a)
            except SealError:  # already damaged: kept as is, it is rejected on every read
                return blob

        name, pref = c.execute("SELECT name, pass_ref FROM people WHERE id = ?", (pid,)).fetchone()
        c.execute(
            "UPDATE people SET name = ?, pass_ref = ? WHERE id = ?",
            (again(name, aad("people", pid, "name")),
             again(pref, aad("people", pid, "pass_ref")), pid),
        )  # fmt: skip
        for cid, op, gu in c.execute(
            "SELECT id, operator, guardian FROM consents WHERE person_id = ?", (pid,)
        ).fetchall():
            c.execute(
                "UPDATE consents SET operator = ?, guardian = ? WHERE id = ?",
                (again(op, aad("consents", cid, "operator")),
                 again(gu, aad("consents", cid, "guardian")), cid),
            )  # fmt: skip
        for tid, mid, emb in c.execute(
            "SELECT id, model_id, embedding FROM templates WHERE person_id = ?", (pid,)
        ).fetchall():
            a = aad("templates", tid, "embedding", f"{mid}|{pid}")
            c.execute("UPDATE templates SET embedding = ? WHERE id = ?", (again(emb, a), tid))
        c.execute(
            "UPDATE person_keys SET wrapped = ? WHERE person_id = ?",
            (self.wrap_person_key(pid, new), pid),
        )
        return new

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

    def forget(self, person_id: str, scrub: bool = True) -> bool:
        """Erase a person: their key is destroyed, the gallery moves to a new generation (so a
        backup taken before no longer passes for current), and their bytes leave the file.

        Raises ErasureIncomplete (never claims an erasure that did not happen) when another
        process keeps old pages alive; a later `forget` or `purge` finishes the job.
        scrub=False (inside a caller's transaction, which commits its record of the deletion
        with it) leaves the on-disk erasure to a later `scrub()`, as `purge_expired` does.
        """
        found = self._forget_ids([person_id]) > 0
        if scrub and (found or self.pending_erasure()):
            self.scrub()
        return found

    def _forget_ids(self, ids: Sequence[str], office_generation: int | None = None) -> int:
        """Delete people and bump the generation in one transaction; how many were here."""

        def write(c):
            n = self._delete_people(c, ids)
            if office_generation is not None:
                old = schema.state(c, "forget_list_generation") or 0
                schema.set_state(c, forget_list_generation=max(old, office_generation))
            if n or office_generation is not None or self.needs_forget_replay():
                return n, self._bump(c, [i for i in ids if i in found])
            return n, None

        found = {r[0] for r in self.conn.execute(
            f"SELECT id FROM people WHERE id IN ({','.join('?' * len(ids))})", list(ids)
        )} if len(ids) <= 500 else set(ids)  # fmt: skip
        n, bumped = self.write(write)
        self._adopt(bumped)
        return n

    def purge_expired(self, now: float, after_days: int, scrub: bool = True) -> list[str]:
        """Forget everyone whose pass expired more than after_days ago; returns their ids.

        scrub=False leaves the on-disk erasure (marked pending) to a later `scrub()`, so a caller
        can commit its own record of the deletion first.
        """
        ids, unbound = self._due_for_purge(now, after_days)
        if unbound:
            log.warning("purge: removing %d people whose validity column does not match the "
                        "sealed copy (edited or damaged; their expiry cannot be read): %s",
                        len(unbound), " ".join(unbound))  # fmt: skip
        ids += unbound
        if ids:
            self._forget_ids(ids)
        if scrub and (ids or self.pending_erasure()):
            self.scrub()
        return ids

    def due_for_purge(self, now: float, after_days: int) -> list[str]:
        """Who `purge_expired(now, after_days)` would remove: people kept past retention."""
        expired, unbound = self._due_for_purge(now, after_days)
        return expired + unbound

    def _due_for_purge(self, now: float, after_days: int) -> tuple[list[str], list[str]]:
        """(people whose pass expired more than after_days ago, people whose validity cannot be
        read)."""
        # a cutoff before what SQLite's 64-bit integers reach: nobody expired that long ago
        cutoff = max(int(now - after_days * 86400), -(2**63))
        q = "SELECT id FROM people WHERE valid_until IS NOT NULL AND valid_until < ?"
        ids = [r[0] for r in self.conn.execute(q, (cutoff,))]
        # a row whose clear column no longer matches its sealed validity is judged by neither:
        # its real expiry cannot be read, so it is purged too, not kept past retention unseen
        return ids, sorted(set(self.unbound_validity()) - set(ids))

    # --- generations: a restored older file is told apart, and replays the forget list --------

    def _bump(self, c: sqlite3.Connection, forgot: Sequence[str]) -> tuple[bytes, int]:
        """Inside the write: a new generation. It goes to the forget list first (fsync'd), then
        a new data key rewraps every person key, so rows copied in from an older copy (wrapped
        under the old data key) no longer open. Returns (new data key, generation) to adopt
        once the transaction has committed."""
        self._follow()  # another process may have moved it on since we opened
        others = [k for (k,) in c.execute("SELECT kid FROM data_keys") if k != self.kek.kid]
        if others:  # the new data key could not be wrapped for the other key file
            raise GalleryError(
                f"a key rotation of gallery {self.path} is unfinished (it also holds the data "
                f"key for key id {', '.join(others)}); nothing was erased",
                "run `edge-gate keys rotate` again to finish it, then retry",
            )
        gen = max(self.generation, self.forgets.generation(self.gallery_id)) + 1
        self.forgets.append(gen, time.time(), forgot, self.gallery_id)
        dek = os.urandom(32)
        old, new = AESGCM(self.dek), AESGCM(dek)
        rows = c.execute("SELECT person_id, wrapped FROM person_keys").fetchall()
        for pid, wrapped in rows:
            a = aad("person_keys", pid, "wrapped")
            try:
                k = open_sealed(old, wrapped, a)
            except SealError:  # already unreadable: left as is, still rejected on every read
                continue
            nonce = os.urandom(12)
            c.execute(
                "UPDATE person_keys SET wrapped = ? WHERE person_id = ?",
                (nonce + new.encrypt(nonce, k, a), pid),
            )
        schema.set_state(c, generation=gen)
        c.execute("DELETE FROM data_keys")
        c.execute(
            "INSERT INTO data_keys (kid, wrapped, created) VALUES (?, ?, ?)",
            (self.kek.kid, seal(self.kek.key, dek, schema.dek_aad(self.kek.kid,
             self.gallery_id, gen)), int(time.time())),
        )  # fmt: skip
        return dek, gen

    def _adopt(self, bumped: tuple[bytes, int] | None) -> None:
        if bumped is not None:
            self.dek, self.generation = bumped
            self._cache = None

    def forget_state(self) -> ForgetState:
        """This file's generation, the newest the forget list records, the office list applied,
        and why faces are refused ("" when they are not)."""
        self._follow()
        listed = self.forgets.generation(self.gallery_id)
        newest = self.forgets.newest()
        office = schema.state(self.conn, "forget_list_generation") or 0
        reason = ""
        if listed > self.generation:
            reason = (
                f"gallery {self.path} is at generation {self.generation}, the lane's forget list "
                f"at {listed}: it was restored from an older copy"
            )
        elif newest is not None and listed == 0 and newest.gallery != self.gallery_id:
            reason = (
                f"gallery {self.path} (id {self.gallery_id}) is not the gallery the lane's "
                f"forget list names (id {newest.gallery}): it was replaced"
            )
        return ForgetState(self.generation, listed, office, reason)

    def _wait_for_writers(self) -> bool:
        """Wait (up to the busy timeout) until no other process is writing the file: an empty
        IMMEDIATE transaction. False when the file cannot be locked (read-only, still busy)."""
        try:
            with self.transaction():
                pass
        except GalleryError:
            return False
        return True

    def needs_forget_replay(self) -> bool:
        """True while this file is older than the lane's newest generation (a restored backup):
        nobody is admitted by face until `apply_forget_list` (or `forget --replay`) ran."""
        return bool(self.forget_state().reason)

    def forget_list_generation(self) -> int:
        """The office forget list generation last applied here (0: none)."""
        return schema.state(self.conn, "forget_list_generation") or 0

    def held_of_forget_list(self, ids: Iterable[str] = ()) -> list[str]:
        """Who this file still holds among `ids` and everyone the lane's forget list names:
        those `apply_forget_list` would erase (sorted). People already gone are not among
        them. The ids alone, matched in SQL: no name is opened to list who is enrolled."""
        wanted = sorted(set(ids) | self.forgets.forgotten())
        return [pid for (pid,) in self.conn.execute(
            "SELECT id FROM people WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            (json.dumps(wanted),),
        )]  # fmt: skip

    def apply_forget_list(self, ids: Iterable[str], generation: int = 0) -> list[str]:
        """Erase everyone on a forget list (the office's, or a file for `forget --replay`) and
        everyone the lane's own list names, then move past every generation seen: a restored
        gallery is current again. Returns the ids erased here."""
        gone = self.held_of_forget_list(ids)
        self._forget_ids(gone, office_generation=generation)
        if gone or self.pending_erasure():
            self.scrub()
        return gone

    def _follow(self) -> None:
        """Another process moved the gallery to a new generation: open its new data key."""
        gen = schema.state(self.conn, "generation") if user_version(self.conn) >= 3 else None
        if gen is not None and gen != self.generation:
            self._unwrap(opening=False)
            self._cache = None

    def scrub(self) -> None:
        """Push deletions out of the WAL and rebuild the file so no freed page keeps old bytes."""
        scrub_file(self.conn, self.path, self.busy_timeout_s)

    def rewrap(self, new: Kek) -> None:
        """Wrap the data key under a new KEK too (the old wrapping stays until drop_other_keys)."""
        self.write(lambda c: self._store_dek(c, new))

    def drop_other_keys(self, keep: Kek) -> None:
        """Keep only the data key's wrapping under `keep` (last step of a key rotation)."""
        self.write(lambda c: c.execute("DELETE FROM data_keys WHERE kid != ?", (keep.kid,)))
        self.kek = keep
        self.scrub()


__all__ = ["Consent", "ForgetState", "Gallery", "NewPerson", "Person", "PersonKey", "Templates"]
