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

import pytest

from edge import config as config_mod
from edge import tickets as tk
from edge.config import PROJECT_ROOT
from edge.fleet import messages as msg
from edge.fleet.client import OneShot
from edge.fleet.state import FleetState
from edge.fleet.sync import Sync, fleet_offset
from edge.gate.audit import AuditLog
from edge.lab.broker import MISSING, Mosquitto, free_port, mosquitto_binary
from edge.lab.workspace import write_member
from edge.tickets.ledger import Ledger

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


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    _need_mosquitto()
    with Mosquitto(tmp_path_factory.mktemp("mosquitto"), users=USERS) as b:
        yield b


@pytest.fixture(scope="module")
def office_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("office-keys")
    return tk.keygen(d)


class Park:
    """An office and N lanes in a fresh site; syncs run in threads (or as processes)."""

    def __init__(self, root: Path, broker_url: str, keys, lanes=3, fleet=None, urls=None):
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
        self.syncs: dict[int, tuple[Sync, threading.Thread]] = {}

    def cfg(self, i: int) -> config_mod.Config:
        return config_mod.load(self.lanes[i - 1].config)

    def start(self, i: int, clock=time.time) -> Sync:
        """Sync in a thread of its own (its SQLite connections belong to that thread)."""
        made: list[Sync] = []
        ready = threading.Event()

        def main():
            made.append(Sync(self.cfg(i), clock=clock))
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

    def remote(self, i: int, tid: str | None = None) -> int:
        led = Ledger(self.lanes[i - 1].dir / "ledger.db")
        try:
            q = "SELECT count(*) FROM remote_redemptions" + (" WHERE ticket_id = ?" if tid else "")
            return led.conn.execute(q, (tid,) if tid else ()).fetchone()[0]
        finally:
            led.close()

    def audit(self, i: int, reason: str) -> list:
        a = AuditLog(self.lanes[i - 1].dir / "audit.db")
        try:
            return [r for r in a.records() if r.reason == reason]
        finally:
            a.close()

    def state(self, i: int, key: str):
        st = FleetState(self.lanes[i - 1].dir / "fleet.db")
        try:
            return st.get(key)
        finally:
            st.close()


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
    assert fleet_offset([-600.0, -600.0]) == 600.0  # both peers 10 min behind us: we are off
    assert fleet_offset([0.2, 600.0]) == pytest.approx(-0.2)  # one peer off: we are fine
    assert fleet_offset([-600.0]) == 0.0  # two clocks disagree: nobody can tell who is wrong


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

    t = tk.Ticket("T-1", "day", 0, 0, tk.Kind.ENTRIES, 2)
    init_ledger(tmp_path / "l.db")
    init_ledger(tmp_path / "alone.db")
    led = Ledger(tmp_path / "l.db", outbox=True)
    assert led.redeem(t, 1000.0).ok
    assert led.conn.execute("SELECT ticket_id, max_entries FROM outbox").fetchall() == [("T-1", 2)]
    assert led.apply_remote("lane2", 1, "T-1", 1001.0, "1970-01-01")
    assert not led.apply_remote("lane2", 1, "T-1", 1001.0, "1970-01-01")  # duplicate
    assert led.used("T-1") == 2
    r = led.redeem(t, 2000.0)
    assert not r.ok
    assert r.reason == tk.ALREADY_USED
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
    park = Park(tmp_path, broker.url, office_keys, lanes=1)
    try:
        park.start(1)
        wait_for(lambda: park.state(1, "connected"), what="lane1 connected")
        lane2 = write_member(tmp_path, "lane2", broker.url, park.site, park.pub, USERS["lane2"])
        cfg2 = config_mod.load(lane2.config)
        body = {"ticket_id": "T-3X", "day": "2026-11-27", "kind": 1, "max_entries": 3}
        with OneShot(cfg2, "test") as c:
            for seq in (2, 1, 2, 1, 2):  # reordered, then duplicated
                m = msg.Message(
                    msg.REDEMPTION, park.site, "lane2", seq, time.time(), {**body, "t": 1.0 * seq}
                )
                c.publish(msg.topic(park.site, "redemptions", "lane2"), msg.encode(m))
        s = park.syncs[1][0]
        wait_for(lambda: s.stats["applied"] + s.stats["duplicates"] == 5, what="five arrivals")
        assert park.remote(1, "T-3X") == 2
        assert s.stats["duplicates"] == 3
        assert park.audit(1, "double_use") == []  # 2 of 3 entries: no over-use
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
            t = tk.Ticket(f"T-R{k}", "day", 0, 0, tk.Kind.ONE_TIME, 1)
            assert led.redeem(t, time.time()).ok
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
        rows = wait_for(
            lambda: [r for r in fleet_audit(park) if r.get("reason") == "double_use"],
            what="double_use in fleet audit",
        )
        assert {r["lane"] for r in rows} == {"lane1", "lane2"}
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
        assert led.redeem(tk.Ticket(f"T-K{k}", "day", 0, 0, tk.Kind.ONE_TIME, 1), time.time()).ok
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
        assert "connected" in fleet_check(Site(park.cfg(1), tmp_path / "g.db", tmp_path / "g.key"))
    finally:
        park.stop_all()


def test_gate_applies_office_revocations_and_keys_without_restart(office_keys, tmp_path):
    """The gate process re-reads what sync wrote (revoked.txt, fleet-keys/) on its next tick."""
    from edge.gate.daemon import Gate

    class NoFrames:
        state, finished = "ok", True

        def read(self):
            return None

        def close(self):
            pass

    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", office_keys[1])
    gate = Gate(config_mod.load(m.config), source=NoFrames())
    try:
        assert gate.ledger.outbox  # in a fleet, every redemption is queued for sync
        new_priv, new_pub = tk.keygen(tmp_path / "new")
        t = tk.Ticket("T-LATER", "day", int(time.time()) - 5, int(time.time()) + 3600)
        text = tk.sign(t, tk.load_private(new_priv))
        assert gate.verifier.verify(text, time.time()).reason == tk.UNKNOWN_KEY
        (m.dir / "fleet-keys").mkdir()
        (m.dir / "fleet-keys" / "k.pub").write_bytes(new_pub.read_bytes())
        tk.revoke(m.dir / "revoked.txt", ["T-GONE"])
        gate.tick(0.0)
        assert gate.verifier.verify(text, time.time()).valid
        assert "T-GONE" in gate.verifier.revoked
    finally:
        gate.close()
