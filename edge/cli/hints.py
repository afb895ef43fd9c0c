"""Fix hints in the words of this run: the `--config`/`--db` the user gave, not placeholders.

Library code cannot know how it was called, so its hints say `--config C` (and `--db LEDGER`);
the command line prints them through `for_this_run`, which puts the user's own flags there (or
drops `--config C` when the shipped default config was used), so a hint can be pasted as is.
"""

from __future__ import annotations

import re
import shlex

CONFIG = re.compile(r" --config (?:C|/etc/edge-gate/gate\.toml)\b")
DB = re.compile(r" --db (?:LEDGER|DB)\b")


def for_this_run(text: str, args) -> str:
    """`text` with `--config C` / `--db LEDGER` replaced by this run's own flags."""
    config = getattr(args, "config", None)
    text = CONFIG.sub(f" --config {shlex.quote(str(config))}" if config else "", text)
    db = getattr(args, "db", None)
    if db:
        text = DB.sub(f" --db {shlex.quote(str(db))}", text)
    return text
