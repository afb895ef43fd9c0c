"""`edge-gate`: one command per job, mirroring the library (as sqlite-utils does).

Each module in this package registers one command group; a command parses its flags, calls one
library function and prints the result. Errors the product raises on purpose become one line on
stderr and exit status 2, their hint in the words of this run (`hints.py`); anything else is an
internal error: one line and exit status 70, its traceback only with `--debug`. A reader that
closes stdout early (`| head`) ends the command quietly.

A command imports its heavy library (the models, OpenCV, MQTT, the web stack, the office
library) inside its function, with a comment naming it, so `edge-gate --help` and every other
command start without it; everything else is imported at the top (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys

from edge import __version__
from edge.cli import audit, fleet, gallery, gate, lab, ledger, passes, pretix, tickets
from edge.cli import console as console_cli
from edge.cli.examples import COMMON_HELP, EXAMPLES
from edge.cli.hints import for_this_run
from edge.cli.paths import existing_file
from edge.errors import EdgeGateError

log = logging.getLogger("edge")

# Order of the groups in `edge-gate --help`.
GROUPS = (lab, gate, tickets, ledger, audit, gallery, passes, fleet, console_cli, pretix)
INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug, not a mistake of the user (those exit 2)
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}  # the site's to fix, never a bug
BROKEN_PIPE = 141  # 128 + SIGPIPE, what `yes | head -1` reports for `yes`


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what is wrong and where to look, not the whole usage."""

    def error(self, message: str):
        """Exit 2 with one line: what is wrong and where to look (not the whole usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global flags plus every group's subcommands."""
    p = Parser(
        prog="edge-gate", description="Face-recognition gate with a ticket path that always works."
    )
    p.add_argument("--version", action="version", version=f"edge-gate {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an internal error (a bug to report), not just its line",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument(
            "--config",
            type=existing_file,
            help="gate.toml (default firmware_config/gate.toml); relative paths inside it "
            "resolve against its folder",
        )

    for group in GROUPS:
        group.register(sub, common)
    for words, leaf in leaf_commands(p):
        finish_help(" ".join(words), leaf)
    return p


def leaf_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(command words, parser) for every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and words:
        yield words, parser
    for a in subs:
        for name, sp in a.choices.items():
            yield from leaf_commands(sp, (*words, name))


def finish_help(command: str, leaf: argparse.ArgumentParser) -> None:
    """The command's example under its --help, and the shared wording of common flags."""
    leaf.formatter_class = argparse.RawDescriptionHelpFormatter
    if command in EXAMPLES:
        leaf.epilog = f"example:\n  {EXAMPLES[command]}"
    for a in leaf._actions:
        if not a.help and a.dest in COMMON_HELP:
            a.help = COMMON_HELP[a.dest]


# Arguments that may name a file (or match file names): their bytes may be any the file
# system holds. Every other text argument is stored, signed or compared as UTF-8.
MAY_NAME_FILES = {"inputs", "source", "scanner", "replay", "name_file", "pass_id_file",
                  "guardian_file", "persistence_dir", "browser", "include", "exclude",
                  "source_pattern"}  # fmt: skip


def not_utf8_argument(args: argparse.Namespace) -> str | None:
    """The error line for a text argument that is not UTF-8 (bytes from a terminal in another
    encoding reach Python as lone surrogates, which every later encode refuses), or None."""
    for dest, value in vars(args).items():
        if dest in MAY_NAME_FILES:
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    shown = os.fsencode(v).decode("utf-8", "backslashreplace")
                    name = dest if dest in ("ids", "items", "person_id") else "--" + dest
                    return (
                        f"argument {name.replace('_', '-')}: {shown} is not UTF-8 text (fix: "
                        "type it again in a UTF-8 terminal)"
                    )
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-gate` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (argparse printed one line): its status
        return int(e.code or 0)
    if (bad := not_utf8_argument(args)) is not None:
        print(f"edge-gate: error: {bad}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except EdgeGateError as e:
        print(f"edge-gate: error: {for_this_run(str(e), args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-gate audit export | head -1`: the reader has had enough
        return _quiet_broken_pipe()
    except Exception as e:
        if isinstance(e, OSError) and e.errno in DISK_FULL:  # `audit export > f` on a full disk
            where = f" writing {e.filename}" if e.filename else ""
            print(
                f"edge-gate: error: {e.strerror}{where} (fix: free space on the volume written to "
                "(the output's, or the data folder's), then run the command again)",
                file=sys.stderr,
            )
            _quiet_broken_pipe()  # what is still buffered for stdout cannot be written either
            return 2
        if args.debug:
            raise
        print(
            f"edge-gate: internal error: {type(e).__name__}: {e} (run again with --debug for "
            "the traceback and report it)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


def _quiet_broken_pipe() -> int:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    # stdout that is not a file (a test's capture) raises here: nothing to flush then
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
