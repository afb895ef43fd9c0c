"""Many lanes, one park: real Mosquitto on a loopback port, real SQLite, real `edge-gate` commands.

Every wait is bounded polling for a condition; no timing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge import config as config_mod
from edge import tickets as tk
from edge.config import PROJECT_ROOT
from edge.errors import EdgeGateError
from edge.fleet import messages as msg
from edge.fleet.client import make_client
from edge.fleet.clock import fleet_clock
from edge.fleet.identity import load_lane_key
from edge.fleet.proof import verify_proof
from edge.fleet.state import FleetState
from edge.fleet.sync import Sync
from edge.gate.audit import AuditLog
from edge.lab.broker import MISSING, Mosquitto, free_port, mosquitto_binary
from edge.lab.workspace import roster_all, write_member
from edge.tickets.ledger import Ledger

from .console_harness import NoFrames

USERS = {n: f"pw-{n}" for n in ("office", "lane1", "lane2", "lane3")}
FAST = {"heartbeat_s": 0.3, "offline_after_s": 3.0}


def _need_mosquitto() -> None:
    if mosquitto_binary() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING + "; CI=true requires it", pytrace=False)
        pytest.skip(MISSING)


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    """Bounded polling: return cond()'s first truthy value, fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


class Proxy:
    """A TCP forwarder between one lane and the broker; `cut()` partitions, `heal()` reconnects."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.open = True
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        for s in self.conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.conns.clear()

    def heal(self) -> None:
        self.open = True


class Park:
    """An office and N lanes in a fresh site, every lane in the office's signed roster; syncs
    run in threads (or as processes). The office's sync starts with the park."""

    def __init__(
        self, root: Path, broker_url: str, keys, lanes=3, fleet=None, urls=None, office=True
    ):
        self.site = "park-" + uuid.uuid4().hex[:8]
        self.priv, self.pub = keys
        from edge.gallery.crypto import init_key

        self.site_key = root / "site.key"
        init_key(self.site_key)
        fl = dict(FAST, **(fleet or {}))
        self.office = write_member(
            root, "office", broker_url, self.site, self.pub, USERS["office"], self.site_key, fl
        )
        self.lanes = [
            write_member(
                root,
                f"lane{i}",
                (urls or {}).get(i, broker_url),
                self.site,
                self.pub,
                USERS[f"lane{i}"],
                self.site_key,
                fl,
            )
            for i in range(1, lanes + 1)
        ]
        for m in [self.office, *self.lanes]:
            init_key(m.dir / "gallery.key")
        roster_all(self.office, self.lanes, self.priv)
        self.syncs: dict[int, tuple[Sync, threading.Thread]] = {}
        if office:
            self.start(0)

    def member(self, i: int):
        return self.office if i == 0 else self.lanes[i - 1]

    def cfg(self, i: int) -> config_mod.Config:
        return config_mod.load(self.member(i).config)

    def start(self, i: int, clock=time.time) -> Sync:
        """Sync in a thread of its own (its SQLite connections belong to that thread); 0 is
        the office."""
        made: list[Sync] = []
        ready = threading.Event()

        def main():
            try:
                made.append(Sync(self.cfg(i), clock=clock))
            finally:
                ready.set()
            made[0].run()

        t = threading.Thread(target=main, daemon=True)
        t.start()
        ready.wait(10)
        self.syncs[i] = (made[0], t)
        return made[0]

    def stop(self, i: int) -> None:
        s, t = self.syncs.pop(i)
        s.stop_requested = True
        t.join(10)

    def stop_all(self) -> None:
        for i in list(self.syncs):
            self.stop(i)

    def ticket(self, tid: str, entries: int = 1) -> str:
        kind = tk.Kind.ENTRIES if entries > 1 else tk.Kind.ONE_TIME
        t = tk.Ticket(tid, "day", int(time.time()) - 60, int(time.time()) + 86400, kind, entries)
        return tk.sign(t, tk.load_private(self.priv))

    def signed(self, tid: str, entries: int = 1) -> tk.Ticket:
        """A ticket as the gate holds it after verifying its text (the text included)."""
        return verify_proof(self.ticket(tid, entries), [tk.load_public(self.pub)])

    def remote(self, i: int, tid: str | None = None) -> int:
        led = Ledger(self.lanes[i - 1].dir / "ledger.db")
        try:
            q = "SELECT count(*) FROM remote_redemptions" + (" WHERE ticket_id = ?" if tid else "")
            return led.conn.execute(q, (tid,) if tid else ()).fetchone()[0]
        finally:
            led.close()

    def audit(self, i: int, reason: str) -> list:
        a = AuditLog(self.member(i).dir / "audit.db")
        try:
            return [r for r in a.records() if r.reason == reason]
        finally:
            a.close()

    def state(self, i: int, key: str):
        st = FleetState(self.member(i).dir / "fleet.db")
        try:
            return st.get(key)
        finally:
            st.close()

    def wait_ready(self, *lanes: int) -> None:
        """Every lane named has the roster and the forget list (so faces may be granted)."""
        for i in lanes:
            wait_for(
                lambda i=i: self.state(i, "roster") and not self.state(i, "forget_replay"),
                what=f"lane{i} has the roster and the forget list",
            )


class BrokerError(EdgeGateError):
    """The broker cannot be reached or refused the connection."""


class OneShot:
    """A short-lived client with a member's login (its sync not running): what an attacker
    holding that login, or a test reading the broker, does."""

    def __init__(self, cfg: config_mod.Config, role: str, timeout_s: float = 10.0):
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


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def fleet_audit(park: Park, *extra: str) -> list[dict]:
    r = cli("fleet", "audit", "--json", "--config", str(park.office.config), *extra)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def verify(park: Park, i: int, text: str) -> tuple[int, dict]:
    r = cli("ticket", "verify", "--config", str(park.lanes[i - 1].config), "--redeem", text)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


# --- unit: pure parts ----------------------------------------------------------------------------


def test_signed_message_round_trip_and_refusals(office_keys):
    priv = tk.load_private(office_keys[0])
    pub = tk.load_public(office_keys[1])
    m = msg.sign(msg.Message(msg.REVOCATIONS, "p", msg.OFFICE, 5, 1.0, {"revoked": ["T-1"]}), priv)
    back = msg.verify_signed(msg.decode(msg.encode(m), "p"), [pub])
    assert back.body == {"revoked": ["T-1"]}
    assert back.seq == 5
    tampered = msg.Message(
        m.type, m.site, m.lane, m.seq, m.time, {"revoked": ["T-2"]}, m.kid, m.sig
    )
    with pytest.raises(msg.MessageError, match="bad signature"):
        msg.verify_signed(tampered, [pub])
    with pytest.raises(msg.MessageError, match="not signed"):
        msg.verify_signed(msg.Message(msg.KEYS, "p", "lane1", 1, 1.0), [pub])
    with pytest.raises(msg.MessageError, match="site"):
        msg.decode(msg.encode(m), "other-park")
    with pytest.raises(msg.MessageError, match="version"):
        msg.decode(b'{"v": 99}', "p")


def test_fleet_offset_needs_three_clocks_to_blame_one():
    def offset(*peers: float) -> float:  # no skew: the plain median
        return fleet_clock({f"p{i}": p for i, p in enumerate(peers)}, "me", float("inf")).offset

    assert offset(-600.0, -600.0) == 600.0  # both peers 10 min behind us: we are off
    assert offset(0.2, 600.0) == pytest.approx(-0.2)  # one peer off: we are fine
    assert offset(-600.0) == 0.0  # two clocks disagree: nobody can tell who is wrong


def _lane_keys():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.fleet.identity import Roster, public_text

    keys = {n: Ed25519PrivateKey.generate() for n in ("lane1", "lane2", "office")}
    return keys, Roster(1, {n: public_text(k.public_key()) for n, k in keys.items()})


def test_authenticate_binds_signer_topic_and_roster(office_keys):
    keys, roster = _lane_keys()
    issuer = [tk.load_public(office_keys[1])]
    t1 = msg.topic("p", "redemptions", "lane1")
    m = msg.Message(msg.REDEMPTION, "p", "lane1", 1, 1.0, {"x": 1}, epoch="e")
    ok = msg.authenticate(
        t1, msg.decode(msg.encode(msg.sign(m, keys["lane1"])), "p"), roster, issuer
    )
    assert ok.lane == "lane1"
    with pytest.raises(msg.MessageError, match="on lane 'lane2'"):  # lane1's message, lane2's topic
        msg.authenticate(
            msg.topic("p", "redemptions", "lane2"), msg.sign(m, keys["lane1"]), roster, issuer
        )
    as2 = msg.Message(msg.REDEMPTION, "p", "lane2", 1, 1.0, {}, epoch="e")
    with pytest.raises(msg.MessageError, match="roster names"):  # lane2's name, lane1's key
        msg.authenticate(
            msg.topic("p", "redemptions", "lane2"), msg.sign(as2, keys["lane1"]), roster, issuer
        )
    as3 = msg.Message(msg.REDEMPTION, "p", "lane3", 1, 1.0, {}, epoch="e")
    with pytest.raises(msg.NotRostered):
        msg.authenticate(
            msg.topic("p", "redemptions", "lane3"), msg.sign(as3, keys["lane1"]), roster, issuer
        )
    with pytest.raises(msg.MessageError, match="not signed"):
        msg.authenticate(t1, m, roster, issuer)
    edited = msg.sign(m, keys["lane1"])
    edited = msg.Message(*[getattr(edited, f) for f in ("type", "site", "lane", "seq", "time")],
                         {"x": 2}, edited.kid, edited.sig, edited.epoch)  # fmt: skip
    with pytest.raises(msg.MessageError, match="bad signature"):
        msg.authenticate(t1, edited, roster, issuer)
    hb = msg.Message(msg.HEARTBEAT, "p", "lane1", 1, 1.0, {}, epoch="e")
    with pytest.raises(msg.MessageError, match="heartbeat message on"):  # wrong folder
        msg.authenticate(t1, msg.sign(hb, keys["lane1"]), roster, issuer)
    rev = msg.Message(msg.REVOCATIONS, "p", "office", 1, 1.0, {})
    with pytest.raises(msg.MessageError, match="office messages go to office"):
        msg.authenticate(t1, msg.sign(rev, tk.load_private(office_keys[0])), roster, issuer)
    with pytest.raises(msg.MessageError, match="unknown key"):  # the office's lane key is not
        msg.authenticate(  # the issuer key: it cannot sign revocations
            msg.topic("p", "office", "revocations"), msg.sign(rev, keys["office"]), roster, issuer
        )
    ack = msg.Message(msg.AUDIT_ACK, "p", "office", 1, 1.0, {}, epoch="o")
    got = msg.authenticate(
        msg.audit_ack_topic("p", "lane1"), msg.sign(ack, keys["office"]), roster, issuer
    )
    assert got.type == msg.AUDIT_ACK
    with pytest.raises(msg.MessageError, match="audit_ack from 'lane2'"):
        fake = msg.Message(msg.AUDIT_ACK, "p", "lane2", 1, 1.0, {}, epoch="o")
        msg.authenticate(
            msg.audit_ack_topic("p", "lane1"), msg.sign(fake, keys["lane2"]), roster, issuer
        )


def test_restore_reason_compares_what_the_fleet_saw_with_the_files():
    from edge.fleet.sync import restore_reason

    def hb(epoch, out_seq, count):
        body = {"out_seq": out_seq, "evidence": {"audit": {"count": count, "head": "h"}}}
        return msg.Message(msg.HEARTBEAT, "p", "lane1", 1, 1.0, body, epoch=epoch)

    assert restore_reason(hb("e1", 10, 50), "e1", 10, 50) == ""
    assert restore_reason(hb("e1", 10, 50), "e1", 12, 60) == ""  # files ahead: fine
    assert "outbox went back to 7" in restore_reason(hb("e1", 10, 50), "e1", 7, 60)
    assert "audit log went back to 40" in restore_reason(hb("e1", 10, 50), "e1", 10, 40)
    assert "epoch" in restore_reason(hb("e0", 10, 50), "e1", 99, 99)


def test_restore_check_takes_the_highest_marks_of_the_will_and_the_retained_marks():
    from edge.fleet.sync import restore_reason_of

    def m(type_, epoch, out_seq, count):
        body = {"out_seq": out_seq, "evidence": {"audit": {"count": count, "head": "h"}}}
        return msg.Message(type_, "p", "lane1", 1, 1.0, body, epoch=epoch)

    will = m(msg.OFFLINE, "e1", 0, 5)  # signed at connection
    marks = m(msg.MARKS, "e1", 2, 9)  # published since
    assert restore_reason_of([will, marks], "e1", 2, 9) == ""
    assert "outbox went back to 1 (the fleet saw 2)" in restore_reason_of([will, marks], "e1", 1, 9)
    assert "audit log went back to 8" in restore_reason_of([will, marks], "e1", 2, 8)
    assert restore_reason_of([will], "e1", 1, 8) == ""  # the will alone cannot see it
    assert "epoch" in restore_reason_of([will, m(msg.MARKS, "e0", 0, 0)], "e1", 9, 9)
    assert restore_reason_of([], "e1", 0, 0) == ""
    # a restore found, a new epoch e2 started and announced, then a crash: the will still says
    # e1 (signed at connection), the newer marks say e2: the files of e2 are current
    old_will = msg.Message(msg.OFFLINE, "p", "lane1", 1, 1.0, will.body, epoch="e1")
    new_marks = msg.Message(msg.MARKS, "p", "lane1", 2, 2.0, marks.body, epoch="e2")
    assert restore_reason_of([old_will, new_marks], "e2", 2, 9) == ""
    assert "outbox went back" in restore_reason_of([old_will, new_marks], "e2", 1, 9)
    assert "epoch" in restore_reason_of([old_will, new_marks], "e1", 9, 9)  # an e1 copy


def _status(key: str, lane1, here=None) -> dict:
    """A `fleet status` report of lane2 with one field of lane1's heartbeat and its own."""
    lane = {"state": "ok", "rostered": True, "last_seen": "1 s ago"}
    return {
        "member": "lane2",
        "lanes": {"lane1": {**lane, key: lane1}, "office": lane},
        "clock": {"off": []},
        "sync": {"running": True, "last_seen": "1 s ago"},
        "this_lane": {"lane": "lane2", key: here},
    }


def test_a_member_whose_sync_hears_nothing_blames_itself_not_the_lanes(
    office_keys, tmp_path, capsys
):
    """`fleet status --check` on a member whose sync had stopped, or lost the broker, listed
    every rostered lane as stale (the heartbeats stopped reaching it, not the lanes): an
    operator sent to the lanes found them running. Now the member's own sync is named first,
    and the lanes gone quiet meanwhile are unknown, not stale; a gone lane is still named."""
    from edge.fleet.identity import Roster
    from edge.fleet.office import fleet_status, status_problems

    m = write_member(tmp_path, "lane2", "mqtt://127.0.0.1:1", "park", office_keys[1])
    cfg = config_mod.load(m.config)
    now = time.time()
    st = FleetState(m.dir / "fleet.db")
    st.set_roster(Roster(1, {"lane1": "k1", "lane2": "k2", "lane3": "k3"}))
    quiet = {"epoch": "e", "time": now - 20, "received": now - 20, "gone": None, "body": {}}
    gone = {**quiet, "gone": "lost"}

    def problems(seen_ago: float, connected: bool = True) -> list[str]:
        st.put(connected=connected, sync_seen=now - seen_ago, peers={"lane1": quiet, "lane3": gone})
        return status_problems(fleet_status(cfg, now))

    assert problems(0.5) == [  # this member hears: lane1 is stale
        "lane1: stale (last heartbeat 20 s ago)",
        "lane3: gone (last heartbeat 20 s ago)",
    ]
    stopped = "not connected to the broker (stopped, or the broker out of reach)"
    for seen_ago, connected, own in (
        (30.0, True, "lane2: edge-gate sync not running (last 30 s ago)"),
        (-3600.0, True, "lane2: edge-gate sync not running (last dated ahead of this clock)"),
        (8.0, True, "lane2: edge-gate sync last ran 8 s ago: no heartbeat reaches it"),
        (0.5, False, f"lane2: edge-gate sync {stopped}: no heartbeat reaches it"),
    ):
        assert problems(seen_ago, connected) == [
            "lane3: gone (last heartbeat 20 s ago)",
            own,
            "lane1: not heard while this member's sync hears nothing (state unknown; judged"
            " again once it hears)",
        ]
    from edge.cli import main

    st.put(sync_seen=time.time() - 8.0)
    assert main(["fleet", "status", "--check", "--config", str(m.config)]) == 1
    out = capsys.readouterr().out
    assert "lane1" in out and "NOT HEARD (this member hears nothing)" in out and "STALE" not in out
    # quiet for a moment with every lane heard: nothing to report yet
    quiet["received"] = quiet["time"] = now - 2
    assert problems(8.0) == ["lane3: gone (last heartbeat 20 s ago)"]
    st.close()


def test_status_and_the_lanes_page_flag_an_outdated_broker_acl():
    from edge.console.app import lane_row
    from edge.fleet.office import status_problems

    def rep(acl1, acl_here=None):
        return _status("broker_acl", acl1, acl_here)

    assert status_problems(rep("ok", "ok")) == []
    assert status_problems(rep(None)) == []  # a lane of an older version says nothing
    (p,) = status_problems(rep("outdated"))
    assert p.startswith("lane1: broker ACL outdated") and "fleet broker-config" in p
    assert [p.split(":")[0] for p in status_problems(rep("ok", "outdated"))] == ["lane2"]
    assert lane_row("lane1", {"state": "ok", "broker_acl": "outdated"}, 5.0)["acl_outdated"]
    assert not lane_row("lane1", {"state": "ok", "broker_acl": "ok"}, 5.0)["acl_outdated"]


def test_status_and_the_lanes_page_flag_a_lane_behind_the_offices_newest():
    from edge.console.app import lane_row
    from edge.fleet.office import status_problems

    def rep(behind1, behind_here=None):
        return _status("behind_office", behind1, behind_here)

    assert status_problems(rep(False)) == []
    assert status_problems(rep(None)) == []  # a lane of an older version says nothing
    assert status_problems(rep("yes")) == []  # nor one whose heartbeat says no boolean
    (p,) = status_problems(rep(True))
    assert p.startswith("lane1: refuses tickets") and "ticket revoke --publish" in p
    assert "fleet roster publish" in p
    why = "the office's newest revocation is #9, the newest applied here #5"
    assert [p.split(":")[0] for p in status_problems(rep(False, why))] == ["lane2"]
    assert lane_row("lane1", {"state": "ok", "behind_office": True}, 5.0)["behind_office"]
    assert not lane_row("lane1", {"state": "ok"}, 5.0)["behind_office"]


def test_fleet_clock_ignores_one_outlier_and_names_it():
    from edge.fleet.clock import fleet_clock

    v = fleet_clock({"lane2": 0.2, "office": -0.1, "lane3": 3600.0}, "lane1", 5.0)
    assert abs(v.offset) < 0.2
    assert v.off == ("lane3",)
    v = fleet_clock({"lane1": -600.0, "office": -600.2}, "lane3", 5.0)  # we are the one off
    assert v.offset == pytest.approx(600.0, abs=0.3)
    assert v.off == ("lane3",)
    assert fleet_clock({"lane2": 600.0}, "lane1", 5.0).offset == 0.0  # two clocks: nobody


def test_office_counts_its_messages_never_below_the_broker(office_keys, tmp_path):
    from edge.fleet.officestore import OfficeStore

    st = FleetState(tmp_path / "fleet.db")
    store = OfficeStore(st)
    key = tk.load_private(office_keys[0])
    _, a = store.queue(msg.KEYS, "p", {}, key, "t")
    _, b = store.queue(msg.KEYS, "p", {}, key, "t", now=time.time() + 3e7)  # clock ahead
    _, c = store.queue(msg.KEYS, "p", {}, key, "t", now=time.time())  # corrected
    assert (a.seq, b.seq, c.seq) == (1, 2, 3)
    store.seen_seq(40)  # the office's state restored from an old backup: the broker knows 40
    _, d = store.queue(msg.KEYS, "p", {}, key, "t")
    assert d.seq == 41
    st.close()


def _evidence(records, heads=(), conflicts=()):
    from edge.fleet.officestore import LaneEvidence

    return LaneEvidence("lane1", [(*r, 0.0) for r in records], list(heads), list(conflicts))


def test_verify_lane_checks_links_and_signed_heads():
    from edge.fleet.officestore import verify_lane

    chain = [("e1", 1, "0", "a"), ("e1", 2, "a", "b"), ("e1", 3, "b", "c")]
    assert verify_lane(_evidence(chain, [("e1", 3, "c", 1.0)])) == []
    found = verify_lane(_evidence(chain[:1] + chain[2:], [("e1", 3, "c", 1.0)]))
    assert [f.broken for f in found] == [False]  # a gap not received yet: not broken
    assert "2..2 not received yet" in found[0].text
    bad = verify_lane(_evidence([*chain[:2], ("e1", 3, "x", "c")]))
    assert bad[0].broken and "does not follow record 2" in bad[0].text
    bad = verify_lane(_evidence(chain, [("e1", 3, "z", 1.0)]))
    assert bad[0].broken and "rewritten" in bad[0].text
    bad = verify_lane(_evidence(chain, [("e1", 3, "c", 1.0), ("e1", 2, "b", 2.0)]))
    assert any("went back from 3 to 2" in f.text for f in bad)
    restored = [*chain, ("e2", 3, "b", "c2")]  # epoch 2 went on from record 2
    bad = verify_lane(_evidence(restored))
    assert any("records 3..3 of epoch e1" in f.text for f in bad)
    bad = verify_lane(_evidence(chain, conflicts=[("e1", 2, "b", "q")]))
    assert "arrived again with another hash" in bad[0].text
    from edge.fleet.officestore import LaneEvidence
    from edge.gate.audit import AuditRecord, record_hash

    rec = AuditRecord(5.0, "lane1", "decision", "deny", "ticket", "T-1", None, "revoked")
    fields = json.dumps({"t": 5.0, "gate": "lane1", "kind": "decision", "decision": "deny",
                         "via": "ticket", "subject": "T-1", "reason": "revoked"})  # fmt: skip
    h = record_hash("0" * 64, 1, rec)
    assert verify_lane(LaneEvidence("lane1", [("e1", 1, "0" * 64, h, 0.0, fields)], [], [])) == []
    edited = fields.replace("revoked", "ok")
    bad = verify_lane(LaneEvidence("lane1", [("e1", 1, "0" * 64, h, 0.0, edited)], [], []))
    assert "content does not match" in bad[0].text


def test_ago_says_never_and_seconds():
    from edge.fleet.office import ago

    assert ago(None) == "never"
    assert ago(12.4) == "12 s ago"
    assert ago(125) == "2 min ago"


def test_config_without_fleet_is_alone_and_fleet_keys_are_checked(tmp_path):
    assert not config_mod.load().fleet.enabled
    p = tmp_path / "g.toml"
    p.write_text('[fleet]\nbroker = "http://x"\nsite = "s"\nlane = "l"\n')
    with pytest.raises(config_mod.ConfigError, match="fleet.broker"):
        config_mod.load(p)
    p.write_text('[fleet]\nbroker = "mqtt://x:1"\nsite = "a/b"\nlane = "l"\n')
    with pytest.raises(config_mod.ConfigError, match="fleet.site"):
        config_mod.load(p)
    p.write_text('[fleet]\nbroker = "mqtts://x"\nsite = "s"\nlane = "l"\noffline = "maybe"\n')
    with pytest.raises(config_mod.ConfigError, match="fleet.offline"):
        config_mod.load(p)


def test_outbox_is_written_in_the_ledger_transaction(tmp_path, office_keys):
    from edge.tickets.ledger import init_ledger

    t = tk.Ticket("T-1", "day", 0, 0, tk.Kind.ENTRIES, 3)
    init_ledger(tmp_path / "l.db")
    init_ledger(tmp_path / "alone.db")
    led = Ledger(tmp_path / "l.db", outbox=True)
    t = verify_proof(tk.sign(t, tk.load_private(office_keys[0])), [tk.load_public(office_keys[1])])
    assert led.redeem(t, 1000.0).ok
    rows = led.outbox_batch(0, 10)
    assert [(r.ticket_id, r.max_entries, r.proof) for r in rows] == [("T-1", 3, t.text)]
    assert led.outbox_high() == 1
    epoch = led.epoch
    assert led.new_epoch() != epoch  # a restored copy numbers its outbox anew
    assert led.epoch != epoch
    assert led.apply_remote("lane2", 1, "T-1", 1001.0, "1970-01-01", epoch="e1")
    assert not led.apply_remote("lane2", 1, "T-1", 1001.0, "1970-01-01", epoch="e1")  # again
    assert led.apply_remote("lane2", 1, "T-1", 1002.0, "1970-01-01", epoch="e2")  # new epoch
    assert led.used("T-1") == 3
    r = led.redeem(t, 2000.0)  # 3 entries of 3 counted: here and at lane2 (two epochs)
    assert not r.ok
    assert r.reason == tk.Reason.ALREADY_USED
    alone = Ledger(tmp_path / "alone.db")
    alone.redeem(t, 1000.0)
    assert alone.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


# --- a real broker --------------------------------------------------------------------------------


def test_screenshot_one_time_ticket_admits_once_across_three_lanes(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys)
    try:
        for i in (1, 2, 3):
            park.start(i)
        text = park.ticket("T-SCREENSHOT")
        rc, out = verify(park, 1, text)
        assert rc == 0
        assert out["reason"] == "ok"
        for i in (2, 3):
            wait_for(lambda i=i: park.remote(i, "T-SCREENSHOT") == 1, what=f"lane{i} hears lane1")
            rc, out = verify(park, i, text)
            assert rc != 0, out
            assert out["reason"] == "already_used", out
        wait_for(lambda: park.state(1, "outbox") == 0, what="lane1 outbox acknowledged")
    finally:
        park.stop_all()


def test_duplicated_and_reordered_messages_count_once(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.wait_ready(1)
        cfg2 = park.cfg(2)  # lane2's sync is not running: its login is free for this client
        key2 = load_lane_key(cfg2)
        proof = park.ticket("T-3X", entries=3)
        body = {"ticket": proof, "ticket_id": "T-3X", "day": "2026-11-27"}
        with OneShot(cfg2, "test") as c:
            for seq in (2, 1, 2, 1, 2):  # reordered, then duplicated
                m = msg.Message(
                    msg.REDEMPTION,
                    park.site,
                    "lane2",
                    seq,
                    time.time(),
                    {**body, "t": 1.0 * seq},
                    epoch="e1",
                )
                c.publish(
                    msg.topic(park.site, "redemptions", "lane2"), msg.encode(msg.sign(m, key2))
                )
        s = park.syncs[1][0]

        def settled() -> bool:
            # sync counts an arrival inside the ledger transaction that applies it: wait for
            # all five counted AND for what was counted as applied to be committed
            arrivals = s.stats["applied"] + s.stats["duplicates"]
            return arrivals == 5 and park.remote(1, "T-3X") == s.stats["applied"]

        wait_for(settled, what="five arrivals handled and committed")
        assert park.remote(1, "T-3X") == 2
        assert (s.stats["applied"], s.stats["duplicates"]) == (2, 3)
        assert park.audit(1, "double_use") == []  # 2 of 3 entries: no over-use
    finally:
        park.stop_all()


def test_a_redemption_number_used_again_for_another_ticket_still_counts(
    broker, office_keys, tmp_path
):
    """Row 1 when the restored lane's own check cannot see the restore (its last will, written
    at connection, was the newest mark): lane2 numbers T-B with the seq T-A had. The receiver
    counts T-B all the same, once, and audits the reuse; a true duplicate still counts once."""
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.wait_ready(1)
        cfg2 = park.cfg(2)  # lane2's sync is not running: its login is free for this client
        key2 = load_lane_key(cfg2)
        s = park.syncs[1][0]
        with OneShot(cfg2, "test") as c:
            for tid in ("T-A", "T-B", "T-B"):  # T-B under T-A's number, then delivered twice
                body = {"ticket": park.ticket(tid), "ticket_id": tid, "day": "2026-11-27"}
                m = msg.Message(
                    msg.REDEMPTION,
                    park.site,
                    "lane2",
                    1,
                    time.time(),
                    {**body, "t": 1.0},
                    epoch="e1",
                )
                c.publish(
                    msg.topic(park.site, "redemptions", "lane2"), msg.encode(msg.sign(m, key2))
                )
        wait_for(
            lambda: s.stats["applied"] + s.stats["duplicates"] == 3 and park.remote(1, "T-B") == 1,
            what="three arrivals handled and committed",
        )
        assert (park.remote(1, "T-A"), park.remote(1, "T-B")) == (1, 1)
        assert (s.stats["applied"], s.stats["duplicates"]) == (2, 1)
        (r,) = park.audit(1, "seq_reused")
        assert r.subject == "T-B" and "seq 1: T-A, then T-B" in r.detail
        assert verify(park, 1, park.ticket("T-B"))[1]["reason"] == "already_used"
    finally:
        park.stop_all()


def test_broker_down_at_start_then_up(office_keys, tmp_path):
    _need_mosquitto()
    b = Mosquitto(tmp_path / "broker", users=USERS)
    park = Park(tmp_path, b.url, office_keys, lanes=2)
    try:
        b.start()  # lane2 has been in the fleet before: its session is on the broker
        park.start(2)
        wait_for(lambda: park.state(2, "connected"), what="lane2 connected")
        b.stop()
        park.start(1)
        rc, out = verify(park, 1, park.ticket("T-EARLY"))
        assert rc == 0
        assert not park.state(1, "connected")
        b.start()
        wait_for(lambda: park.remote(2, "T-EARLY") == 1, what="lane2 gets the early redemption")
        wait_for(lambda: park.state(1, "outbox") == 0, what="outbox drained after broker came up")
    finally:
        park.stop_all()
        b.stop()


def test_broker_restarted_mid_stream_loses_nothing(office_keys, tmp_path):
    _need_mosquitto()
    b = Mosquitto(tmp_path / "broker", users=USERS).start()
    park = Park(tmp_path, b.url, office_keys, lanes=2)
    try:
        park.start(1)
        park.start(2)
        wait_for(lambda: park.state(2, "connected"), what="lane2 connected")
        led = Ledger(park.lanes[0].dir / "ledger.db", gate="lane1", outbox=True)
        n = 60
        for k in range(n):
            assert led.redeem(park.signed(f"T-R{k}"), time.time()).ok
            if k == n // 2:
                b.restart()
        led.close()
        wait_for(lambda: park.remote(2) == n, timeout=40, what=f"all {n} at lane2")
        wait_for(lambda: park.state(1, "outbox") == 0, what="lane1 outbox empty")
    finally:
        park.stop_all()
        b.stop()


def test_partitioned_lane_double_use_is_detected_and_reported(broker, office_keys, tmp_path):
    proxy = Proxy(broker.port)
    park = Park(
        tmp_path, broker.url, office_keys, lanes=2, urls={2: f"mqtt://127.0.0.1:{proxy.port}"}
    )
    try:
        park.start(1)
        park.start(2)
        wait_for(lambda: park.state(2, "connected"), what="lane2 connected")
        proxy.cut()
        wait_for(lambda: not park.state(2, "connected"), what="lane2 sees the partition")
        text = park.ticket("T-SPLIT")
        assert verify(park, 1, text)[0] == 0
        assert verify(park, 2, text)[0] == 0  # offline = "local": availability first
        proxy.heal()
        for i in (1, 2):
            recs = wait_for(lambda i=i: park.audit(i, "double_use"), what=f"double_use at lane{i}")
            assert recs[0].subject == "T-SPLIT"
            assert "lane1, lane2" in recs[0].detail

        def reported_by() -> set[str]:  # each lane's record reaches the office in its own time
            return {r["lane"] for r in fleet_audit(park) if r.get("reason") == "double_use"}

        wait_for(lambda: reported_by() == {"lane1", "lane2"}, what="double_use in fleet audit")
        assert fleet_audit(park, "--since", str(int(time.time()) + 3600)) == []
    finally:
        park.stop_all()
        proxy.cut()


def test_offline_deny_refuses_while_cut_off(office_keys, tmp_path):
    _need_mosquitto()
    park = Park(
        tmp_path, f"mqtt://127.0.0.1:{free_port()}", office_keys, lanes=1, fleet={"offline": "deny"}
    )
    park.start(1)
    try:
        wait_for(lambda: park.state(1, "connected") is False, what="sync reports no link")
        rc, out = verify(park, 1, park.ticket("T-DENY"))
        assert rc != 0
        assert out["reason"] == "fleet_offline"
    finally:
        park.stop_all()


def test_kill_9_of_sync_mid_batch_loses_nothing(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    n = 400
    led = Ledger(park.lanes[0].dir / "ledger.db", gate="lane1", outbox=True)
    for k in range(n):
        assert led.redeem(park.signed(f"T-K{k}"), time.time()).ok
    led.close()
    park.start(2)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "edge.cli", "sync", "--config", str(park.lanes[0].config)]
    try:
        p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        wait_for(lambda: park.remote(2) > 0, what="some of the batch at lane2")
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        left = park.state(1, "outbox")
        p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        wait_for(
            lambda: park.remote(2) == n, timeout=40, what=f"all {n} at lane2 (had {left} left)"
        )
        wait_for(lambda: park.state(1, "outbox") == 0, what="outbox empty")
    finally:
        if p.poll() is None:
            p.terminate()
            p.wait(10)
        park.stop_all()


def test_office_revocations_and_keys_reach_every_lane_signed(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        for i in (1, 2):
            park.start(i)
        r = cli(
            "ticket",
            "revoke",
            "--list",
            str(park.office.dir / "revoked.txt"),
            "--publish",
            "--key",
            str(park.priv),
            "--config",
            str(park.office.config),
            "T-STOLEN",
        )
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            wait_for(
                lambda i=i: (
                    "T-STOLEN" in tk.load_revocations(park.lanes[i - 1].dir / "revoked.txt")
                ),
                what=f"revocation at lane{i}",
            )
        rc, out = verify(park, 2, park.ticket("T-STOLEN"))
        assert rc != 0
        assert out["reason"] == "revoked"
        # A new issuer key, announced by the office under the current key: tickets it signs work.
        new_priv, new_pub = tk.keygen(tmp_path / "new-issuer")
        r = cli(
            "fleet",
            "publish-keys",
            "--key",
            str(park.priv),
            "--config",
            str(park.office.config),
            str(new_pub),
        )
        assert r.returncode == 0, r.stderr
        wait_for(
            lambda: list((park.lanes[0].dir / "fleet-keys").glob("*.pub")), what="key at lane1"
        )
        t = tk.Ticket("T-NEWKEY", "day", int(time.time()) - 5, int(time.time()) + 3600)
        rc, out = verify(park, 1, tk.sign(t, tk.load_private(new_priv)))
        assert rc == 0, out
        assert out["reason"] == "ok", out
        # Signed by a key the lanes do not trust: refused, logged, nothing applied.
        rogue_priv, _ = tk.keygen(tmp_path / "rogue")
        from edge.fleet.office import publish_revocations

        publish_revocations(config_mod.load(park.office.config), rogue_priv, frozenset({"T-OK"}))
        for i in (1, 2):
            recs = wait_for(lambda i=i: park.audit(i, "refused"), what=f"refusal at lane{i}")
            assert "unknown key" in recs[0].detail
            assert "T-OK" not in tk.load_revocations(park.lanes[i - 1].dir / "revoked.txt")
    finally:
        park.stop_all()


def test_lane_cannot_write_office_topics(broker, office_keys, tmp_path):
    """Per-lane credentials and ACLs: a lane's login cannot forge an office message."""
    park = Park(tmp_path, broker.url, office_keys, lanes=2)
    try:
        park.start(2)
        wait_for(lambda: park.state(2, "connected"), what="lane2 connected")
        cfg1 = park.cfg(1)
        m = msg.sign(
            msg.Message(
                msg.REVOCATIONS, park.site, "office", 10**15, time.time(), {"revoked": ["T-X"]}
            ),
            tk.load_private(park.priv),
        )
        with OneShot(cfg1, "forger") as c:  # the broker acks, and drops it (ACL)
            c.publish(msg.topic(park.site, "office", "revocations"), msg.encode(m), retain=True)
        from edge.fleet.office import fleet_status

        fleet_status(config_mod.load(park.office.config))  # a full round trip through the broker
        assert "T-X" not in tk.load_revocations(park.lanes[1].dir / "revoked.txt")
    finally:
        park.stop_all()


def _office_person(park: Park) -> str:
    import numpy as np

    from edge.gallery.crypto import load_key
    from edge.gallery.store import Consent, Gallery

    g = Gallery(park.office.dir / "gallery.db", load_key(park.office.dir / "gallery.key"))
    emb = np.random.default_rng(1).normal(size=(2, 128)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pid = g.add_person(
        "Ada Park", Consent("2026-03"), list(emb), "dlib_resnet_int8", "1", pass_ref="AP-1"
    )
    g.close()
    return pid


def _lane_people(park: Park, i: int) -> list:
    from edge.errors import GalleryError
    from edge.gallery.crypto import load_key
    from edge.gallery.store import Gallery

    d = park.lanes[i - 1].dir
    try:  # sync may be creating the file right now
        g = Gallery(d / "gallery.db", load_key(d / "gallery.key"), create=False)
    except GalleryError:
        return []
    try:
        return g.people()
    finally:
        g.close()


def test_enroll_once_forget_everywhere_with_proof(broker, office_keys, tmp_path):
    from edge.fleet.office import fleet_status, publish_enrollment

    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    # lane3 holds the wrong site key: it must refuse the record and say so.
    from edge.gallery.crypto import init_key

    init_key(tmp_path / "wrong-site.key")
    text = (
        park.lanes[2]
        .config.read_text()
        .replace(str(park.site_key), str(tmp_path / "wrong-site.key"))
    )
    park.lanes[2].config.write_text(text)
    try:
        for i in (1, 2, 3):
            park.start(i)
        pid = _office_person(park)
        ocfg = config_mod.load(park.office.config)
        publish_enrollment(
            ocfg, park.priv, park.office.dir / "gallery.db", park.office.dir / "gallery.key", pid
        )
        for i in (1, 2):
            people = wait_for(  # the person row lands before the templates' transaction
                lambda i=i: [p for p in _lane_people(park, i) if p.template_count == 2],
                what=f"enrolled at lane{i}",
            )
            assert people[0].id == pid
            assert people[0].name == "Ada Park"
            assert people[0].template_count == 2
        recs = wait_for(lambda: park.audit(3, "refused"), what="lane3 refuses the sealed record")
        assert "site key" in recs[0].detail
        assert _lane_people(park, 3) == []
        # The broker never saw the name or the pass reference.
        raw = b"".join(
            (broker.dir / f).read_bytes() for f in os.listdir(broker.dir) if f.endswith(".db")
        )
        assert b"Ada Park" not in raw
        assert b"AP-1" not in raw
        st = wait_for(
            lambda: (
                (s := fleet_status(ocfg))["people"].get(pid, {}).get("lanes_done")
                == ["lane1", "lane2"]
                and s
            ),
            what="two enrollment acks",
        )
        assert st["people"][pid]["summary"] == "enrolled on 2 of 3 lanes"
        r = cli(
            "forget",
            "--config",
            str(park.office.config),
            "--publish",
            "--issuer-key",
            str(park.priv),
            "--reason",
            "deletion_request",
            pid,
        )
        assert r.returncode == 0, r.stderr
        for i in (1, 2):
            wait_for(lambda i=i: _lane_people(park, i) == [], what=f"forgotten at lane{i}")

        def deletion_status():
            rep = fleet_status(ocfg)
            p = rep["people"].get(pid, {})
            return rep if p.get("op") == "forget" and len(p["lanes_done"]) == 3 else None

        # lane3 never held the person, and says so too: the deletion proof covers every lane.
        rep = wait_for(deletion_status, what="deletion acks from all three lanes")
        assert rep["people"][pid]["summary"] == "forgotten on 3 of 3 lanes"
        r = cli("fleet", "status", "--config", str(park.office.config))
        assert f"{pid}: forgotten on 3 of 3 lanes" in r.stdout
        assert set(rep["lanes"]) == {"lane1", "lane2", "lane3"}
    finally:
        park.stop_all()


def test_lane_with_clock_ten_minutes_off_refuses_tickets(broker, office_keys, tmp_path):
    park = Park(tmp_path, broker.url, office_keys, lanes=3)
    try:
        park.start(1)
        park.start(2)
        park.start(3, clock=lambda: time.time() + 600)
        off = wait_for(
            lambda: (o := park.state(3, "clock_offset")) is not None and abs(o - 600) < 5 and o,
            what="lane3 measures its offset",
        )
        assert off == pytest.approx(600, abs=5)
        wait_for(lambda: park.state(1, "clock_offset") is not None, what="lane1 measures")
        assert abs(park.state(1, "clock_offset")) < 5
        rc, out = verify(park, 3, park.ticket("T-CLOCK"))
        assert rc != 0
        assert out["reason"] == "clock_skew"
        rc, out = verify(park, 1, park.ticket("T-CLOCK"))
        assert rc == 0
        r = cli("fleet", "status", "--config", str(park.lanes[2].config))
        assert "CLOCK OFF" in r.stdout
        assert r.returncode == 0
        from edge.gate.doctor import CHECKS, Site

        fleet_check = dict(CHECKS)["fleet"]
        res = fleet_check(Site(park.cfg(3), tmp_path / "g.db", tmp_path / "g.key"))
        assert res.status == "fail"
        assert "clock_skew" in res.detail
        assert "lane3" in res.detail
        other = fleet_check(Site(park.cfg(1), tmp_path / "g.db", tmp_path / "g.key"))
        detail = getattr(other, "detail", other)
        assert "connected" in detail
        assert "clock off from the fleet's: lane3 (+" in detail  # named at every lane
    finally:
        park.stop_all()


def test_gate_applies_office_revocations_and_keys_without_restart(office_keys, tmp_path):
    """The gate process re-reads what sync wrote (revoked.txt, fleet-keys/) on its next tick."""
    from edge.gate.daemon import Gate

    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", office_keys[1])
    gate = Gate(config_mod.load(m.config), source=NoFrames())
    try:
        assert gate.ledger.outbox  # in a fleet, every redemption is queued for sync
        new_priv, new_pub = tk.keygen(tmp_path / "new")
        t = tk.Ticket("T-LATER", "day", int(time.time()) - 5, int(time.time()) + 3600)
        text = tk.sign(t, tk.load_private(new_priv))
        assert gate.verifier.verify(text, time.time()).reason == tk.Reason.UNKNOWN_KEY
        (m.dir / "fleet-keys").mkdir()
        (m.dir / "fleet-keys" / "k.pub").write_bytes(new_pub.read_bytes())
        tk.revoke(m.dir / "revoked.txt", ["T-GONE"])
        gate.tick(0.0)
        assert gate.verifier.verify(text, time.time()).valid
        assert "T-GONE" in gate.verifier.revoked
    finally:
        gate.close()


def test_restored_lane_grants_nobody_by_face_until_the_forget_list_is_applied(
    office_keys, tmp_path
):
    """The gate's side of the forget replay: a face grant becomes a deny (forget_replay) while
    sync says the lane's new epoch has not applied the office's forget list; tickets still work."""
    from edge.gate.daemon import Gate
    from edge.gate.policy import GRANT, Decision, Via

    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", office_keys[1])
    st = FleetState(m.dir / "fleet.db")
    st.put(forget_replay="new epoch 1a2b3c4d: the ledger's outbox went back")
    events: list[dict] = []
    gate = Gate(config_mod.load(m.config), on_decision=events.append, source=NoFrames())
    try:
        gate.act(Decision(time.monotonic(), 1, GRANT, Via.FACE, "P-0123456789abcdef", 0.7, "ok"))
        assert events[-1]["decision"] == "deny"
        assert events[-1]["reason"] == "forget_replay"
        st.put(forget_replay=None)  # sync applied the list
        gate.act(Decision(time.monotonic(), 2, GRANT, Via.FACE, "P-0123456789abcdef", 0.7, "ok"))
        assert events[-1]["decision"] == "grant"
    finally:
        gate.close()
        st.close()


def _log(epoch: str, times, kinds=None, start: int = 1, prev: str = "0" * 64):
    """A lane's audit records as the office stores them, with content hashes that fit."""
    from edge.fleet.officestore import _content_hash

    out = []
    for k, t in enumerate(times):
        rid = start + k
        kind = (kinds or {}).get(rid, "decision")
        fields = json.dumps({"t": t, "gate": "lane1", "kind": kind, "decision": "deny"})
        h = _content_hash(prev, rid, fields)
        out.append((epoch, rid, prev, h, 0.0, fields))
        prev = h
    return out


def test_verify_lane_compares_a_log_sent_again_under_a_new_epoch_record_by_record():
    """A log sent again from record 1 under a new epoch was compared with the earlier epoch's
    only where the two met: a lane could rewrite its log, re-initialise its ledger and send it
    all again unseen. Every record both epochs hold must now agree."""
    from edge.fleet.officestore import LaneEvidence, verify_lane

    def check(*records):
        return verify_lane(LaneEvidence("lane1", [r for rs in records for r in rs], [], []))

    e1 = _log("e1", [100.0, 101.0, 102.0, 103.0])
    assert check(e1, _log("e2", [100.0, 101.0, 102.0, 103.0, 104.0])) == []  # the same log
    # the same records sent again from record 2 (a cursor restored, nothing else): not "cut"
    assert check(e1, _log("e2", [100.0, 101.0, 102.0, 103.0])[1:]) == []
    # record 3 edited and the chain rebuilt, all sent again from record 1 under a new epoch
    rewritten = _log("e2", [100.0, 101.0, 102.0, 103.0], kinds={3: "system"})
    bad = check(e1, rewritten)
    assert [f.broken for f in bad] == [True]
    assert "went on from record 2: records 3..4 of epoch e1" in bad[0].text
    # rewritten from its first record, keeping its times: it claims to have begun before
    bad = check(e1, _log("e2", [100.0, 101.0], kinds={1: "system"}))
    assert bad[0].broken and "rewritten from its start" in bad[0].text
    # a lane installed again: its new log begins after the old one's last record
    found = check(e1, _log("e2", [500.0, 501.0]))
    assert [f.broken for f in found] == [False]
    assert "another log" in found[0].text and "records 1..4 of epoch e1" in found[0].text
