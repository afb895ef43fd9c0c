"""Path arguments checked at parse time, so a wrong path is one clear line and exit 2.

Use them as argparse `type=`: `existing_file`, `nonempty_file`, `file_path`, `existing_dir`,
`new_file`, `output_dir`. Each
returns a `Path`; what they cannot know (the file's format) is left to the loader, which raises a
typed error. Relative paths on the command line mean the current working directory.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

PATH_TYPES: set = set()


def _path_type(fn):
    """Register a path type; a path the system cannot even look at (a name longer than it
    allows, a loop of links) is the same one-line refusal, not a traceback."""

    @functools.wraps(fn)
    def checked(text: str) -> Path:
        try:
            return fn(text)
        except OSError as e:
            raise argparse.ArgumentTypeError(f"{text}: {e.strerror or e}") from None

    PATH_TYPES.add(checked)
    return checked


@_path_type
def existing_file(text: str) -> Path:
    """A regular file that exists and is readable (it may be empty: a revocation list, a config)."""
    p = Path(text).expanduser()
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory, expected a file")
    if not p.is_file():  # reading /dev/zero never ends; a pipe waits for a writer
        raise argparse.ArgumentTypeError(f"{text}: is a device or a pipe, expected a file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable (check its owner and mode)")
    return p


@_path_type
def nonempty_file(text: str) -> Path:
    """An existing, readable file with content (a key, a photo, a clip)."""
    p = existing_file(text)
    if p.stat().st_size == 0:
        raise argparse.ArgumentTypeError(f"{text}: is empty")
    return p


@_path_type
def file_path(text: str) -> Path:
    """A file that may not exist yet (a database to open or create): never a folder, and no
    part of its folder path is a file."""
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory, expected a file")
    for up in p.parents:
        if up.exists():
            if not up.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {up} is a file, not a folder")
            break
    return p


@_path_type
def existing_dir(text: str) -> Path:
    """A directory that exists and can be listed."""
    p = Path(text).expanduser()
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file, expected a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable (check its owner and mode)")
    return p


@_path_type
def new_file(text: str) -> Path:
    """A file to create: it must not exist yet, and its folder must be writable."""
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory, expected a file name")
    if p.exists():
        raise argparse.ArgumentTypeError(f"{text}: already exists; refusing to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: folder {parent} is not writable")
    return p


# Names that are files, not folders: `--out ticket.png` must not create a folder "ticket.png".
FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".pdf", ".txt", ".key", ".pub", ".pem", ".json",
                 ".toml", ".db", ".csv", ".mp4", ".gif", ".svg"}  # fmt: skip


@_path_type
def output_dir(text: str) -> Path:
    """A folder to write into: existing and writable, or creatable under a writable parent
    (never a new folder named like a file: `--out ticket.png`)."""
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a file, expected a directory")
    if not p.exists() and p.suffix.lower() in FILE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text}: names a file, but this option takes a folder (the files are written "
            "inside it)"
        )
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: {probe} is not writable")
    return p
