"""Key rotation: replace the key file's key without ever leaving a key on disk that cannot open.

The key file wraps the gallery data key, which wraps each person's key; rotation rewraps the
data key (one row), so the per-person keys and everything they seal stay as they are and a
running gate keeps matching.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import KeyFileError
from edge.gallery.crypto import Kek, init_key, load_key
from edge.gallery.store import Gallery

SIDE_FILES = ("", "-wal", "-shm", "-journal")  # a SQLite database and the files beside it


def rotate_key(db: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> tuple[str, str]:
    """Replace the key-encryption key; crash-safe: at every instant the key file opens the gallery.

    1. the new key is written beside the old one (KEY.next), 2. the data key is wrapped under it
    too (commit), 3. KEY.next atomically replaces KEY, 4. the old wrapping is dropped. Until step 3
    the old KEY is the authority (its wrapping stays in the database), so a KEY.next left by an
    interrupted rotation is discarded and made anew. A rotation killed anywhere is finished by
    running it again.
    """
    key_path = Path(key_file)
    old = load_key(key_path)
    if not os.access(key_path.parent, os.W_OK | os.X_OK):
        raise KeyFileError(
            f"{key_path.parent} is not writable by this user, so the new key cannot be written",
            f"run it as root: sudo edge-gate keys rotate --key-file {key_path} --db {db}",
        )
    owner = os.stat(key_path)
    db_owner = os.stat(db) if Path(db).exists() else None
    with Gallery(db, old, create=False) as g:
        nxt_path = key_path.with_name(key_path.name + ".next")
        nxt_path.unlink(missing_ok=True)
        new = init_key(nxt_path)
        _keep_owner(nxt_path, owner)  # root rotating the service's key: the service still reads it
        g.rewrap(new)
        os.replace(nxt_path, key_path)
        dfd = os.open(key_path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        g.drop_other_keys(Kek(new.key, key_path))
    if db_owner is not None:  # root's writes must not leave a -wal or -shm the service cannot open
        for suffix in SIDE_FILES:
            f = Path(f"{db}{suffix}")
            if f.exists():
                _keep_owner(f, db_owner)
    return old.kid, new.kid


def _keep_owner(path: Path, like: os.stat_result) -> None:
    """Give `path` the owner and group of the file it replaces (only root can, and must)."""
    if os.geteuid() == 0 and (os.stat(path).st_uid, os.stat(path).st_gid) != (
        like.st_uid,
        like.st_gid,
    ):
        os.chown(path, like.st_uid, like.st_gid)
