"""Faults of the files under a running console (the office's staff web app under uvicorn): the
staff accounts, the office audit log and the gallery locked past the busy timeout, full or
read-only during an action, deleted or replaced while it runs. Every page answers (an error page
with the operator's fix, never a 500), every action is all or nothing (never a change without
its audit record, never a record of a change not made), and the console goes on serving; and a
client holding the console's connections by the dozen locks no staff member out."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from edge import config as config_mod
from edge.config import PROJECT_ROOT
from edge.console.app import build_app
from edge.console.users import UserStore
from edge.errors import AuditError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Consent, Gallery
from edge.gate.audit import AuditLog, AuditRecord, open_audit
from edge.lab.broker import free_port

from .console_harness import PASSWORD, Served, wait_for
from .helpers import copy_db, hold_write_lock, make_config
from .test_console_bad_input import Client, Errors

LOCK_WAIT_MS = 200  # the console's busy timeout in these tests: the lock outlasts it


def release(p: subprocess.Popen) -> None:
    p.communicate("", timeout=60)


class Office:
    """An office config with a [console], its accounts, and the console served by uvicorn."""

    def __init__(self, tmp: Path, console: str = ""):
        self.cfg: config_mod.Config = make_config(
            tmp,
            '[console]\nusers_db = "console.db"\nsecret_file = "console.secret"\n'
            'consent_version = "2026-01"\nnotice_file = "notice-en.txt"\n' + console,
        )
        self.notice = self.cfg.resolve(self.cfg.console.notice_file)
        self.notice.write_text("We keep a face template (never a photo) to let you in.")
        self.users_db = self.cfg.resolve(self.cfg.console.users_db)
        self.audit_db = self.cfg.resolve(self.cfg.audit.path)
        self.gallery_db = self.cfg.resolve(self.cfg.gallery.db)
        self.gallery_key = self.cfg.resolve(self.cfg.gallery.key_file)
        store = UserStore(self.users_db)
        store.add("ada", "admin", PASSWORD)
        store.add("sam", "supervisor", PASSWORD)
        store.add("rita", "steward", PASSWORD)
        store.close()
        init_key(self.gallery_key)
        self.app = build_app(self.cfg)
        self.con = self.app.state.console

    def user(self, name: str):
        store = UserStore(self.users_db)
        try:
            return store.get(name)
        finally:
            store.close()

    def audit_details(self, kind: str | None = None) -> list[str]:
        with AuditLog(self.audit_db) as a:
            return [r.detail for _, r, _ in a.rows(kind=kind)]

    def audit_records(self, kind: str) -> list[AuditRecord]:
        with AuditLog(self.audit_db) as a:
            return [r for _, r, _ in a.rows(kind=kind)]

    def people(self) -> list[str]:
        if not self.gallery_db.exists():
            return []
        with Gallery(self.gallery_db, load_key(self.gallery_key), create=False) as g:
            return [p.id for p in g.people()]

    def add_person(self, name: str = "Ondine Visitor") -> str:
        rng = np.random.default_rng(7)
        emb = rng.standard_normal((3, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        with Gallery(self.gallery_db, load_key(self.gallery_key)) as g:
            return g.add_person(name, Consent("2026-01"), list(emb), "m", "v")

    def fill_audit(self) -> None:
        """The console's audit connection on a full disk: SQLite's page limit, filled."""
        with self.con.office.audit() as a:
            conn = a.conn
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={pages}")
            filler = AuditRecord(time.time(), "x", "system", reason="filler", detail="x" * 200)
            with pytest.raises(AuditError, match="full"):
                for _ in range(10_000):  # the pages' free room: then the disk is full
                    a.record(filler)

    def room_again(self) -> None:
        with self.con.office.audit() as a:
            a.conn.execute("PRAGMA max_page_count=1073741823")


def tracebacks(seen: Errors) -> list[str]:
    """What the server logged of an exception no route answered (a 500, a dead stream)."""
    return [
        r.getMessage()
        for r in seen.records
        if r.exc_info or (r.name == "uvicorn.error" and r.levelno >= logging.ERROR)
    ]


@pytest.fixture
def office(tmp_path):
    """The office and its console under uvicorn; what the server logged is collected."""
    with Errors.collected() as seen:
        o = Office(tmp_path)
        with Served(o.app) as served:
            o.port = served.port
            o.seen = seen
            yield o
            assert tracebacks(seen) == []  # a 500 logs its traceback


def gone(c: Client) -> bool:
    """The client's session no longer opens a page (sent to the login)."""
    st, _ = c.req("GET", "/users")
    return st == 303


def audit_connection(office: Office):
    with office.con.office.audit() as a:
        return a


# --- staff accounts: a change the audit log cannot record is not made ----------------------------


@pytest.mark.parametrize(
    "path, fields",
    [
        ("/users/rita", {"role": "supervisor"}),
        ("/users/rita", {"disabled": "yes"}),
        ("/users", {"name": "nova", "role": "admin", "password": PASSWORD, "lang": "en"}),
    ],
    ids=["role", "lock", "add"],
)
def test_a_user_change_the_full_audit_log_cannot_record_is_not_made(office, path, fields):
    """The role was changed (the account locked, a new admin added) and then the record failed:
    the page said "nothing was written" while the change stood, unrecorded. Now the change and
    its record land together or not at all, and once there is room the same form works."""
    c = Client(office.port).login("ada")
    before = office.user("rita"), office.user("nova")
    office.fill_audit()
    st, page = c.form(path, fields)
    assert st == 400
    assert b"disk is full" in page and b"free disk space" in page
    assert (office.user("rita"), office.user("nova")) == before
    assert not any("rita" in d or "nova" in d for d in office.audit_details("console"))
    office.room_again()
    st, page = c.form(path, fields)
    assert st == 200, page
    assert (office.user("rita"), office.user("nova")) != before
    assert any("rita" in d or "nova" in d for d in office.audit_details("console"))


def test_a_user_change_waiting_on_a_locked_audit_log_holds_up_no_other_page(office):
    """Another process holding the office audit log's write lock while an admin changes a role:
    the change (its record inside its transaction) held the accounts while it waited, and every
    page's session check waited behind it, on the server's event loop: the console hung for
    everyone until the lock went. Now the change waits alone, and lands with its record after."""
    import threading

    ada = Client(office.port).login("ada")
    rita = Client(office.port).login("rita")
    with office.con.office.audit() as a:
        a.conn.execute("PRAGMA busy_timeout=600000")  # the lock goes first, however slow
    holder = hold_write_lock(office.audit_db)
    answered: list[int] = []
    t = threading.Thread(
        target=lambda: answered.append(ada.form("/users/sam", {"role": "admin"})[0])
    )
    try:
        t.start()
        wait_for(office.con.office._audit_lock.locked, 60, "the change to wait on the lock")
        st, _ = rita.req("GET", "/lanes")  # answered while the lock is still held
        assert st == 200
        assert answered == []
        assert office.user("sam").role == "supervisor"  # not yet: it waits for its record
    finally:
        release(holder)
        t.join(120)
    assert answered == [200]
    assert office.user("sam").role == "admin"
    assert "by ada: role of sam set to admin" in office.audit_details("console")


@pytest.mark.parametrize("fault", ["locked", "read_only"])
def test_staff_accounts_that_cannot_be_written_are_an_error_page_with_the_fix(office, fault):
    """The accounts file locked by another process past the busy timeout, or read-only (a card
    remounted so; SQLite's query_only on the console's connection): adding a user, changing a
    role or a language was a 500 (sqlite3's exception escaped the route). Now each is a page
    with the fix, nothing is recorded, and afterwards the same changes work."""
    c = Client(office.port).login("ada")
    conn = office.con.users.writer  # the connection changes are written on
    holder = None
    if fault == "locked":
        conn.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
        holder = hold_write_lock(office.users_db)
        said = b"another process holds the file"
    else:
        conn.execute("PRAGMA query_only=ON")
        said = b"writable"
    recorded = office.audit_details("console")
    add = {"name": "nova" + "x" * 30, "role": "admin", "password": PASSWORD, "lang": "en"}
    try:
        for path, fields in (
            ("/users", add),
            ("/users/rita", {"role": "admin"}),
            ("/me/lang", {"lang": "zh-CN"}),
        ):
            st, page = c.form(path, fields)
            assert st == 400, (path, page)
            assert said in page, path
        assert office.user("rita").role == "steward"
        assert office.user("ada").lang == "en"
        assert office.audit_details("console") == recorded
    finally:
        if holder is not None:
            release(holder)
    conn.execute("PRAGMA query_only=OFF")
    st, _ = c.form("/users/rita", {"role": "admin"})
    assert st == 200
    assert office.user("rita").role == "admin"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_staff_accounts_deleted_or_replaced_underneath_are_followed(office, tmp_path, how):
    """The accounts file restored from a backup (replaced) or deleted and made again with
    `console adduser`: the console went on reading the file no longer on disk, so the accounts
    on disk could not log in and the ones removed from it still could. Now the console reads the
    file at users_db as it is."""
    ada = Client(office.port).login("ada")
    assert not gone(ada)
    if how == "deleted":
        office.users_db.unlink()  # its write-ahead log and index stay, as after `rm`
        target = office.users_db
    else:
        target = tmp_path / "restored.db"
    store = UserStore(target)  # what `edge-gate console adduser` does
    store.add("nova", "admin", PASSWORD)
    store.add("orla", "steward", PASSWORD)
    store.close()
    if how == "replaced":
        os.replace(target, office.users_db)
    assert gone(ada)  # ada is no account in the file on disk
    nova = Client(office.port).login("nova")
    st, page = nova.req("GET", "/users")
    assert st == 200
    assert b"nova" in page and b">ada<" not in page
    st, _ = nova.form("/users/orla", {"role": "supervisor"})  # written to the file on disk
    assert st == 200
    assert office.user("orla").role == "supervisor"


def test_staff_accounts_overwritten_in_place_are_read_again(office, tmp_path):
    """The accounts file restored from an older backup with `cp` over it (the same file,
    other contents) while the console ran: the console checked only the file's inode, so it
    went on reading the accounts no longer on disk (an account the backup lacks still logged
    in, through the write-ahead log the restore left in place). Now it reads the restored
    accounts, and its next change is written into them."""
    copy_db(office.users_db, tmp_path / "backup.db")  # ada, sam and rita
    ada = Client(office.port).login("ada")
    store = UserStore(office.users_db)  # what `edge-gate console adduser` does
    store.add("nova", "steward", PASSWORD)
    store.close()
    st, page = ada.req("GET", "/users")
    assert st == 200 and b">nova<" in page
    inode = office.users_db.stat().st_ino
    shutil.copyfile(tmp_path / "backup.db", office.users_db)  # `cp backup.db console.db`
    assert office.users_db.stat().st_ino == inode
    st, page = ada.req("GET", "/users")
    assert st == 200
    assert b">nova<" not in page and b">rita<" in page
    assert office.con.users.authenticate("nova", PASSWORD) is None
    st, _ = ada.form("/users/rita", {"role": "supervisor"})
    assert st == 200
    assert office.user("rita").role == "supervisor"
    assert office.user("nova") is None


# --- the audit log: deleted or replaced, full at a login ------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_audit_log_deleted_or_replaced_underneath_gets_the_console_records(
    office, tmp_path, how
):
    """The office audit log deleted (to free a disk) or replaced (restored from a backup) while
    the console ran: its one connection went on writing every login, change and erasure record
    into the file no longer on disk, lost at the next start. Now it follows the file."""
    Client(office.port).login("ada")
    assert office.audit_details("console") == ["by ada: logged in"]
    if how == "deleted":
        office.audit_db.unlink()  # its write-ahead log and index stay, as after `rm`
    else:
        with AuditLog(tmp_path / "backup.db") as b:
            b.record(AuditRecord(time.time(), "test-gate", "system", reason="backup"))
        os.replace(tmp_path / "backup.db", office.audit_db)
    Client(office.port).login("sam")
    c = Client(office.port).login("ada")
    st, _ = c.form("/users/rita", {"role": "supervisor"})
    assert st == 200
    details = office.audit_details("console")
    assert "by sam: logged in" in details
    assert "by ada: role of rita set to supervisor" in details
    with AuditLog(office.audit_db) as a:
        assert a.verify().ok  # one chain, in the file on disk
        kept = [r.reason for _, r, _ in a.rows(kind="system")]
    if how == "replaced":
        assert "backup" in kept  # the restored file's own records are still there


def _another_process_records(db: Path) -> str:
    """One record by another process at the office (its sync), as it opens the file at `db`."""
    code = (
        "import sys, time\n"
        "from edge.gate.audit import AuditLog, AuditRecord\n"
        "try:\n"
        f"    with AuditLog({str(db)!r}) as a:\n"
        "        a.record(AuditRecord(time.time(), 'office', 'fleet', reason='sync'))\n"
        "    print('ok')\n"
        "except Exception as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()


def test_an_audit_log_overwritten_in_place_is_read_again(office, tmp_path):
    """The office audit log restored from a backup with `cp` over it (the same file, other
    contents) while the console ran: its connection went on showing the records no longer on
    disk (SQLite's data_version sees commits, not a file written over), and its next record
    wrote them back over the restored log. Now the console reads the restored log and chains
    its records onto it."""
    c = Client(office.port).login("ada")
    with AuditLog(tmp_path / "backup.db") as b:
        b.record(AuditRecord(time.time(), "test-gate", "system", reason="backup", detail="kept"))
    inode = office.audit_db.stat().st_ino
    shutil.copyfile(tmp_path / "backup.db", office.audit_db)  # what `cp backup.db audit.db` does
    assert office.audit_db.stat().st_ino == inode
    st, page = c.req("GET", "/audit")
    assert st == 200
    assert b"kept" in page and b"logged in" not in page
    Client(office.port).login("sam")
    with AuditLog(office.audit_db) as a:
        assert a.verify().ok
        assert [r.reason for _, r, _ in a.rows()] == ["backup", "login"]


def test_the_consoles_own_records_are_not_taken_for_an_overwrite(tmp_path, caplog):
    """Two records of one size in a row leave the write-ahead log with the same frame counts
    at each checkpoint: the console took its own checkpoint's change of the file for a restore
    written over it ("audit_moved ... overwritten in place"), an alarm and a reconnection at
    every other record of ordinary use."""
    o = Office(tmp_path)
    office = o.con.office
    with caplog.at_level(logging.INFO, logger="edge.console"):
        for i in range(6):
            office.record("ada", "console", f"logged in {i}", reason="login")
            with office.audit() as a:
                assert a.verify().ok
    moved = [r.getMessage() for r in caplog.records if "audit_moved" in r.getMessage()]
    assert moved == []
    assert len(o.audit_details()) == 6
    # a restore written over it is still seen (test_an_audit_log_overwritten_in_place_...)
    with AuditLog(tmp_path / "backup.db") as b:
        b.record(AuditRecord(time.time(), "test-gate", "system", reason="backup", detail="kept"))
    shutil.copyfile(tmp_path / "backup.db", o.audit_db)
    with caplog.at_level(logging.INFO, logger="edge.console"), office.audit() as a:
        assert [r.reason for _, r, _ in a.rows()] == ["backup"]
    assert any("overwritten in place" in r.getMessage() for r in caplog.records)


def test_an_audit_log_deleted_underneath_is_let_go_without_waiting_for_a_record(office):
    """The office audit log deleted while the console ran: the console held the deleted file
    open until its next record (hours on a quiet evening), and meanwhile the office's sync,
    opening the log again at its path, failed 'disk I/O error' on the log and index the held
    file keeps at the path. Now the console lets go of a moved log within seconds."""
    Client(office.port).login("ada")
    office.audit_db.unlink()  # its write-ahead log and index stay, as after `rm`
    tries: list[str] = []

    def recorded() -> bool:
        tries.append(_another_process_records(office.audit_db))
        return tries[-1] == "ok"

    wait_for(recorded, 15, "another process to record into the audit log made again")
    Client(office.port).login("sam")  # the console follows to the file now there
    with AuditLog(office.audit_db) as a:
        assert a.verify().ok
        assert [r.reason for _, r, _ in a.rows()] == ["sync", "login"]


def test_a_login_the_full_audit_log_cannot_record_is_refused_with_the_fix(office):
    """A login whose record failed was a 500 (the login form is outside the routes' guard):
    staff saw 'Internal Server Error'. Now the form says why and no session is issued; with
    room again the login works."""
    office.fill_audit()
    c = Client(office.port)
    _, page = c.req("GET", "/login")
    token = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
    st, page = c.form("/login", {"user": "sam", "password": PASSWORD, "csrf": token}, False)
    assert st == 503
    assert b"free disk space" in page
    assert "eg_session" not in c.cookies
    office.room_again()
    c = Client(office.port).login("sam")
    assert not gone(c)


@pytest.mark.parametrize("what", ["verify", "export"])
def test_an_audit_action_waiting_on_a_locked_audit_log_holds_up_no_other_page(office, what):
    """Another process holding the office audit log's write lock: an audit verify or export
    waited for it (recording itself) on the server's event loop, so every other page, for every
    member of staff, hung until the lock went. Now the wait is the one request's own."""
    import threading

    c = Client(office.port).login("sam")
    other = Client(office.port).login("rita")
    with office.con.office.audit() as a:
        a.conn.execute("PRAGMA busy_timeout=600000")  # the lock goes first, however slow
    holder = hold_write_lock(office.audit_db)
    answered: list[int] = []

    def audit_action() -> None:
        if what == "verify":
            answered.append(c.form("/audit/verify", {})[0])
        else:
            answered.append(c.req("GET", "/audit/export.csv")[0])

    t = threading.Thread(target=audit_action)
    try:
        t.start()
        wait_for(office.con.office._audit_lock.locked, 60, "the audit action to wait on the lock")
        st, _ = other.req("GET", "/lanes")  # answered while the lock is still held
        assert st == 200
        assert answered == []  # the audit action is still waiting on the lock
    finally:
        release(holder)
        t.join(120)
    assert answered == [200]
    assert any(d.startswith(f"by sam: audit {what}") for d in office.audit_details("console"))


# --- erasure ------------------------------------------------------------------------------------


def test_a_forget_the_full_audit_log_cannot_record_erases_nothing(office):
    """The person was erased and then the record failed: an erasure with no trace in the audit
    log, and a page saying "nothing was written". Now the erasure waits for its record: nothing
    is erased, the page says why, and with room again the same form erases and records."""
    pid = office.add_person()
    c = Client(office.port).login("sam")
    office.fill_audit()
    st, page = c.form(f"/people/{pid}/forget", {"reason": "deletion_request"})
    assert st == 400
    assert b"free disk space" in page
    assert office.people() == [pid]
    assert office.audit_details("deletion") == []
    with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
        assert g.forget_state().reason == ""  # not taken for a restored older copy
        assert [p.name for p in g.people()] == ["Ondine Visitor"]  # every row still opens
    office.room_again()
    st, _ = c.form(f"/people/{pid}/forget", {"reason": "deletion_request"})
    assert st == 303
    assert office.people() == []
    assert office.audit_details("deletion") == ["by sam: key destroyed; file scrubbed"]


def test_the_last_admin_cannot_demote_or_lock_themselves(office):
    """The only admin made themselves a steward (or locked their account): no one could then
    change a role or unlock an account, in the console or from the command line."""
    c = Client(office.port).login("ada")
    for fields in ({"role": "steward"}, {"disabled": "yes"}):
        st, page = c.form("/users/ada", fields)
        assert st == 400 and b"last admin" in page, page[-400:]
    assert office.user("ada").role == "admin" and not office.user("ada").disabled
    assert c.form("/users/sam", {"role": "admin"})[0] == 200
    assert c.form("/users/ada", {"role": "supervisor"})[0] == 200  # another admin is left
    assert office.user("ada").role == "supervisor"


def test_a_forget_says_what_was_done_and_keeps_hidden_characters_out_of_the_log(office):
    """With no fleet, a forget of someone not at the office said "Deletion published to every
    lane." and recorded "sent"; a person id or reason holding a NUL or a right-to-left override
    went into the audit chain as it was."""
    pid = office.add_person()
    c = Client(office.port).login("sam")
    for path, reason, said in (
        ("/people/P-\u202egnp.exe/forget", "deletion_request", b"not printable"),
        ("/people/P-x\nfake/forget", "deletion_request", b"not printable"),
        (f"/people/{pid}/forget", "erase\x00 me", b"control character"),
        (f"/people/{pid}/forget", "asked \u202eyb ti", b"control character"),
    ):
        st, page = c.form(quote(path), {"reason": reason})
        assert st == 400 and said in page, page[-400:]
    assert office.people() == [pid] and office.audit_details("deletion") == []
    for who, said in ((pid, b"Erased at the office."), ("P-nobody", b"No such person")):
        st, _ = c.form(f"/people/{who}/forget", {"reason": "deletion_request"})
        assert st == 303 and c.location
        st, page = c.req("GET", c.location)
        assert said in page and b"published" not in page, page[-600:]
    assert office.people() == []
    # that it happened and why, never who: as the record of a person erased here
    assert office.audit_details("deletion")[-1] == (
        "by sam: not at the office; nothing sent (no fleet)"
    )


def test_a_forget_the_locked_gallery_refuses_after_its_record_says_not_done(office, monkeypatch):
    """The deletion is recorded first, then erased in the gallery's own transaction (joined to
    the record's, a rollback left the forget list ahead of the file: the whole gallery refused
    as a restored copy). A gallery another process holds past the busy timeout: the person
    stays, whole, and a second record says the erasure was not done."""
    from edge import db as db_mod

    pid = office.add_person()
    c = Client(office.port).login("sam")
    monkeypatch.setitem(db_mod.connect.__kwdefaults__, "timeout_s", LOCK_WAIT_MS / 1000)
    holder = hold_write_lock(office.gallery_db)
    try:
        st, page = c.form(f"/people/{pid}/forget", {"reason": "deletion_request"})
    finally:
        release(holder)
    assert st == 400
    assert b"another process holds the file" in page
    assert office.people() == [pid]
    done, undone = office.audit_details("deletion")
    assert done == "by sam: key destroyed; file scrubbed" and undone.startswith("by sam: not done")
    with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
        assert g.forget_state().reason == ""
        assert [p.name for p in g.people()] == ["Ondine Visitor"]
    st, _ = c.form(f"/people/{pid}/forget", {"reason": "deletion_request"})
    assert st == 303
    assert office.people() == []


@pytest.mark.parametrize("fault", ["key_gone", "gallery_damaged"])
def test_a_reveal_the_gallery_cannot_answer_says_why_not_no_person(office, fault):
    """The gallery's key file deleted, or the gallery damaged, under the running console: the
    decisions page's reveal said "no person P-... in the office gallery", sending staff looking
    for a person who is there. Now it says what is wrong and its fix; nothing is recorded."""
    import json

    pid = office.add_person()
    c = Client(office.port).login("sam")
    if fault == "key_gone":
        office.gallery_key.unlink()
        said = b"restore the key from its backup"
    else:
        office.gallery_db.write_bytes(b"not a database " * 512)
        for p in office.gallery_db.parent.glob(office.gallery_db.name + "-*"):
            p.unlink()
        said = b"restore it from backup"
    body = json.dumps({"person": pid})
    headers = {"X-CSRF-Token": c.csrf, "Content-Type": "application/json"}
    st, out = c.req("POST", "/api/reveal", body, headers)
    assert st == 400
    assert said in out and b"no person" not in out
    assert office.audit_details("reveal") == []
    st, page = c.req("GET", "/people")  # the page says it too, and the console still serves
    assert st == 400 and said in page


def test_an_accounts_file_damaged_underneath_refuses_every_page_with_the_fix(office, tmp_path):
    """A damaged copy put in place of the accounts file while the console runs: every page
    answers 503 with the fix (restore it from its backup), never a 500, and the login page
    still shows; the good file put back, the same session works again."""
    c = Client(office.port).login("ada")
    good = tmp_path / "good.db"
    store = UserStore(office.users_db)
    store.conn.execute("VACUUM INTO ?", (str(good),))  # a backup, as `sqlite3 .backup` makes
    store.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 512)
    os.replace(junk, office.users_db)
    for path in ("/users", "/people", "/api/people/P-1"):
        st, page = c.req("GET", path)
        assert st == 503, path
        assert b"from its backup" in page
    st, page = Client(office.port).req("GET", "/login")
    assert st == 200
    os.replace(good, office.users_db)
    assert not gone(c)


@pytest.mark.parametrize("action", ["revoke", "unrevoke"])
def test_a_revocation_change_the_full_audit_log_cannot_record_is_undone(office, action):
    """The revocation list was changed (a ticket refused, or let in again, at every gate that
    reloads it) and then the record failed: a change with no trace. Now the list is put back as
    it was, the page says why, and with room again the same form works and is recorded."""
    from edge import tickets as tk

    lst = office.cfg.resolve(office.cfg.tickets.revocation_list)
    if action == "unrevoke":
        tk.revoke(lst, ["T-STOLEN"])
    before = tk.load_revocations(lst)
    c = Client(office.port).login("sam")
    office.fill_audit()
    st, page = c.form(f"/tickets/{action}", {"ids": "T-STOLEN"})
    assert st == 400
    assert b"free disk space" in page
    assert tk.load_revocations(lst) == before
    assert office.audit_details(action) == []
    office.room_again()
    st, _ = c.form(f"/tickets/{action}", {"ids": "T-STOLEN"})
    assert st == 200
    assert tk.load_revocations(lst) != before
    assert len(office.audit_details(action)) == 1


# --- enrolment ----------------------------------------------------------------------------------


def test_an_enrolment_whose_consent_notice_is_gone_is_refused_with_the_fix(office):
    """The consent notice file deleted (or unreadable) while the console runs: the enrolment
    form was a 500, its fingerprint unreadable. Now it is refused with the fix before anyone is
    stored, and with the notice back the kiosk works."""
    c = Client(office.port).login("sam")
    _, page = c.req("GET", "/enroll")
    cid = re.search(rb'data-cid="([^"]+)"', page).group(1).decode()
    text = office.notice.read_text()
    office.notice.unlink()
    form = {"name": "Kiosk Visitor", "consent": "yes", "consent_version": "2026-01",
            "notice_lang": "en", "cid": cid}  # fmt: skip
    st, page = c.form("/enroll", form)
    assert st == 400
    assert b"consent notice" in page and b"restore" in page
    assert office.people() == [] and office.audit_details("enroll") == []
    office.notice.write_text(text)
    st, page = c.form("/enroll", form)  # the notice is read again: only the faces are missing
    assert st == 400 and b"consent notice" not in page


@pytest.mark.fixtures
def test_an_enrolment_the_full_audit_log_cannot_record_leaves_no_person(office, fixtures):
    """The person was stored (and the kiosk's faces dropped) and then the record failed: an
    enrolment with no consent record in the audit log. Now nothing is stored, the page says why,
    the capture is kept, and with room again the same form enrolls once and records it."""
    from .test_console_bad_input import _capture

    c = Client(office.port).login("sam")
    cid = _capture(c, sorted((fixtures / "faces" / "df_B_katy_perry").iterdir())[:5])
    form = {"name": "Kiosk Visitor", "consent": "yes", "consent_version": "2026-01",
            "notice_lang": "en", "cid": cid}  # fmt: skip
    there = office.add_person()
    office.fill_audit()
    st, page = c.form("/enroll", form)
    assert st == 400
    assert b"free disk space" in page
    assert office.people() == [there]
    assert office.audit_details("enroll") == []
    with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
        assert g.forget_state().reason == ""
        assert [p.name for p in g.people()] == ["Ondine Visitor"]  # every row still opens
    office.room_again()
    st, _ = c.form("/enroll", form)
    assert st == 303
    (pid,) = set(office.people()) - {there}
    assert [r.subject for r in office.audit_records("enroll")] == [pid]


@pytest.mark.fixtures
def test_an_enrolment_into_a_gallery_deleted_underneath_is_refused_with_the_fix(
    office, fixtures, tmp_path
):
    """The office gallery deleted while the console ran: the next enrolment made a new, empty
    gallery in its place without a word, and every person enrolled before was gone from the
    office. Now the enrolment (and the People page) says the gallery is gone and how to restore
    it or start anew, nothing is made, and with the gallery restored the same form enrolls."""
    from .test_console_bad_input import _capture

    c = Client(office.port).login("sam")
    there = office.add_person()
    st, page = c.req("GET", "/people")
    assert st == 200 and b"Ondine Visitor" in page
    backup = tmp_path / "gallery-backup.db"
    shutil.copyfile(office.gallery_db, backup)
    office.gallery_db.unlink()
    cid = _capture(c, sorted((fixtures / "faces" / "df_B_katy_perry").iterdir())[:5])
    form = {"name": "Kiosk Visitor", "consent": "yes", "consent_version": "2026-01",
            "notice_lang": "en", "cid": cid}  # fmt: skip
    st, page = c.form("/enroll", form)
    assert st == 400
    assert b"deleted" in page and b"backup" in page and b"start anew" in page
    assert not office.gallery_db.exists()
    assert office.audit_details("enroll") == []
    st, page = c.req("GET", "/people")
    assert st == 400 and b"backup" in page
    shutil.copyfile(backup, office.gallery_db)
    st, _ = c.form("/enroll", form)  # the capture was kept
    assert st == 303
    (pid,) = set(office.people()) - {there}
    assert [r.subject for r in office.audit_records("enroll")] == [pid]


# --- publishing to the lanes: the issuer key and the office's outbox ----------------------------


@pytest.fixture(scope="module")
def park(tmp_path_factory):
    """An office with a [fleet] section, its roster of two lanes and a real broker (no sync
    runs: what the console publishes stays queued), the console under uvicorn."""
    from edge.lab.broker import Mosquitto

    from .console_harness import USERS, add_users, make_park, need_mosquitto

    need_mosquitto()
    root = tmp_path_factory.mktemp("park")
    with Mosquitto(root / "mosquitto", users=USERS) as broker:
        p = make_park(root, broker.url)
        add_users(p.office_cfg)
        with Served(build_app(p.office_cfg)) as served:
            yield p, served.port


def park_person(cfg: config_mod.Config) -> str:
    rng = np.random.default_rng(11)
    emb = rng.standard_normal((3, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    db, key = cfg.resolve(cfg.gallery.db), load_key(cfg.resolve(cfg.gallery.key_file))
    with Gallery(db, key) as g:
        return g.add_person("Park Visitor", Consent("2026-01"), list(emb), "m", "v")


def park_people(cfg: config_mod.Config) -> list[str]:
    db, key = cfg.resolve(cfg.gallery.db), load_key(cfg.resolve(cfg.gallery.key_file))
    with Gallery(db, key, create=False) as g:
        return [p.id for p in g.people()]


def park_records(cfg: config_mod.Config, kind: str) -> list[AuditRecord]:
    with AuditLog(cfg.resolve(cfg.audit.path)) as a:
        return [r for _, r, _ in a.rows(kind=kind)]


def test_an_issuer_key_gone_while_the_console_runs_refuses_override_and_forget_whole(park):
    """The issuer key deleted (or unreadable) under the running console: an override was
    recorded as sent and then failed to sign, so the log held an override that never went;
    a forget erased and recorded the person and then could not tell the lanes. Now the key is
    loaded first: both are refused with the key's fix, nothing recorded, nothing erased (and a
    revocation is not made at the office alone either)."""
    from edge import tickets as tk

    p, port = park
    cfg = p.office_cfg
    lst = cfg.resolve(cfg.tickets.revocation_list)
    pid = park_person(cfg)
    c = Client(port).login("sam")
    overrides, deletions = park_records(cfg, "override"), park_records(cfg, "deletion")
    moved = p.priv.with_name(p.priv.name + ".away")
    p.priv.rename(moved)
    try:
        st, page = c.form("/lanes/lane1/override", {"reason": "pram stuck"})
        assert st == 400
        assert b"issuer key" in page and b"fix:" in page
        st, page = c.form(f"/people/{pid}/forget", {"reason": "deletion_request"})
        assert st == 400
        assert b"issuer key" in page
        st, page = c.form("/tickets/revoke", {"ids": "T-KEYLESS"})
        assert st == 400
        assert b"issuer key" in page
        assert park_people(cfg) == [pid]
        assert park_records(cfg, "override") == overrides
        assert park_records(cfg, "deletion") == deletions
        assert park_records(cfg, "revoke") == []
        assert "T-KEYLESS" not in tk.load_revocations(lst)
    finally:
        moved.rename(p.priv)
    st, _ = c.form(f"/people/{pid}/forget", {"reason": "deletion_request"})
    assert st == 303
    assert pid not in park_people(cfg)
    assert len(park_records(cfg, "deletion")) == len(deletions) + 1


def test_an_override_the_full_outbox_cannot_queue_is_recorded_as_not_sent(park, monkeypatch):
    """The office's fleet store on a full disk as the override is queued (its write raises as
    SQLite's does there): the override's record, written first so no lane opens unrecorded,
    stood alone: an override the log says was sent and never was. Now a second record says it
    was not sent, and the page says why."""
    import edge.fleet.office as office_mod
    from edge.errors import FleetStateError

    def full(*a, **kw):
        raise FleetStateError(
            f"fleet state {a[0].fleet.state_db}: database or disk is full; nothing was written",
            "free disk space and retry",
        )

    p, port = park
    cfg = p.office_cfg
    c = Client(port).login("sam")
    before = park_records(cfg, "override")
    monkeypatch.setattr(office_mod, "_queue", full)
    st, page = c.form("/lanes/lane2/override", {"reason": "wheelchair gate"})
    monkeypatch.undo()
    assert st == 400
    assert b"free disk space" in page
    new = park_records(cfg, "override")[len(before) :]
    assert [r.reason for r in new] == ["override", "not_sent"]
    assert new[0].subject == new[1].subject
    assert "not sent" in new[1].detail and "by sam" in new[1].detail
    st, _ = c.form("/lanes/lane2/override", {"reason": "wheelchair gate"})  # room again
    assert st == 303


@pytest.mark.fixtures
def test_an_enrolment_while_another_process_forgets_someone_stores_a_whole_person(
    office, fixtures, monkeypatch
):
    """`edge-gate forget` of someone else committing between the kiosk enrolment's read of the
    gallery and its write: the forget moved the gallery to a new data key, and the new person's
    key was wrapped under the old one: stored, recorded, and never matched again (half a
    person). Now the enrolment's reads and write are one transaction: the forget waits for it
    (or comes first and is followed), and the person opens."""
    import threading

    from .test_console_bad_input import _capture

    other = office.add_person("Someone Else")
    c = Client(office.port).login("sam")
    cid = _capture(c, sorted((fixtures / "faces" / "df_B_katy_perry").iterdir())[:5])
    add_people = Gallery.add_people
    forgetting: list[threading.Thread] = []

    def forget_other() -> None:  # another process: its own connection, key and generation
        with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
            g.conn.execute("PRAGMA busy_timeout=600000")  # waits out the enrolment, however slow
            assert g.forget(other)

    def meanwhile(self, *a, **kw):
        if not forgetting:
            t = threading.Thread(target=forget_other)
            forgetting.append(t)
            t.start()
            t.join(5)  # done, unless it waits for this enrolment's write
        return add_people(self, *a, **kw)

    monkeypatch.setattr(Gallery, "add_people", meanwhile)
    form = {"name": "Kiosk Visitor", "consent": "yes", "consent_version": "2026-01",
            "notice_lang": "en", "cid": cid}  # fmt: skip
    st, _ = c.form("/enroll", form)
    forgetting[0].join(60)
    assert st == 303
    with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
        people = {p.id: p for p in g.people()}
    assert other not in people
    (p,) = people.values()
    assert p.intact and p.name == "Kiosk Visitor"


# --- the fleet feed: the office's store under the decisions page ---------------------------------


def _decision(rid: int, subject: str, prev: str = "") -> dict:
    return {"id": rid, "prev": prev or "0" * 64, "hash": f"{rid:064x}", "t": time.time(),
            "gate": "lane1", "kind": "decision", "decision": "grant", "via": "ticket",
            "subject": subject, "reason": "ok"}  # fmt: skip


def _store_decisions(path: Path, subjects: list[str], epoch: str = "e1") -> None:
    """What the office's sync keeps of lane1's records (its own process, its own connection)."""
    from edge.fleet.officestore import OfficeStore
    from edge.fleet.state import FleetState

    st = FleetState(path)
    try:
        OfficeStore(st).store_audit(
            "lane1", epoch, [_decision(i + 1, s) for i, s in enumerate(subjects)], time.time()
        )
    finally:
        st.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_the_decisions_feed_follows_a_fleet_store_deleted_or_replaced_underneath(tmp_path, how):
    """The office's fleet store restored from a backup, or deleted and made again by sync, while
    the console runs: the feed went on reading the file no longer on disk, so the Decisions page
    never showed another decision. Now it reads the file now there."""
    from edge.console.feed import DecisionFilter, FleetFeed

    from .console_harness import make_park

    park = make_park(tmp_path, "mqtt://127.0.0.1:1")
    cfg = park.office_cfg
    db = cfg.resolve(cfg.fleet.state_db)
    _store_decisions(db, ["T-OLD"])
    feed = FleetFeed(cfg)
    try:
        feed.poll()
        assert [r["subject"] for r in feed.decisions(DecisionFilter())] == ["T-OLD"]
        if how == "deleted":
            db.unlink()  # its write-ahead log and index stay, as after `rm`
            _store_decisions(db, ["T-NEW-1", "T-NEW-2"])
        else:
            _store_decisions(tmp_path / "restored.db", ["T-NEW-1", "T-NEW-2"])
            os.replace(tmp_path / "restored.db", db)
        feed.poll()
        shown = [r["subject"] for r in feed.decisions(DecisionFilter())]
        assert shown == ["T-NEW-2", "T-NEW-1"]
    finally:
        feed.close()


def test_the_decisions_feed_reads_a_fleet_store_overwritten_in_place(tmp_path):
    """The office's fleet store restored from an older backup with `cp` over it (sync
    stopped, its log emptied into the file and cut to nothing) while the console runs: the
    feed checked only the inode, so it went on showing decisions the file no longer holds,
    and missed the ones stored after the restore (their row numbers were ones it had read).
    Now it reads the file as restored; a file its writer's checkpoint wrote over, still
    holding the rows read, is not read twice."""
    from edge.console.feed import DecisionFilter, FleetFeed

    from .console_harness import make_park

    park = make_park(tmp_path, "mqtt://127.0.0.1:1")
    cfg = park.office_cfg
    db = cfg.resolve(cfg.fleet.state_db)
    _store_decisions(db, ["T-OLD"])
    copy_db(db, tmp_path / "backup.db")
    _store_decisions(db, ["T-GONE"], "e2")
    feed = FleetFeed(cfg)
    try:
        feed.poll()
        assert [r["subject"] for r in feed.decisions(DecisionFilter())] == ["T-GONE", "T-OLD"]
        _store_decisions(db, ["T-MORE"], "e4")
        feed.poll()
        seen, version = db.stat(), feed.version
        with contextlib.closing(sqlite3.connect(db)) as sync:  # sync's log emptied into the file
            sync.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert (db.stat().st_size, db.stat().st_mtime_ns) != (seen.st_size, seen.st_mtime_ns)
        feed.poll()  # the file written in place, holding what was read: nothing read twice
        assert feed.version == version == 3
        assert [r["subject"] for r in feed.decisions(DecisionFilter())][0] == "T-MORE"
        with contextlib.closing(sqlite3.connect(db)) as sync:  # sync stopped: its log emptied
            sync.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        inode = db.stat().st_ino
        shutil.copyfile(tmp_path / "backup.db", db)  # `cp backup.db fleet.db`
        assert db.stat().st_ino == inode
        _store_decisions(db, ["T-AFTER"], "e3")  # sync started again on the restored file
        feed.poll()
        shown = [r["subject"] for r in feed.decisions(DecisionFilter())]
        assert shown == ["T-AFTER", "T-OLD"]
    finally:
        feed.close()


def test_a_damaged_fleet_store_is_said_once_and_the_feed_reads_again_when_restored(
    tmp_path, caplog
):
    """A damaged fleet store: the feed logged a warning ten times a second for as long as it
    lasted, and a console started on it did not start. Now the failure is said once, the
    header shows the fleet as not connected, and a good file put back is read."""
    from edge.console.feed import DecisionFilter, FleetFeed

    from .console_harness import make_park

    park = make_park(tmp_path, "mqtt://127.0.0.1:1")
    cfg = park.office_cfg
    db = cfg.resolve(cfg.fleet.state_db)
    (tmp_path / "junk").write_bytes(b"not a database " * 512)
    os.replace(tmp_path / "junk", db)
    FleetFeed(cfg).start().close()  # a console starting on it starts
    feed = FleetFeed(cfg)
    try:
        with caplog.at_level(logging.INFO, logger="edge.console.feed"):
            n = len(caplog.records)
            for _ in range(20):
                feed.poll_once()
            assert feed.error and not feed.connected
            said = [r for r in caplog.records[n:] if "feed read failed" in r.getMessage()]
            assert len(said) == 1
            _store_decisions(tmp_path / "good.db", ["T-BACK"])
            os.replace(tmp_path / "good.db", db)
            feed.poll_once()
            assert feed.error == ""
            assert [r["subject"] for r in feed.decisions(DecisionFilter())] == ["T-BACK"]
    finally:
        feed.close()


def test_the_feed_makes_no_office_store_in_place_of_one_deleted(tmp_path):
    """The office's fleet store deleted while the office's sync still writes into it (its
    write-ahead log and index left at the path): the feed made an empty store there at its next
    read, ten times a second, sharing that log with the deleted file (the new file then fails
    'disk I/O error') and hiding that the store must be restored from backup. Now the feed says
    the store is missing, shows the fleet as not connected and makes nothing."""
    from edge.console.feed import DecisionFilter, FleetFeed
    from edge.fleet.state import FleetState

    from .console_harness import make_park

    park = make_park(tmp_path, "mqtt://127.0.0.1:1")
    cfg = park.office_cfg
    db = cfg.resolve(cfg.fleet.state_db)
    _store_decisions(db, ["T-OLD"])
    syncs = FleetState(db)  # the office's sync, its file open
    feed = FleetFeed(cfg)
    try:
        feed.poll_once()
        assert feed.error == ""
        db.unlink()
        for _ in range(3):
            feed.poll_once()
        assert not db.exists()
        assert "restore" in feed.error and not feed.connected
        assert [r["subject"] for r in feed.decisions(DecisionFilter())] == ["T-OLD"]
        _store_decisions(tmp_path / "backup.db", ["T-BACK"])
        os.replace(tmp_path / "backup.db", db)  # restored from backup
        feed.poll_once()
        assert feed.error == ""
        assert [r["subject"] for r in feed.decisions(DecisionFilter())] == ["T-BACK"]
    finally:
        feed.close()
        syncs.close()


def test_a_logout_the_full_audit_log_cannot_record_still_ends_the_sessions(office):
    """A logout whose record failed answered an error page (the sessions had ended, the browser
    kept its cookie and staff took it for a logout refused). Now the logout answers as always,
    every session of the user ends, and the record that could not be written is logged."""
    c = Client(office.port).login("sam")
    cookies = dict(c.cookies)
    office.fill_audit()
    st, _ = c.form("/logout", {})
    assert st == 303
    c.cookies = cookies  # the old cookie, kept by another tab: its session has ended
    assert gone(c)
    assert "by sam: logged out" not in office.audit_details("console")
    assert any("logout_unrecorded" in r.getMessage() for r in office.seen.records)


@pytest.mark.parametrize("cut", ["after_body", "mid_body"])
def test_a_forget_whose_client_goes_away_is_done_whole_or_not_at_all(office, cut):
    """The browser closed mid-request (a tab shut, the network gone): the erasure and its
    record are both done (the whole form had arrived) or neither (it had not), and the console
    goes on serving."""
    import socket
    from urllib.parse import urlencode

    pid = office.add_person()
    c = Client(office.port).login("sam")
    body = urlencode({"reason": "deletion_request", "csrf": c.csrf}).encode()
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    head = (
        f"POST /people/{pid}/forget HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    s = socket.create_connection(("127.0.0.1", office.port), timeout=60)
    s.sendall(head + (body if cut == "after_body" else body[: len(body) // 2]))
    s.close()
    if cut == "after_body":
        wait_for(lambda: office.people() == [], 60, "the erasure")
        wait_for(lambda: office.audit_details("deletion"), 60, "its record")
        assert office.audit_details("deletion") == ["by sam: key destroyed; file scrubbed"]
    else:
        wait_for(
            lambda: any("client_gone" in r.getMessage() for r in office.seen.records),
            60,
            "the server to notice the client left",
        )
        assert office.people() == [pid]
        assert office.audit_details("deletion") == []
    st, _ = c.req("GET", "/people")
    assert st == 200


# --- connections: a client holding them by the dozen ---------------------------------------------


def _connect(source: str, port: int) -> socket.socket:
    """A TCP connection to the console from the loopback address `source` (127.0.0.0/8 is all
    this machine's: each address is another client to the server)."""
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def _status(source: str, port: int) -> int:
    """The status of GET /login sent from `source` on a new connection (0: closed unanswered)."""
    with _connect(source, port) as s:
        s.sendall(b"GET /login HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n")
        head = s.recv(64)
    return int(head.split()[1]) if head.startswith(b"HTTP/") else 0


def test_a_client_holding_connections_by_the_dozen_locks_no_staff_member_out(tmp_path):
    """One client (a scan, a broken script) opening connections and sending nothing: uvicorn
    took every one and kept it for ever, so enough of them used up the server's file handles
    and no page loaded. Now `edge-gate console` answers the connections over the caps
    (console.max_per_address, console.max_connections) 503 at once, staff from elsewhere are
    served while one client has its fill, and all are served again once the clients leave."""
    office = Office(tmp_path, "max_connections = 12\nmax_per_address = 4\n")
    port = free_port()
    err = (tmp_path / "console.err").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "console", "--config", str(office.cfg.source_file),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        wait_for(lambda: _answers(port), 60, "the console to serve")
        held += [_connect("127.0.0.2", port) for _ in range(4)]  # one client: its fill
        assert _status("127.0.0.2", port) == 503  # the next one from it: busy, at once
        ada = Client(port).login("ada")  # staff (another address) are served meanwhile
        assert ada.req("GET", "/lanes")[0] == 200
        for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):  # more clients: the whole cap
            held += [_connect(source, port) for _ in range(4)]
        assert _status("127.0.0.6", port) == 503
        for s in held:
            s.close()
        wait_for(lambda: ada.req("GET", "/lanes")[0] == 200, 60, "staff to be served again")
        wait_for(lambda: _status("127.0.0.2", port) == 200, 60, "the client to be served again")
        assert server.poll() is None
    finally:
        for s in held:
            s.close()
        server.terminate()
        server.wait(30)
        err.close()
    said = (tmp_path / "console.err").read_text()
    assert "console connection refused address=127.0.0.2" in said
    assert "Traceback" not in said


def _answers(port: int) -> bool:
    try:
        return _status("127.0.0.1", port) == 200
    except OSError:
        return False


@contextlib.contextmanager
def _served(office, monkeypatch):
    """The console served by uvicorn as `edge-gate console` serves it, CLIENT_TIMEOUT_S 1 s."""
    import threading

    import uvicorn

    from edge.console import serve

    monkeypatch.setattr(serve, "CLIENT_TIMEOUT_S", 1.0)
    port = free_port()
    server = uvicorn.Server(serve.server_config(office.app, office.cfg, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn started")
        yield server, port
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_connection_that_sends_no_request_is_closed_and_a_stream_is_not(tmp_path, monkeypatch):
    """A connection that sends nothing, or a request's headers a byte at a time (before its
    first request or between two), kept its slot for ever: a few clients held the cap. Now it
    is closed once it has sent no whole request for CLIENT_TIMEOUT_S; a page's event stream,
    one long request, stays open."""
    office = Office(tmp_path)
    with _served(office, monkeypatch) as (server, port):
        ada = Client(port).login("ada")
        stream = _connect("127.0.0.1", port)
        cookie = "; ".join(f"{k}={v}" for k, v in ada.cookies.items())
        stream.sendall(
            f"GET /decisions/stream HTTP/1.1\r\nHost: c\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        assert stream.recv(64).startswith(b"HTTP/1.1 200")
        idle = _connect("127.0.0.2", port)
        slow = _connect("127.0.0.3", port)
        slow.sendall(b"GET /login HTTP/1.1\r\nHost: c\r\n")  # never ends its headers
        again = _connect("127.0.0.4", port)
        again.sendall(b"GET /login HTTP/1.1\r\nHost: c\r\n\r\n")
        assert again.recv(64).startswith(b"HTTP/1.1 200")
        _read_to_end_of_page(again)
        again.sendall(b"GET /login HTTP/1.1\r\n")  # the next request, never finished
        for s in (idle, slow, again):
            assert _closed(s)  # by the server: the read ends (a 30 s socket timeout fails it)
        assert _stream_open(stream)  # still served after the clients above were closed
        stream.close()
        wait_for(lambda: not server.server_state.connections, 30, "the stream to end")


def test_a_request_whose_body_never_arrives_is_closed(tmp_path, monkeypatch):
    """Headers whole, a body announced and sent a few bytes at a time or not at all: the
    connection kept its slot (and the handler waiting for the body) for ever. Now the body too
    must come within CLIENT_TIMEOUT_S."""
    office = Office(tmp_path)
    with _served(office, monkeypatch) as (server, port):
        slow = _connect("127.0.0.3", port)
        slow.sendall(
            b"POST /login HTTP/1.1\r\nHost: c\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: 1000\r\n\r\nuser=ada"
        )
        assert _closed(slow)
        wait_for(lambda: not server.server_state.connections, 30, "the connection to end")
        assert _answers(port)  # the server goes on


def _read_to_end_of_page(s: socket.socket) -> None:
    got = b""
    while b"</html>" not in got:
        chunk = s.recv(65536)
        assert chunk
        got += chunk


def _closed(s: socket.socket) -> bool:
    s.settimeout(30)
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return True
        if not chunk:
            return True


def _stream_open(s: socket.socket) -> bool:
    """The server has not closed the event stream (nothing read means the stream is quiet)."""
    s.settimeout(0.5)
    try:
        while s.recv(4096):  # what it sent so far
            pass
    except TimeoutError:
        return True
    return False


def test_revoke_unrevoke_and_forget_say_queued_when_the_offices_sync_has_not_sent(
    tmp_path, monkeypatch
):
    """With the broker or the office's sync down, revoke said "list sent to the lanes" and
    forget "Deletion published to every lane" (they were only queued); un-revoke changed the
    office's list only, so every lane went on refusing a ticket the office's check called
    valid; a revoke of an id already revoked was recorded as "revoked"; a forget of someone
    not at the office put their id in the record. Now each says sent or queued, un-revoke
    queues the lift for every lane, and the records say what was done, never who."""
    from edge.console import actions
    from edge.fleet.office import office_store

    from .console_harness import make_park

    monkeypatch.setattr(actions, "SENT_WAIT_S", 0.2)
    park = make_park(tmp_path, "mqtt://127.0.0.1:1")  # no sync runs: nothing is sent
    cfg = park.office_cfg
    office = actions.Office(cfg)
    try:
        assert actions.revoke(office, "sam", ["T-Q1"])[::2] == (["T-Q1"], False)
        assert actions.revoke(office, "sam", ["T-Q1"])[0] == []
        assert actions.unrevoke(office, "sam", ["T-Q1"]) == (["T-Q1"], False)
        with office_store(cfg, must_exist=True, read_only=True) as store:
            topics = [row[1] for row in store.outgoing(0, 100)]
        assert any(t.endswith("/office/unrevocations") for t in topics), topics
        assert actions.forget(office, "sam", "P-nobody", "deletion_request") == (False, False)
    finally:
        office.close()
    a = open_audit(cfg, "use")
    try:
        details = [(r.kind, r.detail) for _, r, _ in a.rows()]
    finally:
        a.close()
    assert ("revoke", "by sam: revoked T-Q1") in details
    assert ("revoke", "by sam: revoked nothing new") in details
    assert ("unrevoke", "by sam: un-revoked T-Q1") in details
    assert ("deletion", "by sam: not at the office; queued for the lanes") in details


def test_the_kiosk_drops_an_old_capture_and_refuses_what_the_gate_would(tmp_path, monkeypatch):
    """A capture's faces were dropped only when someone opened the kiosk page again: past the
    15 minutes CONSOLE.md promises, a late form still enrolled with them. A pass end already
    past was enrolled (the gate refuses them, pass_expired); a refusal's fix named command-line
    flags (--guardian NAME) the kiosk does not have."""
    from edge.console import actions

    from .console_harness import make_park

    park = make_park(tmp_path, "mqtt://127.0.0.1:1")
    cfg = park.office_cfg
    office = actions.Office(cfg)
    try:
        kiosk = actions.Kiosk(office)
        cid = kiosk.start("sam")
        form = actions.Enrollment(
            "Ada", True, cfg.console.consent_version, valid_until="2001-01-01"
        )
        with pytest.raises(actions.ActionError, match="has passed") as e:
            actions.enroll(office, kiosk, cid, "sam", form)
        assert "check the year" in e.value.hint
        minor = actions.Enrollment("Ben", True, cfg.console.consent_version, minor=True)
        with pytest.raises(actions.ActionError) as e:
            actions.enroll(office, kiosk, cid, "sam", minor)
        assert "--" not in e.value.hint and "guardian" in e.value.hint, e.value.hint
        assert kiosk.capture(cid, "sam") is not None
        later = time.monotonic() + actions.KIOSK_TTL_S + 60
        monkeypatch.setattr(actions.time, "monotonic", lambda: later)
        with pytest.raises(actions.ActionError, match="expired"):
            kiosk.capture(cid, "sam")
        monkeypatch.undo()
        with pytest.raises(actions.ActionError, match="expired"):  # dropped, not only hidden
            kiosk.capture(cid, "sam")
    finally:
        office.close()
