"""A real Mosquitto on a free loopback port, with a generated config: for tests, demo and bench.

Per-lane credentials (mosquitto_passwd) and topic ACLs: a lane may write only its own
redemptions, heartbeat, audit and acknowledgements; only the office may write office/...;
everyone of the site may read the site. Persistence is on, so a restarted broker still holds
the lanes' sessions and their queued QoS 1 messages. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge.errors import EdgeGateError

MISSING = (
    "mosquitto is not installed"
    " (Debian: apt-get install mosquitto; scripts/setup.sh does it as root)"
)


class MosquittoError(EdgeGateError):
    """Mosquitto is missing or did not start."""


def mosquitto_binary() -> str | None:
    """Find a local mosquitto so demos and tests can run a real broker, or None."""
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    """A free loopback port, so several test brokers never collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def acl_text(site: str = "+") -> str:
    """Topic ACLs: %u is the MQTT username, which is the lane name; site "+" = any site."""
    root = f"edge-gate/{site}"
    return "\n".join(
        [
            "user office",
            f"topic readwrite {root}/#",
            "",
            f"pattern read {root}/#",
            f"pattern write {root}/redemptions/%u",
            f"pattern write {root}/heartbeat/%u",
            f"pattern write {root}/audit/%u/#",
            f"pattern write {root}/acks/%u/#",
            "",
        ]
    )


class Mosquitto:
    """Start/stop/kill/restart one broker; `users` maps username -> password (None: anonymous)."""

    def __init__(
        self, workdir: Path, site: str = "+", users: dict[str, str] | None = None, port: int = 0
    ):
        binary = mosquitto_binary()
        if binary is None:
            raise MosquittoError(MISSING)
        self.binary, self.site, self.users = binary, site, users
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "mosquitto.conf"
        self._write_config()

    @property
    def url(self) -> str:
        """The fleet.broker URL that lanes and the office use to reach this broker."""
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.dir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")
        if self.users is None:
            lines.append("allow_anonymous true")
        else:
            pw = self.dir / "passwords"
            pw.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            os.chmod(pw, 0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
            (self.dir / "acl").write_text(acl_text(self.site))
            lines += ["allow_anonymous false", f"password_file {pw}", f"acl_file {self.dir}/acl"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        """Launch the broker and wait until it listens, so callers never race its start."""
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise MosquittoError(f"mosquitto exited at start: {err.strip()[:300]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise MosquittoError(f"mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again, to test that lanes survive a broker outage."""
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
