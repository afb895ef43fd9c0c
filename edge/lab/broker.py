"""A real Mosquitto on a free loopback port, for tests, demo and bench, configured as a site's.

The config, ACLs and password file come from edge/fleet/brokerconf.py, the same functions a
site uses (`edge-gate fleet broker-config`): per-lane logins, pattern ACLs, client id = login.
Persistence is on, so a restarted broker still holds the lanes' sessions and their queued QoS 1
messages. It listens on 127.0.0.1 only (TLS when given a certificate and key).
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
from edge.fleet.brokerconf import BrokerOptions, mosquitto_conf, write_site_broker

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


class Mosquitto:
    """Start/stop/kill/restart one broker; `users` maps username -> password (None: anonymous)."""

    def __init__(
        self,
        workdir: Path,
        site: str = "+",
        users: dict[str, str] | None = None,
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
    ):
        binary = mosquitto_binary()
        if binary is None:
            raise MosquittoError(MISSING)
        self.binary, self.site, self.users, self.tls = binary, site, users, tls
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.conf = self.dir / "mosquitto.conf"
        self._write_config()

    @property
    def url(self) -> str:
        """The fleet.broker URL that lanes and the office use to reach this broker."""
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        extra = [
            f"log_dest file {self.dir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            extra.append(f"user {getpass.getuser()}")
        opts = BrokerOptions(
            port=self.port,
            bind="127.0.0.1",
            tls_cert=str(self.tls[0]) if self.tls else "",
            tls_key=str(self.tls[1]) if self.tls else "",
            persistence_dir=f"{self.dir}/",
            password_file=str(self.dir / "passwd"),
            acl_file=str(self.dir / "acl"),
            max_queued_messages=1_000_000,
        )
        if self.users is None:  # anonymous: only for a broker no test of access control uses
            text = mosquitto_conf(opts, extra)
            text = text.replace("allow_anonymous false", "allow_anonymous true")
            text = "".join(
                ln + "\n"
                for ln in text.splitlines()
                if not ln.startswith(("password_file", "acl_file", "use_username_as_clientid"))
            )
            self.conf.write_text(text)
            return
        write_site_broker(self.dir, self.site, list(self.users), opts, self.users)
        self.conf.write_text(mosquitto_conf(opts, extra))

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
