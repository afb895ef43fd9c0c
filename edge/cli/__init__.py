"""`edge-gate`: one command per job, mirroring the library (as sqlite-utils does).

Each module in this package registers one command group; a command parses its flags, calls one
library function and prints the result. Errors the product raises on purpose become one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edge import __version__
from edge.cli import audit, fleet, gallery, gate, ledger, measure, pad, tickets
from edge.cli.paths import existing_file
from edge.errors import EdgeGateError

log = logging.getLogger("edge")

# Order of the groups in `edge-gate --help`.
GROUPS = (measure, pad, gate, tickets, ledger, audit, gallery, fleet)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: what is wrong and where to look, not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global flags plus every group's subcommands."""
    p = Parser(
        prog="edge-gate", description="Face-recognition gate with a ticket path that always works."
    )
    p.add_argument("--version", action="version", version=f"edge-gate {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-gate` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (argparse printed one line): its status
        return int(e.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except EdgeGateError as e:
        print(f"edge-gate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
