"""The revocation list: ticket ids the office has withdrawn, one id per line, matched exactly.

A line is the whole id (surrounding spaces stripped), so `T#7` stays `T#7` and ids with spaces
can be revoked; lines starting with `#` are comments. A configured list that is missing or
unreadable is an error, never "nothing revoked": the gate keeps its last good list and alarms.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from edge.errors import ConfigError, TicketError
from edge.files import make_private_dirs, write_atomic
from edge.tickets.format import TICKET_ID

_FIX = (
    "restore it from its backup (a new, empty list would let every ticket revoked before in "
    "again), or fix tickets.revocation_list; for a first list, create it empty"
)
BOM = "\ufeff"  # what some editors put first in a UTF-8 file: never part of an id


def _lines(path: Path) -> list[str]:
    """The list's lines (a byte-order mark an editor put first dropped); a list that cannot be
    read is a ConfigError naming the key."""
    return _read(path).removeprefix(BOM).splitlines()


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"tickets.revocation_list {path} does not exist", _FIX) from None
    except IsADirectoryError:
        raise ConfigError(f"tickets.revocation_list {path} is a directory", _FIX) from None
    except PermissionError:
        raise ConfigError(
            f"tickets.revocation_list {path} is not readable", "let the gate's user read it"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"tickets.revocation_list {path} is not UTF-8 text", "write one ticket id per line"
        ) from None
    except OSError as e:
        raise ConfigError(f"tickets.revocation_list {path} cannot be read: {e.strerror}") from None


def _entry(line: str) -> str | None:
    s = line.strip()
    return s if s and not s.startswith("#") else None


def load_revocations(path: Path | None) -> frozenset[str]:
    """Ids in the list; None (no list configured) means nothing revoked; a missing file raises."""
    if not path:
        return frozenset()
    return frozenset(e for e in map(_entry, _lines(Path(path))) if e)


def joined_ids(text: str) -> bool:
    """Ids edge-gate issues, joined by commas or semicolons ("T-5,T-6", "T-5,"): a list pasted
    as one id, which matched exactly revokes none of them. An id of another system that holds a
    comma ("day pass, 9") is not one."""
    parts = [x.strip() for x in re.split(r"[,;]", text)]
    return len(parts) > 1 and all(not x or TICKET_ID.fullmatch(x) for x in parts)


def joined_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, entry) of the list's entries that are `joined_ids`."""
    entries = ((n, _entry(line)) for n, line in enumerate(_lines(Path(path)), 1))
    return [(n, e) for n, e in entries if e and joined_ids(e)]


def _check_id(tid: str) -> str:
    s = tid.strip()
    if not s or s.startswith("#") or any(c in s for c in "\r\n\0"):
        raise TicketError(
            f"ticket id {tid!r} cannot be written to a revocation list",
            "pass the id exactly as printed on the ticket",
        )
    return s


def _write(path: Path, lines: list[str]) -> None:
    """Replace the list whole and durably (a gate never reads half of it); an existing list
    keeps its permissions. A folder this user may not write, or a full disk, is a TicketError
    naming it, and the old list stays as it was."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    try:
        write_atomic(path, "".join(ln + "\n" for ln in lines), mode)
    except OSError as e:
        raise _cannot_write(path, e) from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the list's lock (flock on a sibling `.NAME.lock`) for one read-modify-write, so
    `edge-gate sync` applying the office's revocations and an operator's `ticket revoke` at the
    same moment both land. A read-only open is enough for flock, so any user who may read the
    folder can wait on a lock file another user created."""
    try:
        make_private_dirs(path.parent)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _cannot_write(path: Path, e: OSError) -> TicketError:
    return TicketError(
        f"revocation list {path} cannot be written: {e.strerror or e} (in {path.parent}); "
        "it is unchanged",
        "run it as the user that owns the list's folder (e.g. sudo -u edge-gate), or give a "
        "--list in a writable folder",
    )


def revoke(path: Path, ticket_ids: list[str]) -> list[str]:
    """Add ids not yet in the list (created if absent); returns the ids added."""
    path = Path(path)
    ids = [_check_id(t) for t in ticket_ids]
    with _locked(path):
        lines = _lines(path) if path.exists() else []
        present = {e for e in map(_entry, lines) if e}
        added = [t for t in dict.fromkeys(ids) if t not in present]
        if added:
            _write(path, lines + added)
    return added


def unrevoke(path: Path, ticket_ids: list[str]) -> list[str]:
    """Remove ids from the list (comments kept); returns the ids that were there."""
    path = Path(path)
    ids = {_check_id(t) for t in ticket_ids}
    _lines(path)  # a missing or unreadable list is said before a lock file is made beside it
    with _locked(path):
        lines = _lines(path)
        kept = [ln for ln in lines if _entry(ln) not in ids]
        removed = sorted({e for e in map(_entry, lines) if e in ids})
        if removed:
            _write(path, kept)
    return removed
