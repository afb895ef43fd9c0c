"""Following a SQLite file the console keeps open (the staff accounts, the office audit log, the
office's fleet store) when it is deleted or replaced underneath: its identity is compared at each
use, as the gate and sync do, and the old connection let go as every follower does
(`edge.db.let_go`)."""

from __future__ import annotations

from edge.db import file_id, let_go

__all__ = ["file_id", "let_go"]
