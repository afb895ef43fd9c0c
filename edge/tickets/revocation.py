"""The revocation list: ticket ids the office has withdrawn, one per line."""

from __future__ import annotations

import os
from pathlib import Path


def load_revocations(path: Path | None) -> frozenset[str]:
    """One ticket id per line; '#' comments; a missing file means nothing is revoked."""
    if not path:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return frozenset()
    return frozenset(s for s in (ln.split("#", 1)[0].strip() for ln in lines) if s)


def revoke(path: Path, ticket_ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for t in ticket_ids:
            f.write(t.strip() + "\n")
        f.flush()
        os.fsync(f.fileno())
