"""A lane applies what the office signed: revocations, ticket keys, enrollments and deletions.

Each office message must verify against the lane's own ticket issuer keys (tickets.pubkeys) and
carry a sequence number above the last one applied for its subject, so a replayed old message
(an enrollment after its deletion, say) changes nothing. Revocations are appended to the lane's
revocation list and keys written to fleet.keys_dir; the gate re-reads both when they change,
without a restart. People records open only with the site key; every enrollment or deletion is
answered with a retained acknowledgement, which `edge-gate fleet status` counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import tickets as tk
from edge.config import Config
from edge.errors import EdgeGateError
from edge.fleet import messages as msg
from edge.fleet.state import FleetState

log = logging.getLogger(__name__)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class OfficeApplier:
    """Verifies and applies office messages for one lane; queues the acknowledgements to send."""

    def __init__(self, cfg: Config, state: FleetState, audit: Callable[..., None]):
        self.cfg, self.state, self.audit = cfg, state, audit
        self.trusted: list[Ed25519PublicKey] = [
            tk.load_public(cfg.resolve(p)) for p in cfg.tickets.pubkeys
        ]
        self._acks: list[tuple[str, bytes]] = []

    def take_acks(self) -> list[tuple[str, bytes]]:
        """Hand the queued acknowledgements to sync, so the office learns what was applied."""
        out, self._acks = self._acks, []
        return out

    def handle(self, m: msg.Message, now: float) -> None:
        """Apply one office message only if signed and newer, so replays change nothing."""
        if m.type not in msg.SIGNED_TYPES:
            raise msg.MessageError(f"unexpected {m.type!r} message on an office topic")
        msg.verify_signed(m, self.trusted)
        subject = str(m.body.get("person_id", "")) if m.type == msg.PERSON else ""
        if m.seq <= self.state.office_seq(m.type, subject):
            log.info("sync office %s seq=%d already applied", m.type, m.seq)
            return
        if m.type == msg.REVOCATIONS:
            self._revocations(m)
        elif m.type == msg.KEYS:
            self._keys(m)
        else:
            self._person(m, now)
        self.state.set_office_seq(m.type, subject, m.seq)

    def _revocations(self, m: msg.Message) -> None:
        ids = [str(i).strip() for i in m.body.get("revoked", []) if str(i).strip()]
        if not self.cfg.tickets.revocation_list:
            raise msg.MessageError(
                "revocations received but tickets.revocation_list is not set",
                "set tickets.revocation_list in this lane's config",
            )
        path = self.cfg.resolve(self.cfg.tickets.revocation_list)
        new = sorted(set(ids) - tk.load_revocations(path))
        if new:
            tk.revoke(path, new)
        log.info("sync applied revocations new=%d total=%d", len(new), len(ids))

    def _keys(self, m: msg.Message) -> None:
        d = self.cfg.resolve(self.cfg.fleet.keys_dir)
        for pem in m.body.get("pubkeys", []):
            data = str(pem).encode()
            if b"PRIVATE KEY" in data:
                raise msg.MessageError("a published ticket key holds a private key")
            tmp = d / ".incoming.pem"
            _write_atomic(tmp, data)
            try:
                kid = tk.key_id(tk.load_public(tmp)).hex()
            except EdgeGateError as e:
                raise msg.MessageError(f"published ticket key unreadable: {e}") from None
            finally:
                tmp.unlink(missing_ok=True)
            if not (d / f"{kid}.pub").exists():
                _write_atomic(d / f"{kid}.pub", data)
                log.info("sync added ticket key kid=%s", kid)

    def _person(self, m: msg.Message, now: float) -> None:
        from edge.fleet import people

        pid, op = str(m.body.get("person_id", "")), m.body.get("op")
        if not pid.startswith("P-") or op not in ("enroll", "forget"):
            raise msg.MessageError(f"person message with id {pid!r} and op {op!r}")
        if op == "enroll":
            key = people.site_key(self.cfg)
            record = msg.open_for_site(key, self.cfg.fleet.site, pid, str(m.body.get("sealed", "")))
            people.import_record(self.cfg, pid, record)
        else:
            people.forget(self.cfg, pid)
        self.audit(now, "fleet_" + op, f"office seq {m.seq}")
        ack = msg.Message(
            msg.ACK,
            self.cfg.fleet.site,
            self.cfg.fleet.lane,
            m.seq,
            now,
            {"person_id": pid, "op": op, "office_seq": m.seq},
        )
        self._acks.append(
            (msg.topic(self.cfg.fleet.site, "acks", self.cfg.fleet.lane, pid), msg.encode(ack))
        )
