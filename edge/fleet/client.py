"""An MQTT client for a lane or the office, built from `[fleet]`: URL, credentials, TLS.

Plain MQTT 3.1.1 (paho-mqtt), so any broker works: Mosquitto, or a clustered EMQX/HiveMQ/VerneMQ.
A lane uses a persistent session (clean_session=False, a fixed client id), so the broker keeps
QoS 1 messages for it while it is away.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from edge.config import Config
from edge.errors import ConfigError, EdgeGateError

log = logging.getLogger(__name__)


class BrokerError(EdgeGateError):
    """The broker cannot be reached or refused the connection."""


@dataclass(frozen=True)
class BrokerAddress:
    """Where fleet.broker points and whether to use TLS, checked once at load."""

    host: str
    port: int
    tls: bool


def parse_broker(url: str) -> BrokerAddress:
    """Turn fleet.broker into an address, failing with a fix instead of at connect time."""
    m = re.fullmatch(r"(mqtts?)://([^/:\s]+)(?::(\d{1,5}))?/?", url)
    if not m:
        raise ConfigError(f"fleet.broker = {url!r} is not mqtt://host:port or mqtts://host:port")
    tls = m.group(1) == "mqtts"
    return BrokerAddress(m.group(2), int(m.group(3) or (8883 if tls else 1883)), tls)


def read_credentials(cfg: Config) -> tuple[str, str] | None:
    """ "username:password" from a systemd credential or a 0600 file; None = anonymous."""
    fl = cfg.fleet
    if not fl.credentials_file:
        return None
    path = cfg.resolve(fl.credentials_file)
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / path.name).is_file():
        path = Path(cred_dir) / path.name
    elif path.is_file() and path.stat().st_mode & 0o077:
        raise ConfigError(f"fleet credentials {path} is readable by others", f"chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(
            f"fleet credentials {path}: {e.strerror}", "create it: user:password"
        ) from None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ConfigError(f"fleet credentials {path} is not 'username:password'")
    return user, password


def make_client(
    cfg: Config, client_id: str, persistent: bool = True
) -> tuple[mqtt.Client, BrokerAddress]:
    """A configured, not yet connected client."""
    addr = parse_broker(cfg.fleet.broker)
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    creds = read_credentials(cfg)
    if creds:
        c.username_pw_set(*creds)
    if addr.tls:
        fl = cfg.fleet
        c.tls_set(
            ca_certs=str(cfg.resolve(fl.tls_ca_file)) if fl.tls_ca_file else None,
            certfile=str(cfg.resolve(fl.tls_cert_file)) if fl.tls_cert_file else None,
            keyfile=str(cfg.resolve(fl.tls_key_file)) if fl.tls_key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    c.reconnect_delay_set(min_delay=1, max_delay=5)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    return c, addr


class OneShot:
    """A short-lived office/reader client: connect, do something, wait for acks, disconnect."""

    def __init__(self, cfg: Config, role: str, timeout_s: float = 10.0):
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.client, self.addr = make_client(
            cfg, f"edge-gate-{cfg.fleet.site}-{role}-{os.getpid()}", persistent=False
        )
        self.connected = threading.Event()
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        self.messages: list[mqtt.MQTTMessage] = []
        self.last_message = time.monotonic()
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.lock:
            self.acked.add(mid)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append(msg)
            self.last_message = time.monotonic()

    def __enter__(self) -> OneShot:
        try:
            self.client.connect(self.addr.host, self.addr.port, keepalive=10)
        except OSError as e:
            raise BrokerError(
                f"broker {self.cfg.fleet.broker}: {e}", "check fleet.broker and that it runs"
            ) from None
        self.client.loop_start()
        if not self.connected.wait(self.timeout_s):
            self.client.loop_stop()
            raise BrokerError(
                f"broker {self.cfg.fleet.broker} did not accept the connection",
                "check fleet.credentials_file and the broker's ACL",
            )
        return self

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if info.mid in self.acked:
                    return
            time.sleep(0.01)
        raise BrokerError(f"broker did not acknowledge {topic}", "check the broker and its ACL")

    def collect(self, filters: list[str], quiet_s: float = 0.5) -> list[mqtt.MQTTMessage]:
        """Subscribe and gather retained messages until none arrived for quiet_s (bounded)."""
        self.client.subscribe([(f, 1) for f in filters])
        self.last_message = time.monotonic()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet_s:
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def __exit__(self, *exc) -> None:
        self.client.disconnect()
        self.client.loop_stop()
