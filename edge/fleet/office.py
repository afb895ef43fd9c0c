"""The office side of the fleet: publish signed revocations, keys and people; read status, audit.

Office messages are retained, so a lane that was away gets the latest of each when it comes
back: the full revocation list, the current key set, and for each person the latest enrollment
or deletion. The sequence number is the office clock in milliseconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edge import tickets as tk
from edge.config import Config
from edge.errors import ConfigError
from edge.fleet import messages as msg
from edge.fleet.client import OneShot


def need_fleet(cfg: Config) -> None:
    """Refuse a fleet command on a gate without a [fleet] section, saying what to add."""
    if not cfg.fleet.enabled:
        raise ConfigError(
            f"{cfg.source_file or '<defaults>'}: no [fleet] broker configured",
            "add a [fleet] section with broker, site and lane (docs/FLEET.md)",
        )


def _office_message(cfg: Config, type_: str, body: dict, key_path: Path) -> msg.Message:
    now = time.time()
    m = msg.Message(type_, cfg.fleet.site, msg.OFFICE, int(now * 1000), now, body)
    return msg.sign(m, tk.load_private(key_path))


def publish(cfg: Config, topic: str, m: msg.Message) -> None:
    """Send one retained office message, so lanes that are offline get it later."""
    need_fleet(cfg)
    with OneShot(cfg, "office") as c:
        c.publish(topic, msg.encode(m), retain=True)


def publish_revocations(cfg: Config, key_path: Path, revoked: frozenset[str]) -> int:
    """Publish the office's whole revocation list; lanes add what they lack."""
    m = _office_message(cfg, msg.REVOCATIONS, {"revoked": sorted(revoked)}, key_path)
    publish(cfg, msg.topic(cfg.fleet.site, "office", "revocations"), m)
    return len(revoked)


def publish_keys(cfg: Config, key_path: Path, pubkeys: list[Path]) -> None:
    """Publish ticket public keys (e.g. a new issuer key before rotation), signed by the office."""
    pems = []
    for p in pubkeys:
        tk.load_public(p)  # refuses private keys and garbage
        pems.append(p.read_text())
    m = _office_message(cfg, msg.KEYS, {"pubkeys": pems}, key_path)
    publish(cfg, msg.topic(cfg.fleet.site, "office", "keys"), m)


def publish_person(
    cfg: Config, key_path: Path, person_id: str, op: str, record: bytes | None = None
) -> None:
    """Enrollment (record sealed for the site) or deletion of one person, to every lane."""
    body: dict[str, Any] = {"person_id": person_id, "op": op}
    if op == "enroll":
        from edge.fleet.people import site_key

        body["sealed"] = msg.seal_for_site(site_key(cfg), cfg.fleet.site, person_id, record or b"")
    m = _office_message(cfg, msg.PERSON, body, key_path)
    publish(cfg, msg.topic(cfg.fleet.site, "office", "people", person_id), m)


def publish_enrollment(cfg: Config, key_path: Path, db: Path, gallery_key: Path, pid: str) -> None:
    """Export one person from the office gallery and send it, sealed, to every lane."""
    from edge.fleet.people import export_record

    publish_person(cfg, key_path, pid, "enroll", export_record(db, gallery_key, pid))


def _read(cfg: Config, filters: list[str], timeout_s: float = 10.0) -> list[msg.Message]:
    need_fleet(cfg)
    out = []
    with OneShot(cfg, "reader", timeout_s) as c:
        for raw in c.collect(filters):
            try:
                out.append(msg.decode(raw.payload, cfg.fleet.site))
            except msg.MessageError:
                continue
    return out


def fleet_status(cfg: Config, now: float | None = None) -> dict[str, Any]:
    """Lanes (last heartbeat), and for each person the latest office action and its acks."""
    now = time.time() if now is None else now
    got = _read(cfg, status_filters(cfg.fleet.site))
    return status_of(cfg.fleet.site, got, now)


def status_filters(site: str) -> list[str]:
    """The topics `fleet status` reads: heartbeats, acks and the office's people messages."""
    t = msg.topics(site)
    return [t["heartbeat"], t["acks"], msg.topic(site, "office", "people", "+")]


def status_of(site: str, got: list[msg.Message], now: float) -> dict[str, Any]:
    """`fleet status` from messages already read (the CLI's one-shot read, the console's feed)."""
    lanes = {
        m.lane: {"age_s": round(now - m.time, 1), **m.body} for m in got if m.type == msg.HEARTBEAT
    }
    acks: dict[str, dict[str, dict]] = {}
    for m in got:
        if m.type == msg.ACK:
            acks.setdefault(str(m.body.get("person_id")), {})[m.lane] = m.body
    people = {}
    for m in got:
        if m.type != msg.PERSON:
            continue
        pid, op = str(m.body.get("person_id")), str(m.body.get("op"))
        done = sorted(
            lane
            for lane, a in acks.get(pid, {}).items()
            if a.get("op") == op and int(a.get("office_seq", -1)) >= m.seq
        )
        word = "forgotten" if op == "forget" else "enrolled"
        people[pid] = {
            "op": op,
            "lanes_done": done,
            "summary": f"{word} on {len(done)} of {len(lanes)} lanes",
        }
    return {"site": site, "lanes": lanes, "people": people}


def fleet_audit(cfg: Config, since: float = 0.0) -> list[dict[str, Any]]:
    """Every lane's audit records kept on the broker, oldest first, from `since` on."""
    got = _read(cfg, [msg.topics(cfg.fleet.site)["audit"]])
    return sorted(
        (r for m in got if (r := audit_row(m)) and float(r.get("t", 0)) >= since),
        key=lambda r: (r.get("t", 0), r["lane"], r["seq"]),
    )


def audit_row(m: msg.Message) -> dict[str, Any] | None:
    """One lane audit record as `fleet audit` prints it, or None for another kind of message."""
    return {"lane": m.lane, "seq": m.seq, **m.body} if m.type == msg.AUDIT else None
