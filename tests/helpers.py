"""Helpers shared by several test files (pytest fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.config import PROJECT_ROOT
from edge.gate.daemon import Gate
from edge.gate.sources import Frame, FrameSource
from edge.tickets.ledger import init_ledger

MODELS = PROJECT_ROOT / "models"
FLEET_SITE = "park-x"  # the site of the lane in the `lane_inbox` fixture (conftest.py)


def fuzz(examples: int) -> int:
    """Hypothesis example count, scaled down by EDGE_FUZZ_SCALE where Python runs emulated."""
    return max(10, int(examples * float(os.environ.get("EDGE_FUZZ_SCALE", "1"))))


def kill_at_random(script: str, rounds: int, seed: int, max_delay: float, after_each=None) -> None:
    """Start `script` (prints a line once ready), SIGKILL it at a random delay, `rounds` times."""
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    for _ in range(rounds):
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
        p.stdout.readline()
        time.sleep(rng.uniform(0, max_delay))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        if after_each is not None:
            after_each()


def ten_fps_camera(factory, reconnect_max_s: float = 0.2):
    """A CameraSource on a scripted capture factory, on a 10 fps camera's clock (one frame
    period per read, however slowly this machine processes frames: on the real clock a loaded
    machine spaces two frames of one held-up ticket further apart than the cooldown, and the
    ticket is decided twice); and the camera's states as the gate saw them between two reads."""
    from edge.gate.sources import CameraSource

    states: list[str] = []
    t, made = [0.0], []

    def clock() -> float:
        states.append(made[0].state if made else "opening")
        t[0] += 0.1
        return t[0]

    made.append(
        CameraSource(
            "/dev/video0", capture_factory=factory, reconnect_max_s=reconnect_max_s, clock=clock
        )
    )
    return made[0], states


class PiCameras:
    """picamera2's Picamera2 as the source uses it, one scripted camera per construction: a
    list of frames and exceptions, or an exception raised when it is constructed (no camera)."""

    def __init__(self, script):
        self.script, self.made = list(script), []

    def __call__(self):
        item = self.script.pop(0) if self.script else IndexError("list index out of range")
        if isinstance(item, Exception):
            raise item
        cam = _PiCamera(item)
        self.made.append(cam)
        return cam


class _PiCamera:
    def __init__(self, frames):
        self.frames = list(frames)
        self.started = self.stopped = self.closed = False

    def create_video_configuration(self, main):
        return main

    def configure(self, conf):
        self.conf = conf

    def start(self):
        self.started = True

    def capture_array(self):
        item = self.frames.pop(0) if self.frames else RuntimeError("Camera frontend has timed out")
        if isinstance(item, Exception):
            raise item
        return item

    def stop(self):
        self.stopped = True

    def close(self):
        self.closed = True


class FakeCapture:
    """Stands in for cv2.VideoCapture: a scripted list of frames, None for a failed read."""

    def __init__(self, script):
        self.script = list(script)
        self.opened = True

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        if not self.script:
            return False, None
        item = self.script.pop(0)
        return (item is not None), item

    def set(self, *a):
        return True

    def get(self, *a):
        return 10.0

    def release(self):
        self.opened = False


INSTALLER = PROJECT_ROOT / "scripts" / "install-pi.sh"


def installer_sed_expressions() -> list[str]:
    """The `-e 's#...'` expressions with which install-pi.sh writes gate.toml on a new install."""
    script = INSTALLER.read_text()
    block = script.split("if [ ! -f /etc/edge-gate/gate.toml ]; then", 1)[1].split("\nfi\n", 1)[0]
    return re.findall(r"-e '(s#[^']+)'", block)


def installed_gate_toml() -> str:
    """gate.toml as install-pi.sh writes it: its own sed expressions on the shipped file."""
    args = [a for e in installer_sed_expressions() for a in ("-e", e)]
    return subprocess.run(
        ["sed", *args, str(PROJECT_ROOT / "firmware_config" / "gate.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def make_config(tmp: Path, extra: str = "") -> config_mod.Config:
    if not (tmp / "office" / "issuer.key").exists():
        tk.keygen(tmp / "office")
    p = tmp / "gate.toml"
    p.write_text(
        '[gate]\nid = "test-gate"\n'
        + extra
        + '\n[gallery]\ndb = "gallery.db"\nkey_file = "gallery.key"\n'
        '[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        'revocation_list = "revoked.txt"\n'
        '[relay]\npin_factory = "mock"\npulse_s = 0.3\n[audit]\npath = "audit.db"\n'
    )
    cfg = config_mod.load(p)
    init_ledger(cfg.resolve(cfg.tickets.ledger))
    (tmp / "revoked.txt").touch()
    return cfg


def enroll_lin(cfg, fixtures, pipeline) -> str:
    from edge.gallery.crypto import init_key
    from edge.gallery.enroll import enroll
    from edge.gallery.store import Consent, Gallery

    with Gallery(cfg.resolve(cfg.gallery.db), init_key(cfg.resolve(cfg.gallery.key_file))) as g:
        pid, _ = enroll(
            g,
            pipeline,
            "Lin-Manuel Miranda",
            Consent("v1"),
            [str(fixtures / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png")],
            threshold=pipeline.spec.threshold,
            min_templates=1,
        )
    return pid


def empty_gallery(cfg) -> None:
    from edge.gallery.crypto import init_key
    from edge.gallery.store import Gallery

    with Gallery(cfg.resolve(cfg.gallery.db), init_key(cfg.resolve(cfg.gallery.key_file))):
        pass


def events(path: Path, kind: str = "via") -> list[dict]:
    """The lines of a `run --events` file: decisions ("via"), or visitor notices ("notice")."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if kind in e]


def run_gate(cfg, clip, tmp, **kw) -> tuple[Gate, list[dict]]:
    """Run the gate on a clip with a mock relay; returns the gate and its decision events."""
    got: list[dict] = []
    cfg = config_mod.override(cfg, camera={"source": str(clip), "realtime": False})
    with Gate(cfg, got.append, pin_factory=MockFactory(), **kw) as gate:
        assert gate.run() == 0
    return gate, got


class ScannerLines:
    """Lines for a Gate's scanner; `done` is set once the gate's reader thread has queued them
    all (it asks for the next line only after queueing the last one)."""

    def __init__(self, lines):
        self.lines = list(lines)
        self.done = threading.Event()

    def __iter__(self):
        yield from self.lines
        self.done.set()


class FramesUntilScanned(FrameSource):
    """A camera showing `frame` until the scanner's lines were all decided, then the end.

    The gate drains its scanner queue on every frame: one frame after `done` is set, every line
    has been decided, however long the reader thread took to start on a loaded machine. The
    pace is a camera's; `bound_s` only ends a run whose lines never come (the test then fails
    on its decisions)."""

    def __init__(self, frame, done: threading.Event, pace_s: float = 0.01, bound_s: float = 120):
        self.frame, self.done, self.pace_s = frame, done, pace_s
        self.i, self.state = 0, "open"
        self._last = False
        self._deadline = time.monotonic() + bound_s

    def read(self):
        if self._last or time.monotonic() > self._deadline:
            self.finished, self.state = True, "finished"
            return None
        self._last = self.done.is_set()
        time.sleep(self.pace_s)  # a camera's frame interval: the loop does not spin
        f = Frame(self.frame, self.i / 10, self.i)
        self.i += 1
        return f


class ListSource(FrameSource):
    """Frames from a list; optionally calls a hook before a given frame (to hang or signal)."""

    def __init__(self, frames, hook_at=None, hook=None):
        self.frames, self.i, self.state = frames, 0, "open"
        self.hook_at, self.hook = hook_at, hook

    def read(self):
        if self.i == self.hook_at:
            self.hook()
        if self.i >= len(self.frames):
            self.finished, self.state = True, "finished"
            return None
        f = Frame(self.frames[self.i], self.i / 10, self.i)
        self.i += 1
        return f


def edge_gate(*args: str, cwd: Path, stdin: str | None = None, timeout: float = 300, env=None):
    """`edge-gate ARGS` as a user runs it (a process of its own); its stderr holds no traceback."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})},
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p


def notify_messages(server) -> tuple[list[str], threading.Thread]:
    """What a gate sends systemd's notify socket `server`, received as systemd does while the
    gate runs, until it says STOPPING=1 (bounded: a broken gate fails the test's own checks)."""
    msgs: list[str] = []

    def receive() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (msgs and msgs[-1] == "STOPPING=1"):
            with contextlib.suppress(TimeoutError):
                msgs.append(server.recv(4096).decode())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    return msgs, reader


def hold_write_lock(db: Path) -> subprocess.Popen:
    """Another process holding the file's write lock until its stdin closes."""
    code = (
        "import sqlite3, sys\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "c.execute('ROLLBACK')\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite file (what a backup tool does)."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()
