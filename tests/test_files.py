"""Small files written whole-or-nothing and durably; the revocation list's read-modify-write."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from edge.errors import KeyFileError, TicketError
from edge.files import write_atomic
from edge.fleet.identity import read_roster_file, write_roster_file
from edge.keyfiles import write_secret
from edge.pretix import sync as pretix_sync
from edge.tickets.revocation import load_revocations, revoke, unrevoke


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_bytes_or_text_with_the_mode_asked_for(tmp_path):
    old = os.umask(0o077)  # the mode is the one asked for, whatever the umask
    try:
        write_atomic(tmp_path / "a.bin", b"\x00\x01two")
        write_atomic(tmp_path / "b.txt", "ünï\n", 0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01two"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "ünï\n"
    assert _mode(tmp_path / "a.bin") == 0o644
    assert _mode(tmp_path / "b.txt") == 0o640
    write_atomic(tmp_path / "b.txt", "new", 0o600)  # replacing takes the new mode too
    assert (tmp_path / "b.txt").read_text() == "new"
    assert _mode(tmp_path / "b.txt") == 0o600
    assert _names(tmp_path) == {"a.bin", "b.txt"}  # no temp file left


def test_file_and_folder_are_fsynced_before_it_returns(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(st.st_mode) else f"file:{st.st_size}")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "list.txt", "abc\n")
    assert synced == ["file:4", "dir"]  # the data first, then the rename in the folder


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, overwrite):
    target = tmp_path / "roster.json"
    target.write_text("old\n")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace" if overwrite else "link", boom)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new\n", overwrite=overwrite)
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == {"roster.json"}


def test_a_write_that_fails_before_the_rename_leaves_nothing(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(tmp_path / "new.txt", "x")
    assert _names(tmp_path) == set()


def test_never_overwrite_refuses_an_existing_name_and_keeps_it(tmp_path):
    key = tmp_path / "k.key"
    write_atomic(key, "first", 0o600, overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(key, "second", 0o600, overwrite=False)
    assert key.read_text() == "first"
    assert _mode(key) == 0o600
    assert _names(tmp_path) == {"k.key"}
    with pytest.raises(KeyFileError, match="already exists") as e:
        write_secret(key, "third", "keep it")
    assert e.value.hint == "keep it"
    assert key.read_text() == "first"
    assert _names(tmp_path) == {"k.key"}


def test_callers_keep_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    """The revocation list, the office's roster and the pretix folder's files."""
    lst = tmp_path / "revoked.txt"
    revoke(lst, ["T-1"])
    roster = tmp_path / "roster.json"
    write_roster_file(roster, {"lane1": "A" * 43 + "="})
    shop = tmp_path / "event.json"
    pretix_sync.write_atomic(shop, {"slug": "one"})
    before = _names(tmp_path)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(TicketError, match="No space left.*it is unchanged"):
        revoke(lst, ["T-2"])
    with pytest.raises(TicketError, match="No space left.*it is unchanged"):
        unrevoke(lst, ["T-1"])
    with pytest.raises(OSError):
        write_roster_file(roster, {})
    with pytest.raises(OSError):
        pretix_sync.write_atomic(shop, {"slug": "two"})
    monkeypatch.undo()
    assert load_revocations(lst) == {"T-1"}
    assert json.loads(roster.read_text())["lanes"] == {"lane1": "A" * 43 + "="}
    assert json.loads(shop.read_text()) == {"slug": "one"}
    assert _names(tmp_path) == before


def test_a_new_revocation_list_is_readable_by_the_gate_and_an_old_one_keeps_its_mode(tmp_path):
    lst = tmp_path / "revoked.txt"
    revoke(lst, ["T-1"])
    assert _mode(lst) == 0o644  # the gate may run as another user than the operator
    os.chmod(lst, 0o640)
    revoke(lst, ["T-2"])
    unrevoke(lst, ["T-1"])
    assert _mode(lst) == 0o640
    assert load_revocations(lst) == {"T-2"}


def test_roster_file_round_trips(tmp_path):
    roster = tmp_path / "office" / "roster.json"
    lanes = {"lane2": "B" * 43 + "=", "lane1": "A" * 43 + "="}
    write_roster_file(roster, lanes)
    assert read_roster_file(roster) == lanes
    assert _names(roster.parent) == {"roster.json"}


IDS_EACH = 150


def _writer(path: str, who: str, barrier) -> None:
    barrier.wait()
    for i in range(IDS_EACH):
        revoke(Path(path), [f"{who}-{i}"])
        if who == "office" and i % 2:  # the office lifts every other one of its own
            unrevoke(Path(path), [f"{who}-{i}"])


def test_two_writers_at_once_lose_no_id(tmp_path):
    """`edge-gate sync` and an operator's `ticket revoke` on the same list, in two processes,
    one id per call (one read-modify-write each): every revocation and every lift lands."""
    lst = tmp_path / "revoked.txt"
    lst.write_text("# revoked tickets\n")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(lst), w, barrier)) for w in ("op", "office")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    want = {f"op-{i}" for i in range(IDS_EACH)} | {f"office-{i}" for i in range(0, IDS_EACH, 2)}
    assert load_revocations(lst) == want
    assert lst.read_text().startswith("# revoked tickets\n")
    assert {n for n in _names(tmp_path) if n.endswith(".tmp")} == set()
