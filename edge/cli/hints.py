"""Fix hints in the words of this run: the `--config`/`--db` the user gave, not placeholders.

Library code cannot know how it was called, so the commands its hints quote (in backticks,
starting with `edge-gate`) say `--config C` (and `--db LEDGER`); the command line prints them
through `for_this_run`, which puts the user's own flags there (or drops `--config C` when the
shipped default config was used), so a quoted command can be pasted as is. Prose such as
"pass --config C" is left alone.
"""

from __future__ import annotations

import re
import shlex

QUOTED = re.compile(r"`edge-gate [^`]*`")
CONFIG = re.compile(r" --config (?:C|/etc/edge-gate/gate\.toml)\b")
DB = re.compile(r" --db (?:LEDGER|DB)\b")


LEDGER_DB = {"ticket", "ledger"}  # commands whose --db is a ledger (others': the gallery)


def for_this_run(text: str, args) -> str:
    """`text` with `--config C` / `--db LEDGER` replaced by this run's own flags.

    A ledger command run with `--db` alone (`ticket verify --db L`) gets `--db L` in place of
    `--config C`; without either flag the shipped default config was used and the flag is dropped.
    """
    config = getattr(args, "config", None)
    db = getattr(args, "db", None) if getattr(args, "command", "") in LEDGER_DB else None
    if config:
        flag = f" --config {shlex.quote(str(config))}"
    else:
        flag = f" --db {shlex.quote(str(db))}" if db else ""

    def one(m: re.Match) -> str:
        cmd = CONFIG.sub(flag, m.group(0))
        return DB.sub(f" --db {shlex.quote(str(db))}", cmd) if db else cmd

    return QUOTED.sub(one, text)
