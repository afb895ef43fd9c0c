"""An operator's first day (issue 21): the ordinary mistakes get one clear line, never a crash.

Each test runs the command as a user does, as a process of its own, and checks what they see.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from edge.cli import main
from edge.gate.audit import AuditLog, AuditRecord

from .helpers import PROJECT_ROOT, edge_gate, make_config


def _one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exit 2 and one line on stderr that names each of `words`."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [x for x in p.stderr.splitlines() if x.startswith("edge-gate")]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# --- crashes and tracebacks ------------------------------------------------------------------


def test_a_closed_stdout_ends_the_command_quietly(tmp_path):
    """`edge-gate audit export | head -1`: no BrokenPipeError, no traceback."""
    cfg = make_config(tmp_path)
    with AuditLog(cfg.resolve(cfg.audit.path)) as log:
        for i in range(3000):
            log.record(AuditRecord(time.time(), "g", "decision", "deny", "ticket", f"T-{i}"))
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "audit",
            "export",
            "--config",
            str(tmp_path / "gate.toml"),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    first = p.stdout.readline()
    p.stdout.close()  # what `head -1` does after its line
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141
    assert first.startswith(b"1\t")
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_a_negative_count_is_one_line_naming_the_flag(tmp_path):
    _one_line_error(edge_gate("bench", "--gallery", "-5", cwd=tmp_path), "--gallery", "-5")
    _one_line_error(edge_gate("enroll", "--templates", "0", "--consent-version", "v", "x.jpg",
                              cwd=tmp_path), "--templates")  # fmt: skip


def test_an_internal_error_is_one_line_and_its_traceback_behind_debug(
    tmp_path, monkeypatch, capsys
):
    make_config(tmp_path)
    cfg = str(tmp_path / "gate.toml")

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(AuditLog, "verify", boom)
    AuditLog(tmp_path / "audit.db").close()
    assert main(["audit", "verify", "--config", cfg]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: disk on fire" in err
    assert "--debug" in err
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["--debug", "audit", "verify", "--config", cfg])


# --- data loss or the wrong person enrolled ---------------------------------------------------


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    p = edge_gate("demo", "--fast", "--workdir", str(keep), cwd=tmp_path)
    _one_line_error(p, str(keep), "not empty")
    assert (keep / "notes.txt").read_text() == "precious"
    assert sorted(x.name for x in keep.iterdir()) == ["notes.txt"]


def test_demo_reruns_in_its_own_folder_and_prints_each_decision_once(tmp_path):
    work = tmp_path / "demo"
    env = {"EDGE_FIXTURES": str(tmp_path / "none")}  # the ticket clip only: quick
    first = edge_gate("demo", "--fast", "--workdir", str(work), cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    p = edge_gate("demo", "--fast", "--workdir", str(work), cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert (work / ".edge-gate-demo").is_file()
    both = p.stdout + p.stderr
    for frame in (8, 33, 58, 83, 108):  # the ticket clip's five decisions
        assert len(re.findall(rf"frame[ =]+{frame}\b", both)) == 1, both
    assert "ERROR" not in p.stderr  # no face path to degrade: the demo is ticket-only then
    assert "1 grants, 4 refusals" in p.stdout  # a fresh ledger: the valid ticket grants again
