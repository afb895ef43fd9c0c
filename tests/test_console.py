"""The console's and the lane screen's rules without a browser: accounts, roles, sessions, rate
limits, translations, the notice socket and the buzzer/LED patterns."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge.config import PROJECT_ROOT
from edge.console.auth import LoginLimiter, Sessions, csrf_ok, load_secret
from edge.console.i18n import ZH, translate
from edge.console.users import CAN, ROLES, UserError, UserStore, allowed
from edge.gate.notice_socket import SocketSink
from edge.screen.server import Board, Signal, parse_notice
from edge.screen.texts import VISITOR_TEXTS

from .console_harness import wait_for


def test_passwords_are_argon2id_and_checked(tmp_path):
    store = UserStore(tmp_path / "c.db")
    store.add("ada", "admin", "a long passphrase")
    (h,) = store.conn.execute("SELECT hash FROM users").fetchone()
    assert h.startswith("$argon2id$")
    assert "a long passphrase" not in h
    assert store.authenticate("ada", "a long passphrase").role == "admin"
    assert store.authenticate("ada", "a long passphrasE") is None
    assert store.authenticate("nobody", "a long passphrase") is None
    with pytest.raises(UserError, match="at least 10"):
        store.add("bob", "steward", "short")
    with pytest.raises(UserError, match="exists"):
        store.add("ada", "steward", "another passphrase")
    with pytest.raises(UserError, match="role"):
        store.add("cy", "owner", "another passphrase")
    for change in (
        lambda: store.set_disabled("ada", True),
        lambda: store.set_role("ada", "steward"),
    ):
        with pytest.raises(UserError, match="last admin"):  # no one could manage accounts
            change()
    assert store.authenticate("ada", "a long passphrase").role == "admin"  # nothing changed
    store.add("bo", "admin", "another passphrase")
    store.set_disabled("ada", True)
    assert store.authenticate("ada", "a long passphrase") is None
    assert oct(Path(tmp_path / "c.db").stat().st_mode & 0o777) == "0o600"


def test_roles_are_ordered_as_the_issue_says():
    steward = {c for c in CAN if allowed("steward", c)}
    supervisor = {c for c in CAN if allowed("supervisor", c)}
    admin = {c for c in CAN if allowed("admin", c)}
    assert steward == {"lanes", "decisions", "tickets.verify"}
    assert supervisor == steward | {
        "enroll",
        "people",
        "forget",
        "revoke",
        "audit",
        "reveal",
        "override",
    }
    assert admin == supervisor | {"users"}
    assert not allowed("steward", "no-such-capability")
    assert ROLES == ("steward", "supervisor", "admin")


def test_session_cookies_are_signed_expire_and_die_with_the_generation(tmp_path):
    secret = load_secret(tmp_path / "s.key")
    assert oct((tmp_path / "s.key").stat().st_mode & 0o777) == "0o600"
    s = Sessions(secret, max_age_s=3600)
    cookie, sess = s.issue("ada", 3)
    assert s.read(cookie) == sess
    assert s.read(cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")) is None  # tampered
    assert Sessions(load_secret(tmp_path / "other.key"), 3600).read(cookie) is None
    assert Sessions(secret, max_age_s=-1).read(cookie) is None  # expired
    assert csrf_ok(sess, sess.csrf)
    assert not csrf_ok(sess, None)
    assert not csrf_ok(sess, sess.csrf + "x")
    assert not csrf_ok(None, sess.csrf)
    store = UserStore(tmp_path / "c.db")
    store.add("ada", "admin", "a long passphrase")
    g0 = store.get("ada").generation
    store.end_sessions("ada")  # logout: cookies of the old generation no longer match
    assert store.get("ada").generation == g0 + 1
    login_cookie, token = s.login_token()
    assert s.login_token_ok(login_cookie, token)
    assert not s.login_token_ok(login_cookie, token + "x")
    assert not s.login_token_ok(None, token)


def test_login_limiter_counts_per_user_and_per_address():
    now = [1000.0]
    lim = LoginLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert lim.blocked("ann", "10.0.0.1") == 0
        lim.failed("ann", "10.0.0.1")
    assert lim.blocked("ann", "10.0.0.9") > 0  # the user, from anywhere
    assert lim.blocked("bob", "10.0.0.1") > 0  # the address, for anyone
    assert lim.blocked("bob", "10.0.0.2") == 0
    now[0] += 61
    assert lim.blocked("ann", "10.0.0.1") == 0  # the window passed
    lim.failed("bob", "10.0.0.3")
    lim.succeeded("bob")
    assert lim.blocked("bob", "10.0.0.4") == 0


def test_login_limiter_memory_stays_bounded():
    """Asking about a name adds nothing; failures of many names are swept once expired, and
    the most recent are kept when the flood is within the window."""
    from edge.console.auth import MAX_TRACKED

    now = [1000.0]
    lim = LoginLimiter(3, 60.0, clock=lambda: now[0])
    for k in range(500):
        assert lim.blocked(f"nobody-{k}" * 50, "10.0.0.1") == 0
    assert len(lim._fails) == 0
    for k in range(MAX_TRACKED + 500):
        lim.failed(f"u{k}", "10.0.0.7")
    assert len(lim._fails) <= MAX_TRACKED
    assert lim.blocked("anyone", "10.0.0.7") > 0  # the flooding address is still limited
    now[0] += 61
    lim.failed("ann", "10.0.0.8")
    for _ in range(3):
        lim.failed(f"late-{_}", "10.0.0.9")
    assert len(lim._fails) < 20  # the expired flood was swept


def test_every_console_text_has_a_chinese_translation():
    here = PROJECT_ROOT / "edge" / "console"
    used = set()
    for p in (here / "templates").glob("*.html"):
        used |= {m.group(2) for m in re.finditer(r'_\(\s*(["\'])(.*?)\1', p.read_text())}
    used |= set(re.findall(r'translate\([^,]+,\s*"(.*?)"', (here / "app.py").read_text()))
    used |= set(ROLES)
    missing = sorted(t for t in used if t not in ZH)
    assert missing == []
    assert (
        translate("zh-CN", "enrolled on {k} of {n} lanes", k=2, n=3) == "已在 3 个通道中的 2 个登记"
    )
    assert translate("en", "enrolled on {k} of {n} lanes", k=2, n=3) == "enrolled on 2 of 3 lanes"


def test_every_decision_code_has_a_chinese_name():
    """The decisions page shows the gate's via and reason codes in the user's language."""
    from edge.fleet import override
    from edge.fleet.state import LINK_REASONS
    from edge.gate.policy import Outcome, Reason, Via
    from edge.tickets.format import Reason as TicketReason

    codes = {*Outcome, *Via, *Reason, *TicketReason, *LINK_REASONS, override.VIA}
    codes |= {override.EXPIRED, override.REPLAYED, override.OTHER_LANE, override.INVALID}
    assert sorted(str(c) for c in codes if str(c) not in ZH) == []
    assert translate("zh-CN", "presentation_attack") == "疑似照片或屏幕攻击"
    assert translate("zh-CN", "a reason typed by staff") == "a reason typed by staff"


def test_visitor_texts_exist_for_every_notice_in_both_languages():
    contract = {"welcome", "show_ticket", "step_back", "come_closer", "hold_still", "ticket_used",
                "see_staff"}  # fmt: skip
    assert set(VISITOR_TEXTS) == contract
    for texts in VISITOR_TEXTS.values():
        assert texts["en"] and texts["zh-CN"]
        assert texts["en"] != texts["zh-CN"]


def test_notice_contract_is_checked_and_names_need_the_park_to_turn_them_on():
    good = {"v": 1, "t": 1.0, "lane": "l1", "notice": "welcome", "reason": "ok",
            "decision": "grant", "name": "Ada"}  # fmt: skip
    assert parse_notice(json.dumps(good).encode())["notice"] == "welcome"
    for bad in ({**good, "v": 2}, {**good, "notice": "open_sesame"}, {**good, "decision": "x"}):
        with pytest.raises(ValueError):
            parse_notice(json.dumps(bad).encode())
    with pytest.raises(ValueError):
        parse_notice(b"not json")
    assert Board(show_names=False).put(good).name is None
    assert Board(show_names=True).put(good).name == "Ada"


def test_socket_sink_never_raises_without_a_screen_and_delivers_with_one(tmp_path):
    path = tmp_path / "n.sock"
    sink = SocketSink(path)
    sink.send({"v": 1, "notice": "welcome"})  # nobody listening: dropped, counted
    sink.send(object())  # not a notice: dropped, counted
    assert (sink.sent, sink.dropped) == (0, 2)
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.settimeout(2)
    sink.send({"v": 1, "notice": "step_back"})
    assert json.loads(rx.recv(4096))["notice"] == "step_back"
    assert sink.sent == 1
    rx.close()


def test_signal_patterns_on_mock_pins():
    f = MockFactory()
    sig = Signal(config_mod.SignalConfig(buzzer_pin=5, green_pin=6, red_pin=13), factory=f)
    sig.play("deny")
    # the pattern plays in the background: wait for its end (two beeps, then off), however
    # long a loaded machine takes; MockPin keeps every state the pins went through
    wait_for(
        lambda: (
            [s.state for s in f.pin(5).states] == [False, True, False, True, False]
            and any(s.state for s in f.pin(13).states)
        ),
        what="two beeps and the red light",
    )
    assert not any(s.state for s in f.pin(6).states)
    sig.play(None)  # guidance: silent
    sig.close()
    assert Signal(config_mod.SignalConfig()).devices == []  # nothing fitted, nothing claimed


def test_adduser_command_and_its_refusals(tmp_path):
    cfg = tmp_path / "office.toml"
    cfg.write_text('[console]\nusers_db = "console.db"\n')

    def run(*args, stdin="a long passphrase\n"):
        return subprocess.run([sys.executable, "-m", "edge.cli", "console", "adduser", *args],
                              input=stdin, capture_output=True, text=True, timeout=60)  # fmt: skip

    r = run("ada", "--role", "admin", "--password-stdin", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    store = UserStore(tmp_path / "console.db")
    assert store.get("ada").role == "admin"
    r = run("ada", "--role", "steward", "--password-stdin", "--config", str(cfg))
    assert r.returncode == 2
    assert "exists" in r.stderr
    r = run("bo", "--role", "king", "--password-stdin", "--config", str(cfg))
    assert r.returncode == 2
    r = run("bo", "--role", "steward", "--password-stdin", "--config", str(cfg), stdin="short\n")
    assert r.returncode == 2
    assert "at least 10" in r.stderr
    assert store.get("bo") is None


def test_lane_runs_without_the_console_extra():
    """A Pi installs edge-gate[pi] only: the CLI, the gate and the screen load without the web
    stack (argon2, starlette, uvicorn, jinja2, itsdangerous, multipart)."""
    code = (
        "import sys\n"
        "for m in ('argon2', 'starlette', 'uvicorn', 'jinja2', 'itsdangerous', 'multipart',"
        " 'playwright'):\n"
        "    sys.modules[m] = None\n"
        "from edge.cli import build_parser\n"
        "build_parser().parse_args(['screen', '--listen', '127.0.0.1:0'])\n"
        "import edge.gate.daemon, edge.screen.server\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=PROJECT_ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_people_page_list_follows_the_gallery_file_and_is_capped(tmp_path):
    """The People page's list is read once and again whenever the office gallery changes (an
    enrollment from the command line included); a forget drops it at once; a page shows at most
    `limit` of the matches and says how many there are."""
    import numpy as np

    from edge.console import actions
    from edge.gallery.crypto import init_key, load_key
    from edge.gallery.schema import NewPerson
    from edge.gallery.store import Consent, Gallery

    (tmp_path / "office.toml").write_text('[gallery]\ndb = "g.db"\nkey_file = "g.key"\n')
    cfg = config_mod.load(tmp_path / "office.toml")
    init_key(tmp_path / "g.key")
    key = load_key(tmp_path / "g.key")
    emb = np.eye(3, 128, dtype=np.float32)
    people = [NewPerson(f"Visitor {i}", Consent("2026-01"), list(emb)) for i in range(5)]
    with Gallery(tmp_path / "g.db", key) as g:
        ids = g.add_people(people, "m", "1")
    office = actions.Office(cfg)
    assert actions.people(office, "", 3)[0] == 5
    assert len(actions.people(office, "", 3)[1]) == 3
    assert actions.people(office, "visitor 4")[1][0]["id"] == ids[4]
    with Gallery(tmp_path / "g.db", key) as g:  # another process enrolls
        (late,) = g.add_people([NewPerson("Ada Late", Consent("2026-01"), list(emb))], "m", "1")
    assert [p["id"] for p in actions.people(office, "ada late")[1]] == [late]
    actions.forget(office, "sam", late, "deletion_request")
    assert actions.people(office, "ada late") == (0, [])


def test_override_page_tells_the_grant_even_when_a_replay_was_refused_after_it():
    from edge.console.app import OVERRIDE_GRACE_S, override_outcome

    granted = {"decision": "grant", "reason": "override", "t": 10.0}
    replayed = {"decision": "deny", "reason": "override_replayed", "t": 10.2}
    assert override_outcome([replayed, granted], 20.0, 11.0)["state"] == "grant"
    expired = {"decision": "deny", "reason": "override_expired", "t": 30.0}
    assert override_outcome([expired], 20.0, 31.0) == {
        "state": "deny",
        "reason": "override_expired",
        "t": 30.0,
    }
    assert override_outcome([], 20.0, 21.0)["state"] == "waiting"
    assert override_outcome([], 20.0, 20.0 + OVERRIDE_GRACE_S + 1)["state"] == "unanswered"


def test_lanes_page_row_carries_the_pretix_part_of_a_heartbeat_and_nothing_malformed():
    from edge.console.app import lane_row

    px = {"data_time": 1.0, "age_s": 5.0, "stale": False}
    assert lane_row("lane1", {"state": "ok", "pretix": px}, 5.0)["pretix"] == px
    assert lane_row("lane1", {"state": "ok", "pretix": "junk"}, 5.0)["pretix"] is None
    assert lane_row("lane1", {"state": "ok"}, 5.0)["pretix"] is None
