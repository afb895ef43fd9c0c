"""The gate: pull a frame, hand it down the line, act on the decision, tell systemd it is alive.

Faces and tickets are separate paths. If the face models or the gallery fail to load, the gate
runs ticket-only and says so loudly; it never opens on an error. Any stage error in a frame
means no grant for that frame, a log line with the cause, and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import EdgeGateError
from edge.gate.audit import AuditLog, AuditRecord
from edge.gate.notify import Notifier
from edge.gate.policy import (
    GRANT,
    Decision,
    FaceSeen,
    Observation,
    Policy,
    PolicyParams,
    TicketSeen,
    check_non_face_way_in,
)
from edge.gate.sources import Frame, FrameSource, open_source
from edge.tickets.desk import open_gate_ledger
from edge.timeutil import iso

log = logging.getLogger(__name__)


def decision_json(d: Decision, gate: str, wall: float) -> dict:
    out = {
        "t": round(d.t, 3),
        "time": iso(wall),
        "frame": d.frame,
        "gate": gate,
        "decision": d.decision,
        "via": d.via,
        "score": d.score,
        "reason": d.reason,
    }
    if d.via == "ticket":
        out["ticket"] = d.subject
    else:
        out["person"] = d.subject
        if d.ticket is not None:
            out["ticket"] = d.ticket.ticket_id
    return out


class FaceStack:
    """Pipeline + live gallery matcher; built once, or not at all (then the gate is ticket-only)."""

    def __init__(self, cfg: config_mod.Config, db: Path, key_file: Path):
        from edge.gallery.crypto import load_key
        from edge.gallery.matcher import LiveMatcher, resolve_threshold
        from edge.gallery.store import Gallery
        from edge.vision.pipeline import FacePipeline

        self.pipeline = FacePipeline.from_config(cfg)
        self.gallery = Gallery(db, load_key(key_file))
        threshold = resolve_threshold(cfg.gallery.match_threshold, self.pipeline.spec.threshold)
        self.matcher = LiveMatcher(
            self.gallery, self.pipeline.spec.name, threshold, cfg.gallery.min_margin
        )

    def observe(self, image: np.ndarray) -> tuple[FaceSeen, ...]:
        faces = self.pipeline.analyze(image)
        if not faces:
            return ()
        h, w = image.shape[:2]
        usable = [f for f in faces if f.embedding is not None]
        try:
            self.matcher.refresh()
        except (
            Exception
        ) as e:  # a writer mid-VACUUM, a locked file: keep matching with what we have
            log.warning("gallery refresh_failed reason=%s", e)
        matches = iter(
            self.matcher.matcher.match_many(np.stack([f.embedding for f in usable]))
            if usable
            else []
        )
        out = []
        for f in faces:
            m = next(matches) if f.embedding is not None else None
            cx, cy = f.detection.center
            pid = m.person_id if m else None
            out.append(
                FaceSeen(
                    pid,
                    round(m.score, 4) if m else 0.0,
                    f.detection.width / w,
                    (cx / w, cy / h),
                    f.embedding is not None,
                    self.matcher.valid_until.get(pid) if pid else None,
                    self.matcher.pass_refs.get(pid, "") if pid else "",
                )
            )
        return tuple(out)

    def close(self) -> None:
        self.gallery.close()


class Gate:
    def __init__(
        self,
        cfg: config_mod.Config,
        *,
        source: FrameSource | None = None,
        source_spec: str | None = None,
        db: str | None = None,
        key_file: str | None = None,
        pubkeys: list[str] | None = None,
        events: str | None = None,
        realtime: bool | None = None,
        pin_factory=None,
        printer: Callable[[str], None] | None = None,
        scanner: Iterable[str] | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg_path = cfg.source_file
        self.overrides = {"db": db, "key_file": key_file, "pubkeys": pubkeys}
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.printer = printer
        self.clock = clock
        self.stop_requested = False
        self.reload_requested = False
        self.frames = 0
        self.last_decision = "none"
        self.degraded = ""
        self.events_file = open(events, "a", encoding="utf-8") if events else None  # noqa: SIM115
        self._scan_q: queue.Queue[str] = queue.Queue()
        if scanner is not None:
            threading.Thread(target=self._feed_scanner, args=(scanner,), daemon=True).start()

        self._load_tickets()
        from edge.gate.relay import Relay

        self.audit = AuditLog(cfg.resolve(cfg.audit.path), cfg.audit.retention_days)
        self.ledger = open_gate_ledger(cfg, self.audit, self.clock())
        self.relay = Relay(cfg.relay, factory=pin_factory, on_event=self._relay_event)
        self.face = self._load_faces()
        self.policy = Policy(PolicyParams.from_config(cfg, face_enabled=self.face is not None))
        spec = source_spec or cfg.camera.source
        rt = cfg.camera.realtime if realtime is None else realtime
        self.source = source or open_source(
            spec,
            cfg.camera.width,
            cfg.camera.height,
            cfg.camera.fps,
            rt,
            cfg.camera.reconnect_max_s,
        )

    # --- loading -------------------------------------------------------------------------------

    def _load_tickets(self) -> None:
        cfg = self.cfg
        paths = self.overrides["pubkeys"] or [str(cfg.resolve(p)) for p in cfg.tickets.pubkeys]
        keys = [tk.load_public(Path(p)) for p in paths]
        check_non_face_way_in(cfg.gate.mode, len(keys))
        revoked = tk.load_revocations(
            cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None
        )
        self.verifier = tk.Verifier(keys, cfg.gate.products, revoked, cfg.tickets.clock_skew_s)

    def _load_faces(self) -> FaceStack | None:
        cfg = self.cfg
        if cfg.gate.mode == "ticket-only" or not cfg.vision.face_enabled:
            return None
        db = Path(self.overrides["db"]) if self.overrides["db"] else cfg.resolve(cfg.gallery.db)
        key = (
            Path(self.overrides["key_file"])
            if self.overrides["key_file"]
            else cfg.resolve(cfg.gallery.key_file)
        )
        try:
            return FaceStack(cfg, db, key)
        except Exception as e:  # models, runtime, key or gallery: degrade, never open
            self.degraded = f"ticket-only: face path failed to load: {e}"
            log.error("gate DEGRADED %s", self.degraded)
            self.audit.record(
                AuditRecord(
                    self.clock(), cfg.gate.id, "system", reason="degraded", detail=str(e)[:300]
                )
            )
            if cfg.gate.mode == "face-and-ticket":
                log.error(
                    "gate mode face-and-ticket cannot grant without faces: every entry will be refused"
                )
            return None

    def reload(self) -> None:
        """SIGHUP: re-read config, ticket keys, revocations and the gallery key; keep the camera."""
        self.notifier.reloading()
        try:
            cfg = config_mod.load(self.cfg_path) if self.cfg_path else self.cfg
            old = self.cfg
            self.cfg = cfg
            self._load_tickets()
            if self.ledger.problem:
                self.ledger = open_gate_ledger(cfg, self.audit, self.clock())
            if self.face is not None:
                self.face.close()
            self.degraded = ""
            self.face = self._load_faces()
            self.policy = Policy(PolicyParams.from_config(cfg, face_enabled=self.face is not None))
            log.info("gate reloaded config=%s", self.cfg_path)
        except EdgeGateError as e:
            self.cfg = old
            log.error("gate reload_failed reason=%s; keeping the previous configuration", e)
        self.notifier.ready(self.status_text())

    # --- loop ----------------------------------------------------------------------------------

    def _feed_scanner(self, lines: Iterable[str]) -> None:
        from edge.tickets.scanner import lines_from

        for text in lines_from(lines):
            self._scan_q.put(text)

    def status_text(self, fps: float = 0.0) -> str:
        mode = self.degraded or self.cfg.gate.mode
        if getattr(self, "ledger", None) is not None and self.ledger.problem:
            mode += "; TICKETS REFUSED: ledger error"
        return f"{mode}; camera {self.source.state if hasattr(self, 'source') else 'starting'}; {fps:.1f} fps; last {self.last_decision}"

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_requested", True))

    def run(self) -> int:
        """Process frames until the file ends or SIGTERM; the relay ends off either way."""
        if threading.current_thread() is threading.main_thread():
            self.install_signals()
        self.notifier.ready(self.status_text())
        if self.degraded:
            self._say(f"DEGRADED: {self.degraded}")
        if self.ledger.problem:
            self._say(f"LEDGER ERROR, every ticket is refused: {self.ledger.problem}")
        t_status, n_status = time.monotonic(), 0
        try:
            while not self.stop_requested:
                if self.reload_requested:
                    self.reload_requested = False
                    self.reload()
                frame = self.source.read()
                if frame is None:
                    if self.source.finished:
                        break
                    self.notifier.watchdog()
                    time.sleep(0.02)
                    frame = self._scanner_only_frame()
                    if frame is None:
                        continue
                for d in self.process(frame):
                    self.act(d)
                self.frames += 1
                n_status += 1
                self.notifier.watchdog()
                now = time.monotonic()
                if now - t_status >= 1.0:
                    self.notifier.status(self.status_text(n_status / (now - t_status)))
                    t_status, n_status = now, 0
        finally:
            self.close()
        return 0

    def _scanner_only_frame(self) -> Frame | None:
        """With no camera frame, scanner input still has to be decided."""
        if self._scan_q.empty():
            return None
        return Frame(np.zeros((16, 16, 3), np.uint8), time.monotonic(), -1)

    def process(self, frame: Frame) -> list[Decision]:
        wall = self.clock()
        faces: tuple[FaceSeen, ...] = ()
        if self.face is not None and frame.index >= 0:
            try:
                faces = self.face.observe(frame.image)
            except Exception as e:  # fail closed: this frame grants nobody by face
                log.error("frame %d stage=face error=%s", frame.index, e)
        texts: list[str] = []
        if frame.index >= 0 and frame.index % max(1, self.cfg.tickets.scan_every) == 0:
            try:
                from edge.tickets.qr import read_codes

                texts = read_codes(frame.image)
            except Exception as e:
                log.error("frame %d stage=qr error=%s", frame.index, e)
        while not self._scan_q.empty():
            texts.append(self._scan_q.get_nowait())
        seen = tuple(TicketSeen(t, self.verifier.verify(t, wall)) for t in texts)
        return self.policy.step(Observation(frame.t, frame.index, wall, faces, seen))

    def act(self, d: Decision) -> None:
        wall = self.clock()
        if d.decision == GRANT and d.ticket is not None:
            try:
                r = self.ledger.redeem(d.ticket, wall)  # the commit is the moment the entry counts
                if not r.ok:
                    d = dataclasses.replace(d, decision="deny", reason=r.reason, ticket=None)
            except EdgeGateError as e:
                log.error("ledger error=%s", e)
                d = dataclasses.replace(d, decision="deny", reason=tk.LEDGER_ERROR, ticket=None)
        if d.decision == GRANT:
            try:
                self.relay.pulse()
            except EdgeGateError as e:
                log.error("relay error=%s", e)
                d = dataclasses.replace(d, decision="deny", reason="relay_error")
        ev = decision_json(d, self.cfg.gate.id, wall)
        self.last_decision = f"{d.decision} {d.via} {d.reason}"
        log.info("decision %s", " ".join(f"{k}={v}" for k, v in ev.items()))
        try:
            self.audit.record(
                AuditRecord(
                    wall,
                    self.cfg.gate.id,
                    "decision",
                    d.decision,
                    d.via,
                    d.subject or "",
                    d.score,
                    d.reason,
                    ev.get("ticket", "") if d.via != "ticket" else "",
                )
            )
        except Exception as e:  # a full disk must not stop the gate deciding
            log.error("audit error=%s", e)
        if self.events_file:
            self.events_file.write(json.dumps(ev) + "\n")
            self.events_file.flush()
        self._say(self.format(ev))

    @staticmethod
    def format(ev: dict) -> str:
        who = ev.get("person") or ev.get("ticket") or "-"
        score = f" score={ev['score']}" if ev.get("score") is not None else ""
        return f"[t={ev['t']:7.2f}s frame {ev['frame']:>4}] {ev['decision'].upper():<5} via {ev['via']:<6} {who:<20} {ev['reason']}{score}"

    def _say(self, text: str) -> None:
        if self.printer:
            self.printer(text)

    def _relay_event(self, kind: str, detail: str) -> None:
        self.audit.record(
            AuditRecord(
                self.clock(), self.cfg.gate.id, "door", via=kind, reason=kind, detail=detail
            )
        )

    def close(self) -> None:
        self.notifier.stopping()
        self.relay.close()  # fail closed
        for closer in (self.source.close, self.ledger.close, self.audit.close):
            try:
                closer()
            except Exception as e:
                log.warning("close error=%s", e)
        if self.face is not None:
            self.face.close()
        if self.events_file:
            self.events_file.close()
