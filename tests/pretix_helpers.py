"""A pretix folder made for tests: our own Ed25519 key, event and check-in list (no fixtures)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.tickets.pretix_sig1 import Sig1Ticket, public_key_b64, sign_secret


@dataclass
class Shop:
    """A minimal stand-in for what pretix publishes about one event, written as the API does."""

    root: Path
    keys: list[Ed25519PrivateKey] = field(default_factory=lambda: [Ed25519PrivateKey.generate()])
    timezone: str = "Europe/Berlin"
    checkin_list: dict[str, Any] = field(
        default_factory=lambda: {
            "id": 7,
            "name": "Main gate",
            "all_products": True,
            "limit_products": [],
            "subevent": None,
            "allow_multiple_entries": False,
            "allow_entry_after_exit": True,
            "rules": {},
        }
    )
    revoked: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    event_extra: dict[str, Any] = field(default_factory=dict)

    def secret(self, seed: str = "SeedAbc12", key: int = 0, **fields: Any) -> str:
        """A secret signed like pretix signs one."""
        return sign_secret(Sig1Ticket(seed, **{"item": 1, **fields}), self.keys[key])

    def write(self) -> Path:
        """(Re)write the four files of the lane's pretix folder; returns the folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        event = {
            "slug": "gatenight",
            "timezone": self.timezone,
            "date_from": "2026-06-01T18:00:00+02:00",
            "date_to": None,
            "date_admission": None,
            "valid_keys": {"pretix_sig1": [public_key_b64(k.public_key()) for k in self.keys]},
            **self.event_extra,
        }
        files = {
            "event.json": event,
            "checkinlist.json": self.checkin_list,
            "revokedsecrets.json": [
                {"id": i + 1, "secret": s, "created": "2026-01-01T00:00:00Z"}
                for i, s in enumerate(self.revoked)
            ],
            "blockedsecrets.json": [
                {"id": i + 1, "secret": s, "updated": "2026-01-01T00:00:00Z", "blocked": True}
                for i, s in enumerate(self.blocked)
            ],
        }
        for name, obj in files.items():
            (self.root / name).write_text(json.dumps(obj), encoding="utf-8")
        return self.root
