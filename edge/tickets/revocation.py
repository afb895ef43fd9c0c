"""The revocation list: ticket ids the office has withdrawn, one id per line, matched exactly.

A line is the whole id (surrounding spaces stripped), so `T#7` stays `T#7` and ids with spaces
can be revoked; lines starting with `#` are comments. A configured list that is missing or
unreadable is an error, never "nothing revoked": the gate keeps its last good list and alarms.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edge.errors import ConfigError, TicketError

_FIX = "create it (an empty file revokes nothing) or fix tickets.revocation_list"


def _lines(path: Path) -> list[str]:
    """The list's lines; a list that cannot be read is a ConfigError naming the key."""
    try:
        return path.read_bytes().decode("utf-8").splitlines()
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


def _check_id(tid: str) -> str:
    s = tid.strip()
    if not s or s.startswith("#") or any(c in s for c in "\r\n\0"):
        raise TicketError(
            f"ticket id {tid!r} cannot be written to a revocation list",
            "pass the id exactly as printed on the ticket",
        )
    return s


def _write_atomic(path: Path, lines: list[str]) -> None:
    """Replace the list whole (a gate never reads half of it); a folder this user may not
    write is a TicketError naming it, and the old list stays as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(ln + "\n" for ln in lines))
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk: the old list is untouched
            raise _cannot_write(path, e) from None
        raise


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
    lines = _lines(path) if path.exists() else []
    present = {e for e in map(_entry, lines) if e}
    added = [t for t in dict.fromkeys(ids) if t not in present]
    if added:
        _write_atomic(path, lines + added)
    return added


def unrevoke(path: Path, ticket_ids: list[str]) -> list[str]:
    """Remove ids from the list (comments kept); returns the ids that were there."""
    path = Path(path)
    ids = {_check_id(t) for t in ticket_ids}
    lines = _lines(path)
    kept = [ln for ln in lines if _entry(ln) not in ids]
    removed = sorted({e for e in map(_entry, lines) if e in ids})
    if removed:
        _write_atomic(path, kept)
    return removed
