"""Every command-line option that takes a path: a bad path is one clear line and exit 2.

The sweep walks the real parser, so an option added later with a path type is covered without
a new test; `test_path_options_are_typed` keeps path-like options from being added untyped.
"""

from __future__ import annotations

import argparse
import os

import pytest

from edge.cli import build_parser, main
from edge.cli.paths import (
    PATH_TYPES,
    existing_dir,
    existing_file,
    file_path,
    new_file,
    nonempty_file,
    output_dir,
)


def _walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Yield (argv prefix, action) for every action of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*prefix, name))
        else:
            yield prefix, action


def _path_actions():
    return [(pre, a) for pre, a in _walk(build_parser()) if a.type in PATH_TYPES]


@pytest.fixture()
def bad(tmp_path):
    """Paths each path type must refuse, by type and name of the case."""
    d = tmp_path / "a-dir"
    d.mkdir()
    f = tmp_path / "a-file"
    f.write_bytes(b"\x00\xff" * 8)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    cases = {
        existing_file: {"missing": tmp_path / "nope", "directory": d},
        nonempty_file: {"missing": tmp_path / "nope", "directory": d, "empty": empty},
        file_path: {"directory": d, "under a file": f / "x.db"},
        existing_dir: {"missing": tmp_path / "nope", "file": f},
        new_file: {"directory": d, "existing": f, "no folder": tmp_path / "no" / "such" / "x"},
        output_dir: {"file": f},
    }
    for by_name in cases.values():  # the system cannot even look at it (ENAMETOOLONG)
        by_name["name too long"] = tmp_path / ("n" * 300)
    pipe = tmp_path / "a-pipe"
    os.mkfifo(pipe)  # opening it to read would wait for a writer forever
    for t in (existing_file, nonempty_file):
        cases[t]["pipe"] = pipe
        if os.path.exists("/dev/zero"):
            cases[t]["device"] = "/dev/zero"  # reading it never ends
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked"
        locked.write_text("x")
        locked.chmod(0)
        cases[existing_file]["unreadable"] = locked
        cases[nonempty_file]["unreadable"] = locked
    return cases


def test_there_are_path_options_to_sweep():
    names = {(" ".join(pre), a.dest) for pre, a in _path_actions()}
    assert ("eval", "dir") in names
    assert ("bench", "clip") in names
    assert ("run", "config") in names


def test_every_path_option_refuses_bad_paths_in_one_line(bad, capsys):
    wrong = []
    for pre, action in _path_actions():
        for why, path in bad[action.type].items():
            opt = [action.option_strings[0]] if action.option_strings else []
            argv = [*pre, *opt, str(path)]
            rc = main(argv)
            err = capsys.readouterr().err.strip().splitlines()
            where = f"{' '.join(argv)} ({why})"
            if rc != 2:
                wrong.append(f"{where}: exit {rc}")
            elif any("Traceback" in line for line in err):
                wrong.append(f"{where}: traceback")
            elif not (err and err[-1].startswith("edge-gate") and str(path) in err[-1]):
                wrong.append(f"{where}: last line {err[-1:]}")
    assert wrong == []


def test_a_config_that_is_not_toml_is_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "gate.toml"
    cfg.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    rc = main(["doctor", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert str(cfg) in err


# Option names that hold a path; each must have a path type (so the sweep above covers it).
PATHLIKE = ("file", "dir", "db", "key", "pubkey", "out", "list", "revocations", "events",
            "workdir", "clip", "enroll", "images", "pubkeys", "folder", "config")  # fmt: skip
NOT_PATHS = {("run", "source"), ("run", "scanner")}  # a device, a number or "stdin" too
NOT_PATHS |= {("fleet broker-config", "persistence_dir")}  # a folder on the broker's machine
NOT_PATHS |= {
    (cmd, f"{d}_file") for cmd in ("enroll", "pass edit") for d in ("name", "pass_id", "guardian")
}
# the personal-detail files also take "-" (stdin); tests/test_cli_personal.py covers them


def test_path_options_are_typed():
    untyped = []
    for pre, a in _walk(build_parser()):
        name = a.dest.replace("-", "_")
        if a.type in PATH_TYPES or (" ".join(pre), a.dest) in NOT_PATHS:
            continue
        if a.nargs == 0 or isinstance(a.default, bool) or a.dest == "help":
            continue
        if any(name == w or name.endswith("_" + w) for w in PATHLIKE):
            untyped.append(f"{' '.join(pre)} {a.dest}")
    assert untyped == []


def test_every_command_has_an_example_and_every_flag_a_help_line(capsys):
    from edge.cli import leaf_commands

    missing = []
    for words, leaf in leaf_commands(build_parser()):
        if not (leaf.epilog or "").startswith("example:"):
            missing.append(f"{' '.join(words)}: no example")
        missing += [f"{' '.join(words)} {a.dest}: no help" for a in leaf._actions if not a.help]
    assert missing == []
    assert main(["enroll", "--help"]) == 0
    out = capsys.readouterr().out
    assert "YYYY-MM-DD" in out  # the --valid-until format is documented
    assert "example:\n  edge-gate enroll" in out
