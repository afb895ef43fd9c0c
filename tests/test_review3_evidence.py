"""Evidence defects found in review: an evidence key that cannot be made is said as such."""

from __future__ import annotations

import subprocess
import sys

MAKE_KEY_ON_A_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from edge.errors import KeyFileError
from edge.evidence import lane_key

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
try:
    lane_key(Path(sys.argv[1]), "create")
except KeyFileError as e:
    print("KeyFileError", e)
"""


def test_an_evidence_key_that_cannot_be_written_says_why(tmp_path):
    """On a lane's first run the gate makes its evidence key; when that write failed (a full
    disk, a folder it may not write) the error was swallowed and the gate refused to start with
    "evidence key does not exist: restore it from the lane's backup", which sends the operator
    after a backup that never existed instead of the disk."""
    key = tmp_path / "state" / "evidence.key"
    key.parent.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", MAKE_KEY_ON_A_FULL_DISK, str(key)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "KeyFileError" in run.stdout, run.stdout + run.stderr
    assert "cannot be written" in run.stdout, run.stdout
    assert "restore it from the lane's backup" not in run.stdout
    assert not key.exists()
