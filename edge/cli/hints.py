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
# commands whose --db/--key-file are the gallery's
GALLERY = {"enroll", "people", "forget", "purge", "pass"}


def _gallery_flags(args) -> str:
    """This run's `--db`/`--key-file`, when it is a gallery command given them."""
    if getattr(args, "command", "") not in GALLERY:
        return ""
    given = ((f, getattr(args, a, None)) for f, a in (("--db", "db"), ("--key-file", "key_file")))
    return "".join(f" {f} {shlex.quote(str(v))}" for f, v in given if v)


def for_this_run(text: str, args) -> str:
    """`text` with `--config C` / `--db LEDGER` replaced by this run's own flags.

    A ledger command run with `--db` alone (`ticket verify --db L`) gets `--db L` in place of
    `--config C`; without either flag the shipped default config was used and the flag is dropped.
    A gallery command run with `--db`/`--key-file` passes them on to the gallery commands it quotes.
    """
    config = getattr(args, "config", None)
    db = getattr(args, "db", None) if getattr(args, "command", "") in LEDGER_DB else None
    if config:
        flag = f" --config {shlex.quote(str(config))}"
    else:
        flag = f" --db {shlex.quote(str(db))}" if db else ""

    gallery = _gallery_flags(args)

    def one(m: re.Match) -> str:
        quoted = m.group(0)
        words = quoted.split()
        extra = gallery if len(words) > 1 and words[1] in GALLERY else ""
        cmd = CONFIG.sub(lambda _: flag + extra, quoted)
        return DB.sub(f" --db {shlex.quote(str(db))}", cmd) if db else cmd

    return QUOTED.sub(one, text)
