"""Small files written whole-or-nothing, and still there after a power cut.

A revocation list, a roster or a key that is empty or half written after a crash changes who
gets in, so every such file is written the same way: a fresh temp file beside it (mkstemp, so
two writers never share one), the data written, flushed and fsync'd, its mode set, then
renamed over the name and the folder fsync'd so that the rename itself survives. Any error
removes the temp file and leaves the old file as it was; the OSError reaches the caller, which
turns it into its own typed error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """Create `folder` and any missing parent, each made here 0700 whatever the umask: the
    folders of the stores and secrets (gallery, ledger, audit log, fleet state, keys, the
    forget and revocation lists, the staff accounts) show no one else even the names in them.
    A folder that already exists (the operator's, or made meanwhile by another process) is
    left as it is. Returns the folders made; OSError otherwise (a folder this user may not
    write; NotADirectoryError for a file in the way, never FileExistsError, which the key
    writers read as a key already there)."""
    folder = Path(folder)
    missing: list[Path] = []
    p = folder
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile by another process (its mode is that process's), or a
            # file in the way: said below
        os.chmod(d, 0o700)  # a umask may take bits from mkdir's mode, never add them back
        made.append(d)
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    return made


def write_atomic(
    path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644, *, overwrite: bool = True
) -> None:
    """Replace (or create) `path` with `data` atomically and durably, with permissions `mode`.

    overwrite=False never replaces an existing file (keys): the name is linked to the finished
    temp file, and FileExistsError is raised when the name already exists. str is UTF-8.
    The folder must exist: its mode is the caller's decision.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # after a replace it is gone; after a link it is the second name
    fsync_dir(path.parent)


DIGEST_MAX_BYTES = 16 << 20  # larger files are told apart by their stat alone


def content_stamp(path: str | os.PathLike[str]) -> tuple | None:
    """Changes whenever the file's content does, None when there is none. A modification time
    alone misses two writes within the file system's clock tick (and a copy that keeps the old
    time; a freed inode number is soon given again), which left a newly revoked ticket valid:
    small files are told apart by a digest of what they hold."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            digest = (
                hashlib.blake2b(f.read(), digest_size=16).digest()
                if st.st_size <= DIGEST_MAX_BYTES
                else None
            )
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest
