"""Personal details (name, pass id, guardian) kept off the command line.

A process's arguments are visible to every user (`ps`, `/proc/PID/cmdline`) and land in shell
history, so the README never puts a name there. Each detail can come from a file
(`--name-file F`), from standard input (`--name-file -`, one line per detail in the order name,
pass id, guardian), or from a prompt when standard input is a terminal. `--name` and friends
still work for scripts that accept the exposure.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge.errors import EdgeGateError

DETAILS = ("name", "pass_id", "guardian")  # the order of lines read from stdin


def add_detail_args(sp, details: tuple[str, ...] = DETAILS) -> None:
    """`--NAME-file PATH|-` beside each plain `--NAME` option."""
    for d in details:
        flag = d.replace("_", "-")
        sp.add_argument(
            f"--{flag}-file",
            metavar="PATH|-",
            help=f"read the {flag.replace('-', ' ')} from the first line of PATH, or '-' for "
            f"stdin (keeps it out of `ps` and shell history)",
        )


def _first_line(path: str, what: str) -> str:
    if path == "-":
        line = sys.stdin.readline()
    else:
        p = Path(path)
        if not p.is_file():
            raise EdgeGateError(f"--{what}-file {path}: no such file", "give a text file")
        try:
            line = next(iter(p.read_text(encoding="utf-8").splitlines()), "")
        except UnicodeDecodeError:
            raise EdgeGateError(
                f"--{what}-file {path}: not UTF-8 text", "save it as UTF-8 text"
            ) from None
        except OSError as e:
            raise EdgeGateError(f"--{what}-file {path}: cannot read it: {e.strerror}") from None
    value = line.strip()
    if not value:
        raise EdgeGateError(
            f"--{what}-file {path}: the first line is empty",
            f"put the {what.replace('-', ' ')} on the file's first line",
        )
    return value


def resolve_details(args, prompt: tuple[str, ...] = ()) -> None:
    """Fill args.name / args.pass_id / args.guardian from their -file options or a prompt."""
    for d in DETAILS:
        flag = d.replace("_", "-")
        given, path = getattr(args, d, None), getattr(args, f"{d}_file", None)
        if given and path:
            raise EdgeGateError(f"--{flag} and --{flag}-file both given", "use one of them")
        if path:
            setattr(args, d, _first_line(path, flag))
        elif not given and d in prompt and sys.stdin.isatty():
            setattr(args, d, input(f"{flag.replace('-', ' ')}: ").strip() or None)
