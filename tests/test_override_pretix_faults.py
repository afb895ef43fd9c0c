"""Fail-closed edges of the supervisor's override inbox and of the pretix offline path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import ConfigError
from edge.fleet import messages as msg
from edge.fleet.override import INVALID, REPLAYED, VIA, override_body
from edge.fleet.state import CLOCK_SKEW, FleetState
from edge.gate.daemon import Gate
from edge.pretix.sync import PretixSync
from edge.tickets import pretix_offline as po
from edge.tickets.ledger import init_ledger

from .console_harness import NoFrames
from .helpers import FLEET_SITE, make_config
from .pretix_helpers import Shop

# --- pretix -------------------------------------------------------------------------------------


class ShopAPI:
    """The shop's API as `pretix sync` reads it, answered from a `Shop` (no network). The
    revoked and blocked secrets it lists since a stamp are those `created` after it."""

    def __init__(self, shop: Shop):
        self.shop = shop
        self.revoked: list[dict[str, Any]] = []

    def revoke(self, secret: str, created: str) -> None:
        self.revoked.append({"id": len(self.revoked) + 1, "secret": secret, "created": created})

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        shop = self.shop.write()
        return json.loads((shop / "event.json").read_text())

    def pages(self, path: str, params: dict[str, Any] | None = None):
        params = params or {}
        if path.endswith("checkinlists/"):
            yield [self.shop.checkin_list]
        elif path.endswith("items/"):
            yield [{"id": 1}]
        elif path.endswith("revokedsecrets/"):
            since = params.get("created_since") or ""
            yield sorted(
                (o for o in self.revoked if o["created"] > since),
                key=lambda o: o["created"],
                reverse=True,
            )
        elif path.endswith("blockedsecrets/"):
            yield []
        else:
            raise AssertionError(path)

    def post(self, path: str, body: Any, idempotency_key: str | None = None) -> Any:
        raise AssertionError("nothing to upload")


def _pretix_lane(tmp_path: Path) -> config_mod.Config:
    (tmp_path / "gate.toml").write_text(
        f'[gate]\nid = "lane-1"\n[tickets]\nledger = "{tmp_path / "ledger.db"}"\n[pretix]\n'
        f'dir = "{tmp_path / "px"}"\nurl = "http://127.0.0.1:1"\norganizer = "org"\n'
        'event = "gatenight"\ncheckin_list = 7\n'
    )
    init_ledger(tmp_path / "ledger.db")
    return config_mod.load(tmp_path / "gate.toml")


def test_a_revoked_list_that_does_not_read_is_pulled_again_in_full(tmp_path):
    """Before: with a sync-state saying the folder was complete, a revokedsecrets.json that did
    not read (damaged, cut short) was taken for an empty list and only the secrets revoked since
    the last pull were written back: every earlier revocation was gone and those tickets were
    valid again. Now such a file costs a full download and every revocation stays."""
    shop = Shop(tmp_path / "shop")
    api = ShopAPI(shop)
    old, new = shop.secret("OldRevoked1"), shop.secret("NewRevoked1")
    api.revoke(old, "2026-01-01T00:00:00Z")
    cfg = _pretix_lane(tmp_path)
    sync = PretixSync(cfg, client=api)  # type: ignore[arg-type]
    assert sync.step()
    folder = tmp_path / "px"
    assert po.check_secret(po.load_dir(folder), old, 1_780_000_000).reason == "revoked"
    (folder / "revokedsecrets.json").write_text('[{"id": 1, "secret": "')  # cut short
    api.revoke(new, "2026-02-01T00:00:00Z")
    assert sync.step()
    data = po.load_dir(folder)
    assert po.check_secret(data, new, 1_780_000_000).reason == "revoked"
    assert po.check_secret(data, old, 1_780_000_000).reason == "revoked"


# --- the supervisor's override ------------------------------------------------------------------

SITE = FLEET_SITE


def _override(key, lane: str, signed_at: float, valid_s: float = 30.0) -> bytes:
    body = override_body(lane, "wheelchair user", "sam", signed_at, valid_s)
    m = msg.Message(msg.OVERRIDE, SITE, msg.OFFICE, 7, signed_at, body)
    return msg.encode(msg.sign(m, key))


def test_a_lane_whose_clock_is_off_from_the_fleets_refuses_overrides(lane_inbox):
    """Before: the gate judged an override by its own clock alone, so a lane whose clock was
    ten minutes behind the fleet's (sync had measured it: tickets were refused `clock_skew`)
    opened for an override the broker held back for ten minutes, long past its 30 s. Now a
    lane whose clock is off by more than fleet.max_clock_offset_s refuses every override
    `clock_skew`, as it refuses tickets."""
    key, st, box = lane_inbox
    fleet_now = 1_800_000_000.0
    behind = 600.0
    st.put(clock_offset=-behind, connected=True, last_contact=fleet_now - behind)
    payload = _override(key, "lane1", fleet_now - 600)  # signed ten minutes ago, valid 30 s
    st.add_override(payload, fleet_now - behind)
    [v] = box.take(fleet_now - behind)  # the lane's clock
    assert (v.ok, v.reason) == (False, CLOCK_SKEW)
    assert v.subject.startswith("O-")
    box._next = 0.0
    st.put(clock_offset=-1.0)  # the clock set right: a fresh override opens once
    st.add_override(_override(key, "lane1", fleet_now), fleet_now)
    assert [(v.ok, v.reason) for v in box.take(fleet_now + 1)] == [(True, VIA)]


def _lane_gate_config(tmp_path: Path) -> config_mod.Config:
    """A fleet lane, ticket-only, whose gate runs without a broker (sync is not needed to hand
    it an override: the test writes into fleet.db as sync does)."""
    cfg = make_config(
        tmp_path,
        '[vision]\nface_enabled = false\n[fleet]\nbroker = "mqtt://127.0.0.1:1"\n'
        f'site = "{SITE}"\nlane = "lane1"\nstate_db = "fleet.db"\n',
    )
    FleetState(tmp_path / "fleet.db").close()
    return cfg


def _deliver(state_db: Path, payload: bytes, now: float) -> None:
    """What the lane's sync does with an override it received."""
    st = FleetState(state_db)
    try:
        st.add_override(payload, now)
    finally:
        st.close()


def test_an_override_spent_before_fleet_db_was_made_anew_does_not_open_again(tmp_path):
    """Before: the nonce of an override that opened the lane lived only in fleet.db, so after
    fleet.db was moved aside and made anew (its documented fix when damaged) the same override
    delivered again within its validity (the broker's session sending an unacknowledged message
    again) opened the lane a second time. Now the gate also finds the grant in its audit log and
    refuses it `override_replayed`."""
    cfg = _lane_gate_config(tmp_path)
    key = tk.load_private(tmp_path / "office" / "issuer.key")
    now = time.time()
    payload = _override(key, "lane1", now)
    got: list[dict] = []
    with Gate(cfg, got.append, source=NoFrames(), pin_factory=MockFactory()) as gate:
        _deliver(tmp_path / "fleet.db", payload, now)
        gate.take_overrides()
        assert gate.relay.pulses == 1
    for suffix in ("", "-wal", "-shm"):  # moved aside: sync makes it anew
        Path(f"{tmp_path / 'fleet.db'}{suffix}").unlink(missing_ok=True)
    FleetState(tmp_path / "fleet.db").close()
    with Gate(cfg, got.append, source=NoFrames(), pin_factory=MockFactory()) as gate:
        _deliver(tmp_path / "fleet.db", payload, now + 5)  # delivered again
        gate.take_overrides()
        assert gate.relay.pulses == 0
    assert [(e["decision"], e["reason"]) for e in got] == [
        ("grant", VIA),
        ("deny", REPLAYED),
    ]


def test_a_pretix_file_replaced_while_the_gate_starts_is_read_again(tmp_path, monkeypatch):
    """Before: the gate read the pretix folder, then noted the files' stamp; a file that sync
    replaced in between (a secret revoked just then) was taken as already read, so the gate
    kept deciding from the older list until some later change: the revoked ticket opened the
    gate. Now the stamp is taken before the folder is read, and the next tick reads it again."""
    shop = Shop(tmp_path / "px")
    secret = shop.secret("Revoked0001")
    shop.write()
    cfg = make_config(tmp_path, f'[vision]\nface_enabled = false\n[pretix]\ndir = "{shop.root}"\n')
    load = Gate._load_tickets

    def load_then_sync_writes(c):
        verifier = load(c)
        shop.revoked = [secret]
        shop.write()  # sync's round lands right after the gate read the folder
        return verifier

    monkeypatch.setattr(Gate, "_load_tickets", staticmethod(load_then_sync_writes))
    with Gate(cfg, source=NoFrames(), pin_factory=MockFactory()) as gate:
        monkeypatch.setattr(Gate, "_load_tickets", staticmethod(load))
        gate.tick(0.0)  # once a second: a changed folder is read again
        assert gate.verifier.verify(secret, time.time()).reason == "revoked"


@pytest.mark.parametrize(
    ("setting", "says"),
    [('event = "summer27"', "event 'gatenight'"), ("checkin_list = 9", "check-in list 7")],
)
def test_a_pretix_folder_of_another_event_or_list_than_configured_is_refused(
    tmp_path, setting, says
):
    """Before: the gate decided from whatever the folder held. A lane moved to another event
    or check-in list (one admitting fewer products) kept admitting by the old event's keys and
    the old list while sync could not pull the new one (the shop unreachable, the list not yet
    made): the config said one list, the lane let in by another. Now a folder whose event or
    list is not the configured one is refused as incomplete data (the gate does not start, a
    reload keeps what is in force) until `pretix sync` has pulled the configured ones."""
    shop = Shop(tmp_path / "px")
    shop.write()
    cfg = make_config(
        tmp_path,
        f'[vision]\nface_enabled = false\n[pretix]\ndir = "{shop.root}"\n{setting}\n',
    )
    with pytest.raises(ConfigError, match=says):
        Gate(cfg, source=NoFrames(), pin_factory=MockFactory())


def test_an_issuer_key_taken_out_of_the_config_opens_no_override_after_a_reload(tmp_path):
    """Before: a reload (SIGHUP) rebuilt the ticket verifier from tickets.pubkeys but the
    override inbox kept the key files of the start: an issuer key the operator had taken out
    (a stolen office key) still signed overrides that opened the lane until a restart. Now the
    inbox takes the reloaded settings too, and such an override is refused `override_invalid`."""
    cfg = _lane_gate_config(tmp_path)
    old_priv, old_pub = tk.keygen(tmp_path / "old")
    toml = Path(cfg.source_file)
    both = f'pubkeys = ["{old_pub}", "office/issuer.pub"]'
    toml.write_text(toml.read_text().replace('pubkeys = ["office/issuer.pub"]', both))
    cfg = config_mod.load(toml)
    got: list[dict] = []
    with Gate(cfg, got.append, source=NoFrames(), pin_factory=MockFactory()) as gate:
        toml.write_text(toml.read_text().replace(both, 'pubkeys = ["office/issuer.pub"]'))
        gate.reload()
        assert not gate.reload_error
        now = time.time()
        _deliver(tmp_path / "fleet.db", _override(tk.load_private(old_priv), "lane1", now), now)
        gate.take_overrides()
        assert gate.relay.pulses == 0
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", INVALID)]


def test_a_lane_moved_to_another_event_pulls_its_revoked_secrets_in_full(tmp_path):
    """Before: sync asked the new event only for the secrets revoked since the newest one of
    the old event (its sync-state), so the new event's tickets revoked before that moment
    were never written to the folder and opened the gate. Now a pull for another shop, organizer
    or event than the last one downloads the revoked and blocked secrets in full."""
    old_shop = Shop(tmp_path / "old")
    old_api = ShopAPI(old_shop)
    old_api.revoke(old_shop.secret("OldEvent001"), "2026-03-01T00:00:00Z")
    cfg = _pretix_lane(tmp_path)
    assert PretixSync(cfg, client=old_api).step()  # type: ignore[arg-type]
    new_shop = Shop(tmp_path / "new", event_extra={"slug": "summer27"})
    new_api = ShopAPI(new_shop)
    revoked = new_shop.secret("NewEvent001")
    new_api.revoke(revoked, "2026-02-01T00:00:00Z")  # before the old event's newest
    toml = Path(cfg.source_file)
    toml.write_text(toml.read_text().replace('event = "gatenight"', 'event = "summer27"'))
    cfg = config_mod.load(toml)
    assert PretixSync(cfg, client=new_api).step()  # type: ignore[arg-type]
    data = po.load_dir(tmp_path / "px")
    assert data.event.slug == "summer27"
    assert po.check_secret(data, revoked, 1_780_000_000).reason == "revoked"
