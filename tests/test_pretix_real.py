"""The lane against a real pretix: pull, decide offline, upload, outlive the shop going away.

The shop is pretix from PyPI (tests/pretix_server.py); its secrets are signed by pretix itself,
with its own key. Each test uses its own orders, lane folder and ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from pathlib import Path

import pytest

from edge.cli import main

from .pretix_server import PretixServer, gate_toml, pretix_cache

N_ORDERS = 12


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    server = PretixServer(tmp_path_factory.mktemp("pretix"), pretix_cache())
    server.prepare(N_ORDERS)
    server.start()
    yield server
    server.stop()


_used: set[int] = set()


def order(shop: PretixServer, i: int) -> dict:
    """Order i of the main event; each test takes its own."""
    assert i not in _used, "two tests share an order"
    _used.add(i)
    return shop.events["gatenight"]["orders"][i]


def lane(shop: PretixServer, tmp_path: Path, with_token: bool = True, **extra) -> Path:
    """A lane's gate.toml for this shop, its ledger created; returns the config path."""
    token = tmp_path / "pretix.token"
    if with_token:
        token.write_text(shop.gate_token + "\n")
        os.chmod(token, 0o600)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(gate_toml(shop, tmp_path / "pretix", tmp_path / "ledger.db", token, **extra))
    assert main(["ledger", "init", "--config", str(cfg)]) == 0
    return cfg


def sync(capsys, cfg: Path) -> dict:
    capsys.readouterr()
    main(["pretix", "sync", "--config", str(cfg), "--once", "--json"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def scan(capsys, cfg: Path, secret: str, redeem: bool = True) -> dict:
    capsys.readouterr()
    main(
        [
            "ticket",
            "verify",
            "--config",
            str(cfg),
            *(["--redeem"] if redeem else []),
            "--json",
            secret,
        ]
    )
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def outbox(cfg: Path) -> list[tuple[str, dict]]:
    db = cfg.parent / "ledger.db"
    rows = sqlite3.connect(db).execute("SELECT kind, body FROM upload_outbox ORDER BY id")
    return [(k, json.loads(b)) for k, b in rows]


def test_paid_ticket_granted_offline_and_its_checkin_reaches_pretix(shop, tmp_path, capsys):
    o = order(shop, 0)
    ev = shop.events["gatenight"]
    cfg = lane(shop, tmp_path)
    before = shop.list_count("gatenight", ev["list"])
    rep = sync(capsys, cfg)
    assert rep["reached"] and rep["age_s"] is not None
    assert (tmp_path / "pretix" / "event.json").is_file()
    items = json.loads((tmp_path / "pretix" / "items.json").read_text())
    assert items == [{"id": ev["item"]}]
    first = scan(capsys, cfg, o["secret"])
    assert (first["valid"], first["pretix_reason"]) == (True, "valid")
    again = scan(capsys, cfg, o["secret"])
    assert (again["reason"], again["pretix_reason"]) == ("already_used", "already_redeemed")
    assert [k for k, _ in outbox(cfg)] == ["pretix.redeem", "pretix.failed"]
    assert shop.checkins("gatenight", o["position"]) == []  # nothing sent yet: decided offline
    rep = sync(capsys, cfg)
    assert rep["uploaded"] == 2 and rep["upload_pending"] == 0
    checkins = shop.checkins("gatenight", o["position"])
    assert len(checkins) == 1 and checkins[0]["list"] == ev["list"]
    assert shop.list_count("gatenight", ev["list"]) == before + 1


def test_cancelled_order_is_revoked_after_the_next_sync(shop, tmp_path, capsys):
    o = order(shop, 1)
    cfg = lane(shop, tmp_path)
    sync(capsys, cfg)
    assert scan(capsys, cfg, o["secret"], redeem=False)["pretix_reason"] == "valid"
    shop.cancel("gatenight", o["code"])
    assert scan(capsys, cfg, o["secret"], redeem=False)["pretix_reason"] == "valid"  # not yet
    state = json.loads((tmp_path / "pretix" / "sync-state.json").read_text())
    assert sync(capsys, cfg)["reached"]
    out = scan(capsys, cfg, o["secret"])
    assert (out["valid"], out["reason"], out["pretix_reason"]) == (False, "revoked", "revoked")
    assert state["pulled_at"] is not None
    # a later pull asks only for what was revoked since, and keeps what it had
    from edge import config as config_mod
    from edge.pretix.sync import PretixSync

    o6 = order(shop, 6)
    shop.cancel("gatenight", o6["code"])
    s = PretixSync(config_mod.load(cfg))
    urls: list[str] = []
    real = s.client.request
    s.client.request = lambda m, url, *a, **k: urls.append(url) or real(m, url, *a, **k)
    try:
        assert s.step()
    finally:
        s.close()
    rev_url = next(u for u in urls if "/revokedsecrets/" in u)
    assert "created_since=" in rev_url and "ordering=-created" in rev_url
    revoked = json.loads((tmp_path / "pretix" / "revokedsecrets.json").read_text())
    assert {o["secret"], o6["secret"]} <= {r["secret"] for r in revoked}
    assert scan(capsys, cfg, o6["secret"])["pretix_reason"] == "revoked"


def test_blocked_ticket_refused_and_unblocked_again(shop, tmp_path, capsys):
    o = order(shop, 2)
    cfg = lane(shop, tmp_path)
    sync(capsys, cfg)
    shop.block("gatenight", o["position"])
    sync(capsys, cfg)
    out = scan(capsys, cfg, o["secret"], redeem=False)
    assert (out["reason"], out["pretix_reason"]) == ("blocked", "blocked")
    st, _ = shop.api(
        "POST", f"events/gatenight/orderpositions/{o['position']}/remove_block/", {"name": "admin"}
    )
    assert st == 200
    sync(capsys, cfg)  # incremental: updated_since brings the blocked=false record
    assert scan(capsys, cfg, o["secret"], redeem=False)["pretix_reason"] == "valid"


def test_shop_stopped_mid_run_lane_keeps_deciding_and_uploads_later(shop, tmp_path, capsys):
    o, o2 = order(shop, 3), order(shop, 4)
    cfg = lane(shop, tmp_path)
    assert sync(capsys, cfg)["reached"]
    shop.stop()
    try:
        t_scan = dt.datetime.now(dt.UTC)
        assert scan(capsys, cfg, o["secret"])["valid"]
        assert scan(capsys, cfg, o2["secret"])["valid"]
        rep = sync(capsys, cfg)
        assert not rep["reached"] and "unreachable" in rep["error"]
        assert rep["upload_pending"] == 2
        assert scan(capsys, cfg, o["secret"])["pretix_reason"] == "already_redeemed"
    finally:
        shop.start()
    rep = sync(capsys, cfg)
    assert rep["reached"] and rep["upload_pending"] == 0
    c = shop.checkins("gatenight", o["position"])
    assert len(c) == 1
    when = dt.datetime.fromisoformat(c[0]["datetime"].replace("Z", "+00:00"))
    assert abs((when - t_scan).total_seconds()) < 30  # the scan's time, not the upload's
    assert len(shop.checkins("gatenight", o2["position"])) == 1


def test_upload_repeated_after_a_crash_counts_once(shop, tmp_path, capsys):
    """Killed after pretix took the check-in but before the row was deleted: sent twice."""
    from edge import config as config_mod
    from edge.pretix.sync import PretixSync

    o = order(shop, 5)
    cfg = lane(shop, tmp_path)
    sync(capsys, cfg)
    assert scan(capsys, cfg, o["secret"])["valid"]
    s = PretixSync(config_mod.load(cfg))
    try:
        ((row_id, _t, kind, body),) = s.ledger().upload_batch()
        assert s._send(kind, json.loads(body))[0]  # pretix has it; the delete never happened
    finally:
        s.close()
    assert sync(capsys, cfg)["upload_pending"] == 0
    assert len(shop.checkins("gatenight", o["position"])) == 1


def test_secret_of_another_event_is_invalid(shop, tmp_path, capsys):
    other = shop.events["othernight"]["orders"][0]
    cfg = lane(shop, tmp_path)
    sync(capsys, cfg)
    out = scan(capsys, cfg, other["secret"])
    assert (out["valid"], out["pretix_reason"]) == (False, "invalid")
    assert outbox(cfg)[-1][1]["body"]["error_reason"] == "invalid"


def test_wrong_token_is_a_clear_error_and_keeps_the_data(shop, tmp_path, capsys):
    cfg = lane(shop, tmp_path)
    assert sync(capsys, cfg)["reached"]
    (tmp_path / "pretix.token").write_text("not-a-token\n")
    rep = sync(capsys, cfg)
    assert not rep["reached"] and "401" in rep["error"]
    assert (tmp_path / "pretix" / "event.json").is_file()


def test_pull_does_not_wait_for_a_missing_ledger_and_errors_clear(shop, tmp_path, capsys):
    cfg = lane(shop, tmp_path)
    (tmp_path / "ledger.db").unlink()
    rep = sync(capsys, cfg)
    assert rep["reached"] and rep["upload_pending"] is None and "upload" in rep["error"]
    assert (tmp_path / "pretix" / "event.json").is_file()  # the folder is filled all the same
    state = json.loads((tmp_path / "pretix" / "sync-state.json").read_text())
    assert state["last_error"].startswith("upload: ")
    assert main(["ledger", "init", "--config", str(cfg), "--after-loss"]) == 0
    sync(capsys, cfg)
    state = json.loads((tmp_path / "pretix" / "sync-state.json").read_text())
    assert state["last_error"] == ""


def test_a_lane_connected_as_a_pretixscan_device_pulls_decides_and_uploads(shop, tmp_path, capsys):
    """A device made in pretix with pretixSCAN's security profile: initialised once by
    `pretix init-device`, its token alone is enough for the pull and the check-ins."""
    o = order(shop, 8)
    ev = shop.events["gatenight"]
    cfg = lane(shop, tmp_path, with_token=False, auth="device")
    token = tmp_path / "pretix.token"

    def init(init_token: str) -> int:
        return main(["pretix", "init-device", "--config", str(cfg), "--init-token", init_token])

    capsys.readouterr()
    # a token file the command cannot write is said before pretix spends the token
    (tmp_path / "a-file").write_text("")
    bad = tmp_path / "bad.toml"
    bad.write_text(cfg.read_text().replace(str(token), str(tmp_path / "a-file" / "t")))
    assert (
        main(["pretix", "init-device", "--config", str(bad), "--init-token", shop.device_init]) == 2
    )
    assert "cannot write the pretix token file" in capsys.readouterr().err
    assert init("wrong") == 2
    assert "initialisation token" in capsys.readouterr().err and not token.exists()
    assert init(shop.device_init) == 0
    assert "security profile pretixscan" in capsys.readouterr().out
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.read_text().strip() not in (shop.token, shop.gate_token)
    # an existing token file is never overwritten, and the initialisation token works once
    assert init(shop.device_init) == 2
    assert "already exists" in capsys.readouterr().err
    token.rename(tmp_path / "kept.token")
    assert init(shop.device_init) == 2
    assert "already been used" in capsys.readouterr().err
    (tmp_path / "kept.token").rename(token)
    before = shop.list_count("gatenight", ev["list"])
    assert sync(capsys, cfg)["reached"]
    first = scan(capsys, cfg, o["secret"])
    assert (first["valid"], first["pretix_reason"]) == (True, "valid")
    rep = sync(capsys, cfg)
    assert rep["reached"] and rep["uploaded"] == 1 and rep["upload_pending"] == 0
    assert shop.list_count("gatenight", ev["list"]) == before + 1
