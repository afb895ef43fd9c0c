"""Private by construction on disk: the folders the stores make are 0700, and a database file
(or its write-ahead log and index) that an earlier version left readable by all is made 0600
when a store opens it."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from .gallery_helpers import CONSENT, cli, config, file_bytes, unit


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most services and shells run with (022: new folders 0755)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _gallery(path: Path) -> None:
    from edge.gallery.crypto import init_key
    from edge.gallery.store import Gallery

    with Gallery(path, init_key(path.with_name("k.key"))) as g:
        g.add_person("Ottoline Brambleworth", CONSENT, list(unit(np.random.default_rng(3), 1)),
                     "m", "v")  # fmt: skip


def _audit(path: Path) -> None:
    from edge.gate.audit import AuditLog

    AuditLog(path).close()


def _ledger(path: Path) -> None:
    from edge.tickets.ledger import init_ledger

    init_ledger(path)


def _fleet(path: Path) -> None:
    from edge.fleet.state import FleetState

    FleetState(path).close()


def _accounts(path: Path) -> None:
    from edge.console.users import UserStore

    UserStore(path).close()


def _console_secret(path: Path) -> None:
    from edge.console.auth import load_secret

    load_secret(path)


def _forget_list(path: Path) -> None:
    from edge.gallery.forgetlist import ForgetList

    ForgetList(path).append(1, 1.0, ["P-0123456789abcdef"], 1)


def _revocations(path: Path) -> None:
    from edge.tickets.revocation import revoke

    revoke(path, ["T-1"])


def _issuer_key(path: Path) -> None:
    from edge.tickets.keys import keygen

    keygen(path.parent)


def _secret(path: Path) -> None:
    from edge.keyfiles import write_secret

    write_secret(path, "s\n", "keep it")


def _pretix_folder(path: Path) -> None:
    from edge.pretix.sync import write_text

    write_text(path, "[]")


MAKERS: dict[str, Callable[[Path], None]] = {
    "gallery": _gallery,
    "audit log": _audit,
    "ledger": _ledger,
    "fleet.db": _fleet,
    "console accounts": _accounts,
    "console secret": _console_secret,
    "forget list": _forget_list,
    "revocation list": _revocations,
    "issuer key": _issuer_key,
    "key file (evidence, lane, pretix token)": _secret,
    "pretix folder": _pretix_folder,
}


@pytest.mark.parametrize("what", list(MAKERS))
def test_the_folders_a_store_makes_are_private(tmp_path, usual_umask, what):
    """A store or secret file whose folder did not exist made it (and its parents) with the
    process umask, 0755 under the usual one: anyone on the machine could list the gallery's,
    the ledger's or the keys' folder and open every file left readable there. Every folder a
    store makes is now 0700, each parent it made too; the folder it found is left as it was."""
    top = tmp_path / "var"
    top.mkdir(mode=0o755)
    top.chmod(0o755)
    path = top / "new" / "deeper" / "file"
    MAKERS[what](path)
    assert path.exists() or what == "issuer key"
    assert oct(mode(top / "new")) == oct(0o700)
    assert oct(mode(top / "new" / "deeper")) == oct(0o700)
    assert oct(mode(top)) == oct(0o755)  # the operator's folder: untouched


@pytest.mark.parametrize("what", ["gallery", "audit log", "ledger", "fleet.db", "console accounts"])
@pytest.mark.parametrize("was", [0o755, 0o775, 0o711])
def test_an_existing_folder_keeps_its_mode(tmp_path, usual_umask, what, was):
    """A store in a folder the operator made (/var/lib/edge-gate, a tmp path shared on
    purpose) never changes that folder's mode."""
    folder = tmp_path / "theirs"
    folder.mkdir()
    folder.chmod(was)
    MAKERS[what](folder / "file")
    assert oct(mode(folder)) == oct(was)


def test_make_private_dirs_is_0700_whatever_the_umask(tmp_path):
    """A umask that takes the owner's bits too still gives 0700; a file in the way is
    NotADirectoryError; folders already there are not returned."""
    from edge.files import make_private_dirs

    old = os.umask(0o277)
    try:
        made = make_private_dirs(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert made == [tmp_path / "a", tmp_path / "a" / "b"]
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700
    assert make_private_dirs(tmp_path / "a" / "b") == []
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        make_private_dirs(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        make_private_dirs(tmp_path / "f" / "g")


def _open_gallery(path: Path) -> None:
    from edge.gallery.crypto import load_key
    from edge.gallery.store import Gallery

    Gallery(path, load_key(path.with_name("k.key")), create=False).close()


STORES = ["gallery", "audit log", "ledger", "fleet.db", "console accounts"]
OPENERS: dict[str, Callable[[Path], None]] = {**MAKERS, "gallery": _open_gallery}


def left_loose(what: str, path: Path) -> sqlite3.Connection:
    """A store's file as an earlier version left it: the file 0644, and its write-ahead log
    and index 0644 too, held open (and so kept on disk) by a process of that version."""
    MAKERS[what](path)
    path.chmod(0o644)
    old = sqlite3.connect(path)  # SQLite gives a new log and index the database's mode
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("SELECT count(*) FROM sqlite_master").fetchone()
    for f in files_of(path):
        assert mode(f) == 0o644  # the test's premise
    return old


def files_of(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def said(caplog, line: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge.db" and line in r.message]


@pytest.mark.parametrize("what", STORES)
def test_a_database_left_0644_is_made_0600_when_a_store_opens_it(
    tmp_path, usual_umask, caplog, what
):
    """A database file, write-ahead log or index made before new files were made 0600 stayed
    readable by all until it was made again (never, for a lane's gallery or ledger). A store
    that opens a file of its own user's now takes group and other bits off the file, its log
    and its index, and says so in one line per file, once."""
    path = tmp_path / "store.db"
    old = left_loose(what, path)
    try:
        with caplog.at_level(logging.WARNING, logger="edge.db"):
            OPENERS[what](path)
            assert [oct(mode(f)) for f in files_of(path)] == [oct(0o600)] * 3
            assert sorted(said(caplog, "mode_tightened")) == sorted(
                f"db mode_tightened path={f} was=0644" for f in files_of(path)
            )
            caplog.clear()
            OPENERS[what](path)
            assert said(caplog, "mode_") == []  # said once: the files are private now
    finally:
        old.close()


@pytest.mark.parametrize("what", STORES)
def test_a_chmod_that_fails_never_fails_the_open(tmp_path, usual_umask, caplog, monkeypatch, what):
    """A file on a read-only file system, or one chmod may not change: the store still opens
    (a mode is never a reason to keep the gate from its people or the console from its staff;
    before, the console's accounts file failed to open when its chmod failed), with a warning
    naming the file and the fix, said once."""
    path = tmp_path / "store.db"
    old = left_loose(what, path)

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refused)
    try:
        with caplog.at_level(logging.WARNING, logger="edge.db"):
            OPENERS[what](path)
            OPENERS[what](path)
        assert sorted(said(caplog, "mode_loose")) == sorted(
            f"db mode_loose path={f} mode=0644: Operation not permitted; its group and others "
            f"may read it: run chmod go= {f} as its owner"
            for f in files_of(path)
        )
        assert [oct(mode(f)) for f in files_of(path)] == [oct(0o644)] * 3
    finally:
        old.close()


def test_a_file_of_another_user_is_left_as_it_is_and_said(
    tmp_path, usual_umask, caplog, monkeypatch
):
    """A file owned by another user (root's copy of a backup, say) is not this store's to
    change: left as it is, said with the fix, and the open goes on."""
    path = tmp_path / "store.db"
    old = left_loose("fleet.db", path)
    other = path.stat().st_uid + 1
    monkeypatch.setattr(os, "geteuid", lambda: other)
    try:
        with caplog.at_level(logging.WARNING, logger="edge.db"):
            _fleet(path)
        assert [oct(mode(f)) for f in files_of(path)] == [oct(0o644)] * 3
        loose = said(caplog, "mode_loose")
        assert len(loose) == 3 and all("not this user" in line for line in loose)
    finally:
        old.close()


def test_a_pass_edit_leaves_no_old_sealed_name_on_disk(tmp_path, capsys, sqlite_default_build):
    """`pass edit --name` sealed the new name over the old one, but the gallery's page with
    the old sealed name stayed in the file (the new one waiting in the write-ahead log) for as
    long as the running gate kept the gallery open: the person's key, still in the file, opens
    it. The edit now empties the log into the file, so the old sealed bytes leave the disk."""
    from contextlib import closing

    from edge.db import connect
    from edge.gallery.crypto import init_key, load_key
    from edge.gallery.store import Gallery

    db, key = tmp_path / "g.db", tmp_path / "k.key"
    with Gallery(db, init_key(key)) as g:
        pid = g.add_person("Ottoline Brambleworth", CONSENT,
                           list(unit(np.random.default_rng(5), 2)), "m", "v")  # fmt: skip
    with closing(sqlite3.connect(db)) as c:
        (old,) = c.execute("SELECT name FROM people WHERE id = ?", (pid,)).fetchone()
    gate = connect(db)  # the running gate's connection, idle between decisions
    try:
        assert bytes(old) in file_bytes(db)  # the test's premise: it is on disk
        args = ["--config", str(config(tmp_path)), "--db", str(db), "--key-file", str(key)]
        rc, _, err = cli(capsys, "pass", "edit", pid, *args, "--name", "Ottoline B.")
        assert rc == 0, err
        assert bytes(old) not in file_bytes(db)
    finally:
        gate.close()
    with Gallery(db, load_key(key), create=False) as g:
        assert g.person(pid).name == "Ottoline B."


def test_a_new_events_file_is_private_and_an_existing_one_keeps_its_mode(tmp_path, usual_umask):
    """`run --events FILE` made a new file with the umask (0644 under the usual one), and its
    lines name the ticket and pseudonymous ids of every decision. A new one is now 0600; one
    the operator made keeps its mode and its lines, appended to."""
    from edge.cli.gate import open_events

    new, theirs = tmp_path / "events.jsonl", tmp_path / "theirs.jsonl"
    theirs.write_text("{}\n")
    theirs.chmod(0o640)
    for path in (new, theirs):
        with open_events(str(path)) as f:
            f.write('{"via": "ticket"}\n')
    assert oct(mode(new)) == oct(0o600)
    assert oct(mode(theirs)) == oct(0o640)
    assert theirs.read_text() == '{}\n{"via": "ticket"}\n'


def test_a_file_in_the_way_of_a_key_folder_is_not_a_key_already_there(tmp_path):
    """A key whose folder is a file: the error names the folder, never "already exists" (which
    would tell the operator to keep a key that was never written)."""
    from edge.errors import KeyFileError
    from edge.keyfiles import write_secret

    (tmp_path / "keys").write_text("")
    with pytest.raises(KeyFileError) as e:
        write_secret(tmp_path / "keys" / "lane.key", "s\n", "keep it")
    assert "already exists" not in str(e.value) and "cannot be written" in str(e.value)
