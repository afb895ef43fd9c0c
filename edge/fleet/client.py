"""The MQTT client of a member's `edge-gate sync`, built from `[fleet]`: URL, credentials, TLS.

Plain MQTT 3.1.1 (paho-mqtt), so any broker works: Mosquitto, or a clustered EMQX/HiveMQ/VerneMQ.
A member uses a persistent session (clean_session=False, a fixed client id; the site's broker
makes the client id the login), so the broker keeps QoS 1 messages for it while it is away.
Sync acknowledges a received message (PUBACK) itself, only once it applied and committed it or
refused it on purpose (`manual_ack`): what it held unapplied when it stopped, crashed or lost
power comes again from the session at its next connection, and what it failed to store comes
again when sync resumes the session itself (a goodbye, then the same session again: see
`StoreRetry` in edge/fleet/sync.py).
Only sync connects: with the client id bound to the login, a second connection under the same
login would take over its session.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edge.config import Config
from edge.errors import ConfigError
from edge.keyfiles import read_private


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
    raw = read_private(path, "fleet credentials", "create it: user:password (mode 0600)")
    text = raw.decode("utf-8", "replace").strip()
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ConfigError(f"fleet credentials {path} is not 'username:password'")
    return user, password


def make_client(
    cfg: Config, client_id: str, persistent: bool = True, manual_ack: bool = False
) -> tuple[mqtt.Client, BrokerAddress]:
    """A configured, not yet connected client; with manual_ack, received QoS 1 messages are
    acknowledged only by `client.ack(mid, qos)`."""
    addr = parse_broker(cfg.fleet.broker)
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
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
