"""Evidence defects: an evidence key that cannot be made is said as such."""

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
        env=this_checkout(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "KeyFileError" in run.stdout, run.stdout + run.stderr
    assert "cannot be written" in run.stdout, run.stdout
    assert "restore it from the lane's backup" not in run.stdout
    assert not key.exists()


def test_a_witness_damaged_to_non_text_refuses_tickets_and_does_not_stop_the_gate(tmp_path, capsys):
    """The witness beside the evidence key, damaged to bytes that are not UTF-8 (bit rot on an
    SD card): before, reading it raised a bare UnicodeDecodeError, so the gate did not start at
    all (a traceback, then systemd's restart loop) and `ticket verify --redeem` was an internal
    error. Like a witness damaged any other way, it now refuses tickets with the fix, and the
    gate runs (faces, the audit log)."""
    import json
    import time

    from gpiozero.pins.mock import MockFactory

    from edge import tickets as tk
    from edge.cli import main
    from edge.evidence import Witness, key_path, load_key
    from edge.gate.daemon import Gate

    from .helpers import ListSource, make_config

    cfg = make_config(tmp_path)
    cfg_path = tmp_path / "gate.toml"
    key = tk.load_private(tmp_path / "office" / "issuer.key")
    first = tk.sign(tk.Ticket("T-1", "day", 0, int(time.time()) + 3600), key)
    assert main(["ticket", "verify", "--config", str(cfg_path), "--redeem", first]) == 0
    witness = Witness(load_key(key_path(cfg))).path
    assert witness.exists()
    witness.write_bytes(b"\xff\xfe\x00 not text")
    capsys.readouterr()
    second = tk.sign(tk.Ticket("T-2", "day", 0, int(time.time()) + 3600), key)
    rc = main(["ticket", "verify", "--config", str(cfg_path), "--redeem", "--json", second])
    out, err = capsys.readouterr()
    assert "internal error" not in err
    assert rc in (1, 2) and "witness" in out + err
    if rc == 1:
        assert json.loads(out.strip().splitlines()[-1])["reason"] == "ledger_error"
    with Gate(cfg, source=ListSource([]), pin_factory=MockFactory()) as gate:
        assert "witness" in gate.ledger.problem


def this_checkout() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's `edge`."""
    import os
    from pathlib import Path

    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
