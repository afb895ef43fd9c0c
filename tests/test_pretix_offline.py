"""pretix_sig1 secrets decided offline as pretixSCAN decides them: format, order, rules, CLI."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import sqlite3
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import fixtures_dir
from edge.tickets import pretix_offline as po
from edge.tickets import pretix_rules as pr
from edge.tickets.pretix_sig1 import (
    Sig1Invalid,
    Sig1Ticket,
    decode_ticket,
    encode_ticket,
    split_secret,
    verify_secret,
)

from .pretix_helpers import Shop

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC).timestamp()


def verify(capsys, *args: str) -> tuple[int, list[dict]]:
    rc = main(["ticket", "verify", *args])
    out = capsys.readouterr().out
    return rc, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


# --- libpretixsync's own cases, through the CLI --------------------------------------------------


def _pretix_fixtures() -> Path:
    d = fixtures_dir() / "pretix"
    if not (d / "cases.json").is_file():
        msg = f"pretix fixtures not found at {d} (set EDGE_FIXTURES)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true requires them", pytrace=False)
        pytest.skip(msg)
    return d


def test_every_fixture_case_decides_as_libpretixsync_expects(tmp_path, capsys):
    src = _pretix_fixtures()
    cases = json.loads((src / "cases.json").read_text())
    assert cases
    for i, case in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "event.json").write_bytes((src / "event.json").read_bytes())
        (d / "checkinlist.json").write_bytes((src / f"{case['checkin_list']}.json").read_bytes())
        (d / "revokedsecrets.json").write_text(
            json.dumps([{"id": n, "secret": s} for n, s in enumerate(case["revoked"])])
        )
        (d / "blockedsecrets.json").write_text(
            json.dumps(
                [{"id": n, "secret": s, "blocked": True} for n, s in enumerate(case["blocked"])]
            )
        )
        scans = int(case.get("scans", 1))
        if scans == 1:
            rc, lines = verify(
                capsys, "--pretix-dir", str(d), "--at", case["now"], "--json", case["secret"]
            )
        else:  # earlier scans are entries counted in a ledger, now (--at and --redeem exclude)
            ledger = str(d / "ledger.db")
            assert main(["ledger", "init", "--db", ledger]) == 0
            for _ in range(scans):
                rc, lines = verify(
                    capsys,
                    "--pretix-dir",
                    str(d),
                    "--redeem",
                    "--db",
                    ledger,
                    "--json",
                    case["secret"],
                )
        assert lines[-1]["pretix_reason"] == case["expect"], (case["note"], lines[-1])
        assert rc == (0 if case["expect"] == "valid" else 1), case["note"]


# --- the secret's format -------------------------------------------------------------------------


def test_secret_round_trip_and_key_rotation(tmp_path):
    shop = Shop(tmp_path)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    shop.keys.append(Ed25519PrivateKey.generate())
    keys = [k.public_key() for k in shop.keys]
    old = shop.secret("OldKey123", key=0, variation=5, subevent=3, valid_until=1_900_000_000)
    new = shop.secret("NewKey123", key=1)
    assert verify_secret(old, keys) == Sig1Ticket("OldKey123", 1, 5, 3, None, 1_900_000_000)
    assert verify_secret(new, keys).seed == "NewKey123"
    with pytest.raises(Sig1Invalid) as e:
        verify_secret(new, keys[:1])  # the rotated-out key alone does not open the new secret
    assert not e.value.malformed


def test_other_spellings_of_a_secret_are_invalid(tmp_path):
    """pretix decodes leniently; a second spelling would slip past the revocation list."""
    shop = Shop(tmp_path)
    keys = [shop.keys[0].public_key()]
    secret = shop.secret()
    raw = base64.b64decode(secret[::-1])
    trailing = base64.b64encode(raw + b"\0").decode()[::-1]
    with pytest.raises(Sig1Invalid, match="lengths"):
        verify_secret(trailing, keys)
    b64 = secret[::-1]
    assert b64.endswith("==")  # 82 bytes: the last data character has 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = b64[-3]
    twin = (b64[:-3] + alphabet[alphabet.index(last) ^ 1] + "==")[::-1]
    assert base64.b64decode(twin[::-1]) == raw  # the same bytes...
    with pytest.raises(Sig1Invalid, match="canonical"):
        verify_secret(twin, keys)  # ...but not the canonical spelling
    assert verify_secret(" " + secret + "\r\n", keys).seed == "SeedAbc12"  # scanner line ends


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * 600,
        "!!!",
        base64.b64encode(b"\x02\x00\x01\x00\x40" + b"\0" * 65).decode()[::-1],
        base64.b64encode(b"\x01\x00").decode()[::-1],
    ],
)
def test_garbage_is_malformed_never_a_crash(text):
    with pytest.raises(Sig1Invalid) as e:
        split_secret(text)
    assert e.value.malformed


def test_protobuf_reader_matches_the_wire_format():
    t = Sig1Ticket("s\u00e9ed", item=2**40, variation=0, subevent=-1, valid_from=0, valid_until=5)
    raw = encode_ticket(t)
    # subevent -1 is ten bytes of varint, as protobuf writes a negative int64
    assert raw.count(b"\xff") >= 9
    assert decode_ticket(raw) == Sig1Ticket("s\u00e9ed", 2**40, 0, -1, None, 5)
    unknown = raw + b"\x38\x07" + b"\x42\x02hi" + b"\x49" + b"\0" * 8  # fields 7, 8, 9: skipped
    assert decode_ticket(unknown) == decode_ticket(raw)
    for bad in (b"\x0a\x05ab", b"\x10", b"\x00\x01", b"\x13"):  # truncated, no number, groups
        with pytest.raises(ValueError):
            decode_ticket(bad)


# --- the decision and its order ------------------------------------------------------------------


def decide(shop: Shop, secret: str, now=NOW, entries=(), gate=None) -> po.PretixDecision:
    return po.decide(po.load_dir(shop.write()), secret, now, entries, gate)


def test_order_revoked_before_blocked_before_time_before_product(tmp_path):
    shop = Shop(tmp_path)
    s = shop.secret(item=9, valid_until=int(NOW) - 1)
    shop.checkin_list.update(all_products=False, limit_products=[1])
    shop.revoked, shop.blocked = [s], [s]
    assert decide(shop, s).pretix_reason == "revoked"
    shop.revoked = []
    assert decide(shop, s).pretix_reason == "blocked"
    shop.blocked = []
    d = decide(shop, s)
    assert (d.pretix_reason, d.reason) == ("invalid_time", "expired")
    assert decide(shop, s, now=NOW - 10).pretix_reason == "product"
    shop.checkin_list["limit_products"] = [9]
    assert decide(shop, s, now=NOW - 10).pretix_reason == "valid"


def test_unblocked_secret_and_other_date_of_a_series(tmp_path):
    shop = Shop(tmp_path)
    s = shop.secret(subevent=4)
    shop.write()
    (tmp_path / "blockedsecrets.json").write_text(
        json.dumps([{"id": 1, "secret": s, "blocked": False}])
    )
    data = po.load_dir(tmp_path)
    assert po.decide(data, s, NOW).pretix_reason == "valid"  # blocked: false is not blocked
    shop.checkin_list["subevent"] = 5
    d = decide(shop, s)
    assert (d.pretix_reason, d.reason) == ("invalid", "wrong_gate")
    s_nyv = shop.secret("Later0001", valid_from=int(NOW) + 60)
    assert decide(shop, s_nyv).reason == "not_yet_valid"


def test_a_product_unknown_to_the_event_is_refused_when_the_products_are_known(tmp_path):
    shop = Shop(tmp_path)
    s = shop.secret(item=100)
    assert decide(shop, s).pretix_reason == "valid"  # no items.json: not knowable here
    (tmp_path / "items.json").write_text(json.dumps([{"id": 1}, {"id": 2}]))
    d = decide(shop, s)
    assert (d.pretix_reason, d.reason) == ("product", "wrong_gate")
    assert decide(shop, shop.secret("Known0001", item=2)).pretix_reason == "valid"


def test_entries_per_list_setting(tmp_path):
    shop = Shop(tmp_path)
    s = shop.secret()
    assert decide(shop, s, entries=[NOW - 3600]).pretix_reason == "already_redeemed"
    shop.checkin_list["allow_multiple_entries"] = True
    assert decide(shop, s, entries=[NOW - 3600, NOW - 60]).pretix_reason == "valid"


def test_secret_of_another_event_is_invalid(tmp_path):
    shop, other = Shop(tmp_path / "a"), Shop(tmp_path / "b")
    d = decide(shop, other.secret())
    assert (d.pretix_reason, d.reason) == ("invalid", "invalid_signature")


def test_missing_or_broken_folder_is_a_config_error(tmp_path):
    from edge.errors import ConfigError

    shop = Shop(tmp_path)
    shop.write()
    (tmp_path / "revokedsecrets.json").unlink()
    with pytest.raises(ConfigError, match="revokedsecrets.json does not exist"):
        po.load_dir(tmp_path)
    shop.write()
    (tmp_path / "event.json").write_text(json.dumps({"slug": "x", "valid_keys": {}}))
    with pytest.raises(ConfigError, match="no valid_keys"):
        po.load_dir(tmp_path)


# --- check-in rules ------------------------------------------------------------------------------


def _rules(shop: Shop, rules) -> None:
    shop.checkin_list.update(rules=rules, allow_multiple_entries=True)


def test_rules_product_list_and_entry_counts(tmp_path):
    shop = Shop(tmp_path)
    s = shop.secret(item=3)
    only_3 = {"inList": [{"var": "product"}, {"objectList": [{"lookup": ["product", "3", "Day"]}]}]}
    _rules(shop, only_3)
    assert decide(shop, s).pretix_reason == "valid"
    _rules(
        shop, {"inList": [{"var": "product"}, {"objectList": [{"lookup": ["product", "4", "X"]}]}]}
    )
    assert decide(shop, s).pretix_reason == "rules"
    _rules(shop, {"and": [only_3, {"<": [{"var": "entries_today"}, 2]}]})
    today = [NOW - 3600, NOW - 1800]
    assert decide(shop, s, entries=today[:1]).pretix_reason == "valid"
    assert decide(shop, s, entries=today).pretix_reason == "rules"
    assert decide(shop, s, entries=[NOW - 86400 * 2] * 5).pretix_reason == "valid"  # other days


def test_rules_times_in_the_event_zone(tmp_path):
    shop = Shop(tmp_path, timezone="Asia/Tokyo")
    s = shop.secret()
    # 12:00 UTC is 21:00 in Tokyo: after 20:00 there, before 20:00 in Berlin (14:00)
    after_8pm = {"isAfter": [{"var": "now"}, {"buildTime": ["customtime", "20:00"]}, None]}
    _rules(shop, after_8pm)
    assert decide(shop, s).pretix_reason == "valid"
    shop.timezone = "Europe/Berlin"
    assert decide(shop, s).pretix_reason == "rules"
    # tolerance in minutes: 14:00 Berlin is within 360 minutes after 20:00? no: isAfter(now+tol)
    _rules(shop, {"isAfter": [{"var": "now"}, {"buildTime": ["customtime", "20:00"]}, 361]})
    assert decide(shop, s).pretix_reason == "valid"
    _rules(shop, {"isBefore": [{"var": "now"}, {"buildTime": ["date_from"]}]})  # 18:00+02:00
    assert decide(shop, s).pretix_reason == "valid"
    _rules(shop, {"==": [{"var": "now_isoweekday"}, 1]})  # 2026-06-01 is a Monday
    assert decide(shop, s).pretix_reason == "valid"
    _rules(shop, {">": [{"entries_since": [{"buildTime": ["custom", "2026-06-01T00:00:00Z"]}]}, 0]})
    assert decide(shop, s, entries=[NOW - 3600]).pretix_reason == "valid"
    assert decide(shop, s, entries=[NOW - 86400]).pretix_reason == "rules"


def test_rules_gate_and_status_variables(tmp_path):
    shop = Shop(tmp_path)
    s = shop.secret()
    _rules(
        shop, {"inList": [{"var": "gate"}, {"objectList": [{"lookup": ["gate", "2", "North"]}]}]}
    )
    assert decide(shop, s, gate=2).pretix_reason == "valid"
    assert decide(shop, s, gate=None).pretix_reason == "rules"
    _rules(shop, {"==": [{"var": "entry_status"}, "absent"]})
    assert decide(shop, s).pretix_reason == "valid"
    assert decide(shop, s, entries=[NOW - 60]).pretix_reason == "rules"
    _rules(shop, {">=": [{"var": "minutes_since_last_entry"}, 30]})
    assert decide(shop, s, entries=[NOW - 29 * 60]).pretix_reason == "rules"
    assert decide(shop, s, entries=[NOW - 31 * 60]).pretix_reason == "valid"


@pytest.mark.parametrize(
    "rules",
    [
        {"some": [[1], {"var": ""}]},  # JSON logic pretix does not accept on a check-in list
        {"==": [{"var": "attendee_name"}, "Ada"]},
        {"isAfter": [{"var": "now"}, {"buildTime": ["custom", "2026-06-01T10:00"]}]},  # no zone
        {"isAfter": [{"var": "now"}, {"buildTime": ["fortnight"]}]},
        {"and": [True], "or": [False]},
        [{"==": [1, 1]}],
    ],
)
def test_rules_outside_pretix_offline_set_are_refused_with_their_own_reason(tmp_path, rules):
    shop = Shop(tmp_path)
    _rules(shop, rules)
    d = decide(shop, shop.secret())
    assert (d.pretix_reason, d.reason) == ("rules", "rules_unsupported")
    assert d.detail


def test_rules_on_series_dates_need_the_dates(tmp_path):
    shop = Shop(tmp_path)
    _rules(shop, {"isBefore": [{"var": "now"}, {"buildTime": ["date_admission"]}]})
    assert decide(shop, shop.secret(subevent=0)).pretix_reason == "valid"
    d = decide(shop, shop.secret(subevent=12))  # the date's own times are not in the folder
    assert d.reason == "rules_unsupported"


def test_rule_context_counts_days_in_the_zone():
    tz = pr.ZoneInfo("Asia/Tokyo")
    now = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
    # 14:30 and 15:30 UTC on May 31st are 23:30 May 31st and 00:30 June 1st in Tokyo
    e = [dt.datetime(2026, 5, 31, h, 30, tzinfo=dt.UTC).timestamp() for h in (14, 15)]
    ctx = pr.RuleContext(now, tz, 1, None, e)
    assert ctx.var("entries_days") == 2
    assert ctx.var("entries_today") == 1


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_redeem_counts_once_and_queues_every_scan(tmp_path, capsys):
    shop = Shop(tmp_path / "px")
    d = shop.write()
    s = shop.secret()
    ledger = tmp_path / "ledger.db"
    assert main(["ledger", "init", "--db", str(ledger)]) == 0
    rc, lines = verify(capsys, "--pretix-dir", str(d), "--redeem", "--db", str(ledger), s)
    assert rc == 0 and lines[0]["reason"] == "ok" and lines[0]["pretix_reason"] == "valid"
    assert lines[0]["ticket_id"] == "pretix-7-SeedAbc12"
    rc, lines = verify(capsys, "--pretix-dir", str(d), "--redeem", "--db", str(ledger), s, "junk")
    assert rc == 1
    assert [(x["reason"], x["pretix_reason"]) for x in lines] == [
        ("already_used", "already_redeemed"),
        ("malformed", "invalid"),
    ]
    rows = (
        sqlite3.connect(ledger)
        .execute("SELECT kind, body FROM upload_outbox ORDER BY id")
        .fetchall()
    )
    kinds = [k for k, _ in rows]
    assert kinds == ["pretix.redeem", "pretix.failed", "pretix.failed"]
    first = json.loads(rows[0][1])
    assert first["body"]["force"] is True and first["body"]["lists"] == [7]
    assert first["body"]["secret"] == s and len(first["body"]["nonce"]) >= 16
    assert json.loads(rows[1][1])["body"]["error_reason"] == "already_redeemed"
    # the secret itself never becomes the ledger's ticket id
    ids = [r[0] for r in sqlite3.connect(ledger).execute("SELECT ticket_id FROM redemptions")]
    assert ids == ["pretix-7-SeedAbc12"]
    # check-in lists are independent in pretix: the same ticket enters once on another list
    shop.checkin_list["id"] = 8
    shop.write()
    rc, lines = verify(capsys, "--pretix-dir", str(d), "--redeem", "--db", str(ledger), s)
    assert rc == 0 and lines[0]["ticket_id"] == "pretix-8-SeedAbc12"


def test_cli_at_and_redeem_are_refused_together(tmp_path, capsys):
    d = Shop(tmp_path).write()
    rc = main(
        [
            "ticket",
            "verify",
            "--pretix-dir",
            str(d),
            "--at",
            "2026-06-01T12:00:00Z",
            "--redeem",
            "--db",
            str(tmp_path / "l.db"),
            "x",
        ]
    )
    assert rc == 2
    assert "--at" in capsys.readouterr().err


def test_cli_missing_folder_file_is_a_clear_error(tmp_path, capsys):
    d = Shop(tmp_path).write()
    (d / "checkinlist.json").write_text("{not json")
    rc = main(["ticket", "verify", "--pretix-dir", str(d), "x"])
    assert rc == 2
    assert "checkinlist.json cannot be read" in capsys.readouterr().err


# --- fuzzing: bad input is a refusal, never a crash ----------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .helpers import fuzz  # noqa: E402

_KEYS = [Shop(Path("/nonexistent")).keys[0]]


@settings(max_examples=fuzz(400), deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_behind_a_sig1_header_are_refused_or_read(payload):
    import struct

    raw = struct.pack(">BHH", 1, len(payload), 64) + payload + b"\0" * 64
    text = base64.b64encode(raw).decode()[::-1]
    with pytest.raises(Sig1Invalid):  # a zero signature verifies under no key
        verify_secret(text, [k.public_key() for k in _KEYS])
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        decode_ticket(payload)


@settings(max_examples=fuzz(400), deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_sig1_refusal_never_an_exception(text):
    with pytest.raises(Sig1Invalid):
        verify_secret(text, [k.public_key() for k in _KEYS])


_WORDS = ["now", "product", "entries_today", "custom", "customtime", "date_from", "20:00",
          "2026-06-01T00:00:00Z", "x", ""]  # fmt: skip
_OPS = ["and", "or", "==", "!=", "<", "<=", ">", ">=", "inList", "objectList", "lookup",
        "var", "buildTime", "isAfter", "isBefore", "entries_since", "entries_days_before",
        "x"]  # fmt: skip
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.sampled_from(_WORDS),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_OPS), inner, max_size=2)
    ),
    max_leaves=12,
)


@settings(max_examples=fuzz(400), deadline=None)
@given(_json)
def test_any_rule_object_is_decided_or_refused_as_unsupported(rule):
    ctx = pr.RuleContext(
        dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC), pr.ZoneInfo("Europe/Berlin"), 1, None, ()
    )
    with contextlib.suppress(pr.Unsupported):
        pr.allows(rule, ctx)


def test_a_fleet_redemption_proves_its_pretix_ticket_by_the_secret(tmp_path):
    shop = Shop(tmp_path)
    data = po.load_dir(shop.write())
    s = shop.secret("Proof0001")
    t = po.proof_ticket(data, s, "pretix-7-Proof0001")
    assert (t.ticket_id, t.max_entries) == ("pretix-7-Proof0001", 1)
    other = po.proof_ticket(data, s, "pretix-9-Proof0001")  # a lane on another list
    assert other.ticket_id == "pretix-9-Proof0001" and other.max_entries > 1000
    for claimed in ("pretix-7-Another01", "T-1", ""):
        with pytest.raises(ValueError):
            po.proof_ticket(data, s, claimed)
    with pytest.raises(ValueError):
        po.proof_ticket(data, Shop(tmp_path / "b").secret("Proof0001"), "pretix-7-Proof0001")
    from edge import config as config_mod

    cfg = config_mod.override(config_mod.Config(), pretix={"dir": str(tmp_path)})
    assert po.lane_proof(cfg, s, "pretix-7-Proof0001").ticket_id == "pretix-7-Proof0001"
    (tmp_path / "event.json").unlink()
    with pytest.raises(ValueError, match="event.json"):
        po.lane_proof(cfg, s, "pretix-7-Proof0001")


def test_cached_folder_is_read_again_when_sync_replaces_a_file(tmp_path):
    shop = Shop(tmp_path)
    shop.write()
    first = po.load_dir_cached(tmp_path)
    assert po.load_dir_cached(tmp_path) is first
    shop.revoked = [shop.secret()]
    shop.write()
    os.utime(tmp_path / "revokedsecrets.json", ns=(1, 1))  # a new stamp even on coarse clocks
    assert po.load_dir_cached(tmp_path).revoked == frozenset(shop.revoked)
