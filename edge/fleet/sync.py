"""`edge-gate sync`: the lane's only network process, between its SQLite files and the broker.

Out: the ledger's outbox (QoS 1; a row is deleted only when the broker acknowledged it, so a
kill -9 loses nothing and at worst sends a row twice), the audit log (one retained message per
record) and a heartbeat. In: other lanes' redemptions (applied by (lane, seq), so duplicates and
reordering are harmless; over-use found on arrival is audited as `double_use` naming the lanes),
office messages (signed; see edge/fleet/apply.py) and heartbeats (the fleet's clock).
paho's network thread only queues; every SQLite access happens on the calling thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edge import tickets as tk
from edge.config import Config
from edge.fleet import messages as msg
from edge.fleet.apply import OfficeApplier
from edge.fleet.client import make_client
from edge.fleet.state import FleetState
from edge.gate.audit import AuditLog, AuditRecord
from edge.tickets.ledger import Ledger

log = logging.getLogger(__name__)
DOUBLE_USE = "double_use"
BATCH = 500
POLL_S = 0.01  # how often the ledger is checked for new local redemptions (a cheap pragma)
STATE_EVERY_S = 1.0  # link state refresh for the gate, at least this often


@dataclass
class _Peer:
    sample: float  # peer's clock minus ours at arrival
    seen: float  # our monotonic time of arrival


def fleet_offset(samples: list[float]) -> float:
    """Our clock minus the fleet's: the median of peers' readings and our own (0); of two middle
    values the one nearer 0, so two lanes that disagree refuse nobody (three are needed to tell)."""
    xs = sorted([0.0, *samples])
    mid = len(xs) // 2
    cands = [xs[mid]] if len(xs) % 2 else [xs[mid - 1], xs[mid]]
    return -min(cands, key=abs)


class Sync:
    """One lane's sync loop; `step()` does one round of work, `run()` loops until stopped."""

    def __init__(self, cfg: Config, clock: Callable[[], float] = time.time):
        fl = cfg.fleet
        self.cfg, self.fleet, self.clock = cfg, fl, clock
        self.ledger = Ledger(
            cfg.resolve(cfg.tickets.ledger), cfg.gate.id, cfg.tickets.antipassback_s, outbox=True
        )
        self.state = FleetState(cfg.resolve(fl.state_db))
        self.audit = AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days)
        self.office = OfficeApplier(cfg, self.state, self._audit_event)
        self.client, self.addr = make_client(cfg, f"edge-gate-{fl.site}-{fl.lane}")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self._outage_logged = False  # one line per outage, not one per reconnection attempt
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acked: queue.Queue[int] = queue.Queue()
        self.wake = threading.Event()
        self.connected = False
        self.resend = True
        self.pending: dict[int, tuple[str, int]] = {}  # mid -> ("outbox"|"audit"|"ack", id)
        self.sent_outbox = 0
        self.sent_audit = self.state.cursor("audit")
        self.audit_inflight: set[int] = set()
        self.peers: dict[str, _Peer] = {}
        self.next_heartbeat = 0.0
        self.stop_requested = False
        self._seen = {"ledger": -1, "audit": -1}
        self._more = True  # the last outbox read filled a batch, or a resend is due
        self._audit_next = 0.0
        self._link: tuple = ()
        self._state_due = 0.0
        self.stats = {"published": 0, "applied": 0, "duplicates": 0, "refused": 0}
        # (redemption time, seconds until applied here) for the benchmark; at most 100k
        self.delays: list[tuple[float, float]] = []

    # --- paho callbacks (network thread): only queue --------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("sync broker refused connection: %s", reason_code)
            return
        t = msg.topics(self.fleet.site)
        client.subscribe([(t["redemptions"], 1), (t["office"], 1), (t["heartbeat"], 0)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        """Connected counts from the SUBACK on: before it, other lanes' messages could be missed."""
        if any(rc.is_failure for rc in reason_codes):
            log.error("sync subscription refused: %s (check the broker's ACL)", reason_codes)
            return
        self.connected, self.resend, self._outage_logged = True, True, False
        log.info("sync connected broker=%s lane=%s", self.fleet.broker, self.fleet.lane)
        self.wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected, self._outage_logged = False, True
        log.warning("sync disconnected from broker: %s; retrying", reason_code)
        self.wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.error(
                "sync broker unreachable broker=%s; retrying every few seconds (this lane's "
                "redemptions wait in its outbox)",
                self.fleet.broker,
            )

    def _on_message(self, client, userdata, message) -> None:
        self.inbox.put(message)
        self.wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acked.put(mid)
        self.wake.set()

    # --- work (caller's thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, so sync starts and retries even while the broker is down."""
        self.client.connect_async(self.addr.host, self.addr.port, keepalive=5)
        self.client.loop_start()

    def run(self) -> int:
        """Loop until SIGTERM/SIGINT (main thread) or stop_requested."""
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                signal.signal(s, lambda *_: setattr(self, "stop_requested", True))
        self.start()
        try:
            while not self.stop_requested:
                self.wake.wait(POLL_S)
                self.wake.clear()
                self.step()
        finally:
            self.close()
        return 0

    def step(self) -> None:
        """One pass of the sync loop: apply what arrived, publish what is pending, heartbeat."""
        now = self.clock()
        batch: list[mqtt.MQTTMessage] = []
        while len(batch) < BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        if batch:  # one ledger transaction (one fsync) for everything that arrived
            with self._ledger_tx():
                for message in batch:
                    self._handle(message, now)
        self._handle_acks()
        if self.connected:
            if self.resend:  # after (re)connection, everything not acknowledged goes again
                self.resend, self.sent_outbox, self._more = False, 0, True
                self.sent_audit = self.state.cursor("audit")
                self.pending.clear()
                self.audit_inflight.clear()
            ledger_v = self.ledger.conn.execute("PRAGMA data_version").fetchone()[0]
            if ledger_v != self._seen["ledger"] or self._more:
                self._seen["ledger"] = ledger_v
                self._publish_outbox(now)
            audit_v = self.audit.conn.execute("PRAGMA data_version").fetchone()[0]
            if audit_v != self._seen["audit"] or self._audit_due():
                self._seen["audit"] = audit_v
                self._publish_audit()
            if time.monotonic() >= self.next_heartbeat:
                self._heartbeat(now)
            for topic_, payload in self.office.take_acks():
                self._send(topic_, payload, ("ack", 0), retain=True)
        link = (self.connected, self.clock_offset())
        if link != self._link or time.monotonic() >= self._state_due:
            self._link, self._state_due = link, time.monotonic() + STATE_EVERY_S
            self.state.put(
                connected=self.connected,
                last_contact=now if self.connected else self.state.get("last_contact"),
                clock_offset=link[1],
                outbox=self.outbox_size(),
            )

    @contextlib.contextmanager
    def _ledger_tx(self):
        c = self.ledger.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def _audit_due(self) -> bool:
        """Audit rows written here don't change data_version: look each second."""
        if time.monotonic() < self._audit_next:
            return False
        self._audit_next = time.monotonic() + STATE_EVERY_S
        return True

    def _send(self, topic_: str, payload: bytes, what: tuple[str, int], retain=False) -> None:
        info = self.client.publish(topic_, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.pending[info.mid] = what
            self.stats["published"] += 1

    def _publish_outbox(self, now: float) -> None:
        rows = self.ledger.conn.execute(
            "SELECT seq, ticket_id, t, day, kind, max_entries FROM outbox WHERE seq > ? "
            "ORDER BY seq LIMIT ?",
            (self.sent_outbox, max(0, BATCH - len(self.pending))),
        ).fetchall()
        self._more = len(rows) > 0 and len(rows) == max(0, BATCH - len(self.pending))
        for seq, tid, t, day, kind, max_entries in rows:
            body = {"ticket_id": tid, "t": t, "day": day, "kind": kind, "max_entries": max_entries}
            m = msg.Message(msg.REDEMPTION, self.fleet.site, self.fleet.lane, seq, now, body)
            self._send(
                msg.topic(self.fleet.site, "redemptions", self.fleet.lane),
                msg.encode(m),
                ("outbox", seq),
            )
            self.sent_outbox = seq

    def _publish_audit(self) -> None:
        rows = self.audit.conn.execute(
            "SELECT id, t, gate, kind, decision, via, subject, score, reason, detail FROM events "
            "WHERE id > ? ORDER BY id LIMIT 200",
            (self.sent_audit,),
        ).fetchall()
        keys = ("t", "gate", "kind", "decision", "via", "subject", "score", "reason", "detail")
        for row in rows:
            body = {k: v for k, v in zip(keys, row[1:], strict=True) if v not in ("", None)}
            m = msg.Message(msg.AUDIT, self.fleet.site, self.fleet.lane, row[0], row[1], body)
            self._send(
                msg.topic(self.fleet.site, "audit", self.fleet.lane, row[0]),
                msg.encode(m),
                ("audit", row[0]),
                retain=True,
            )
            self.audit_inflight.add(row[0])
            self.sent_audit = row[0]

    def _heartbeat(self, now: float) -> None:
        self.next_heartbeat = time.monotonic() + self.fleet.heartbeat_s
        last = self.audit.conn.execute(
            "SELECT max(t) FROM events WHERE kind = 'decision'"
        ).fetchone()[0]
        gate = self.state.get("gate_status") or {}
        body = {
            "fps": gate.get("fps"),
            "camera": gate.get("camera"),
            "mode": gate.get("mode", self.cfg.gate.mode),
            "last_decision_t": last,
            "clock_offset": self.clock_offset(),
            "outbox": self.outbox_size(),
        }
        m = msg.Message(msg.HEARTBEAT, self.fleet.site, self.fleet.lane, int(now * 1000), now, body)
        self.client.publish(
            msg.topic(self.fleet.site, "heartbeat", self.fleet.lane), msg.encode(m), 0, retain=True
        )

    def _handle_acks(self) -> None:
        done: list[int] = []
        while True:
            try:
                what = self.pending.pop(self.acked.get_nowait(), None)
            except queue.Empty:
                break
            if what and what[0] == "outbox":
                done.append(what[1])
            elif what and what[0] == "audit":
                self.audit_inflight.discard(what[1])
        if done:
            self._more = True  # room in the window again
            with self._ledger_tx():
                self.ledger.conn.executemany(
                    "DELETE FROM outbox WHERE seq = ?", [(s,) for s in done]
                )
        upto = min(self.audit_inflight) - 1 if self.audit_inflight else self.sent_audit
        if upto > self.state.cursor("audit"):
            self.state.set_cursor("audit", upto)

    def _handle(self, message: mqtt.MQTTMessage, now: float) -> None:
        try:
            m = msg.decode(message.payload, self.fleet.site)
            parts = message.topic.split("/")
            if parts[2] == "redemptions":
                if parts[3] != m.lane or m.type != msg.REDEMPTION:
                    raise msg.MessageError(f"{m.type} from {m.lane!r} on {message.topic}")
                if m.lane != self.fleet.lane:
                    self._apply_redemption(m, now)
            elif parts[2] == "heartbeat":
                if m.lane != self.fleet.lane and m.type == msg.HEARTBEAT and not message.retain:
                    self.peers[m.lane] = _Peer(m.time - now, time.monotonic())
            elif parts[2] == "office":
                self.office.handle(m, now)
        except msg.MessageError as e:
            self.stats["refused"] += 1
            log.warning("sync refused message topic=%s reason=%s", message.topic, e)
            self._audit_event(now, "refused", f"{message.topic}: {e}"[:300])
        except Exception as e:  # this lane could not apply it (gallery key, disk): say so, go on
            self.stats["refused"] += 1
            log.error("sync apply_failed topic=%s error=%s", message.topic, e)
            self._audit_event(now, "apply_failed", f"{message.topic}: {e}"[:300])

    def _apply_redemption(self, m: msg.Message, now: float) -> None:
        b = m.body
        try:
            tid, t, day = str(b["ticket_id"]), float(b["t"]), str(b["day"])
            kind, max_entries = tk.Kind(int(b["kind"])), int(b["max_entries"])
        except (KeyError, TypeError, ValueError) as e:
            raise msg.MessageError(f"redemption from {m.lane!r}: bad body {e}") from None
        if not self.ledger.apply_remote(m.lane, m.seq, tid, t, day):
            self.stats["duplicates"] += 1
            return
        self.stats["applied"] += 1
        if len(self.delays) < 100_000:
            self.delays.append((t, self.clock() - t))
        on_day = day if kind == tk.Kind.SEASON else None
        used = self.ledger.used(tid, on_day)
        if used > max_entries and used > self.state.double_use_reported(tid):
            lanes = self.lanes_of(tid, on_day)
            detail = f"lanes {', '.join(lanes)}: {used} entries of {max_entries}"
            log.warning("sync double_use ticket=%s %s", tid, detail)
            self._audit_event(now, DOUBLE_USE, detail, subject=tid)
            self.state.set_double_use_reported(tid, used)

    def lanes_of(self, ticket_id: str, day: str | None) -> list[str]:
        """Every lane that redeemed this ticket (this one included), for the double_use record."""
        w = "WHERE ticket_id = ?" + (" AND day = ?" if day else "")
        args = (ticket_id, day) if day else (ticket_id,)
        q = self.ledger.conn.execute
        lanes = {r[0] for r in q(f"SELECT DISTINCT lane FROM remote_redemptions {w}", args)}
        if q(f"SELECT count(*) FROM redemptions {w}", args).fetchone()[0]:
            lanes.add(self.fleet.lane)
        return sorted(lanes)

    def _audit_event(self, now: float, reason: str, detail: str, subject: str = "") -> None:
        self.audit.record(
            AuditRecord(
                now, self.cfg.gate.id, "fleet", subject=subject, reason=reason, detail=detail
            )
        )

    def clock_offset(self) -> float | None:
        """Our clock minus the fleet's, from peers' heartbeats of the last 3 periods; None alone."""
        fresh = time.monotonic() - 3 * max(self.fleet.heartbeat_s, 1.0)
        samples = [p.sample for p in self.peers.values() if p.seen >= fresh]
        return round(fleet_offset(samples), 3) if samples else None

    def outbox_size(self) -> int:
        """Redemptions not yet acknowledged by the office, shown in status and heartbeats."""
        return self.ledger.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        """Disconnect and save the figures that `bench --fleet` and `fleet status` read."""
        try:
            self.client.disconnect()
            self.client.loop_stop()
        finally:  # figures for `edge-gate bench --fleet`
            self.state.put(connected=False, stats=self.stats, apply_delays=self.delays)
            for c in (self.ledger.close, self.audit.close, self.state.close):
                c()
