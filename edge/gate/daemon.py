"""The gate: pull a frame, hand it down the line, act on the decision, tell systemd it is alive.

Faces and tickets are separate paths. A configuration error refuses to start; a fault that
appears at run time (a damaged model, a damaged gallery) makes the gate ticket-only, loudly, and
it never opens on an error. Any stage error in a frame means no grant for that frame, a log line
with the cause (the same cause again: one line a minute, counting), and the loop goes on. The
relay is the first thing built and the last released.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

from edge import config as config_mod
from edge import tickets as tk
from edge.db import Store, let_go
from edge.errors import AuditError, EdgeGateError, GalleryError, Repeats, SourceError
from edge.fleet import lane
from edge.gate import checks, desk
from edge.gate.audit import AuditLog, AuditRecord, open_audit
from edge.gate.desk import UnavailableLedger, gate_verifier, open_gate_ledger, with_pretix
from edge.gate.faces import FaceStack, file_id
from edge.gate.notice_socket import SocketSink, path_problem
from edge.gate.notices import Notice, Notices, notice_for_decision
from edge.gate.notify import Notifier
from edge.gate.policy import (
    GRANT,
    Decision,
    FaceSeen,
    Guidance,
    Observation,
    Outcome,
    Policy,
    PolicyParams,
    Reason,
    TicketSeen,
    Via,
)
from edge.gate.relay import Relay
from edge.gate.sources import Frame, FrameSource, open_source
from edge.tickets import pretix_desk
from edge.tickets.qr import StreamReader
from edge.tickets.scanner import lines_from
from edge.timeutil import iso

log = logging.getLogger(__name__)

DecisionCallback = Callable[[dict], None]
DEGRADED_LOG_EVERY_S = 60.0
FACE_FAILURES_TO_DEGRADE = 50  # face stage raised this often with no judged face between: broken
SOURCE_RETRY_S = 0.05  # a source that raised is read again after this, doubling...
SOURCE_RETRY_MAX_S = 1.0  # ...up to this: the loop still ticks (status, watchdog) meanwhile
# The audit log's newest time (the clock_behind floor) is read at most this often; the gate's
# own records raise the floor as they are written.
FLOOR_READ_S = 1.0
# The longest one step of the loop may wait on locks held by other processes (a decision: the
# fleet state, the ledger and the audit log twice, each up to its busy timeout) before systemd's
# watchdog is left to judge it hung.
STORE_WAIT_BOUND_S = 60.0


def policy_for(cfg: config_mod.Config, face: FaceStack | None) -> Policy:
    """The decision rules; with policy.fuse_frames they decide on the matcher's fused match,
    and the matcher's threshold tells the visitor's face from the next one's."""
    fuse = face.matcher.match_fused if face is not None and cfg.policy.fuse_frames else None
    same = face.matcher.threshold if face is not None else None
    return Policy(
        PolicyParams.from_config(cfg, face_enabled=face is not None), fuse=fuse, same_person=same
    )


def decision_json(d: Decision, gate: str, wall: float) -> dict:
    """The event line of one decision: the contract of `run --events` and the printed line."""
    out = {
        "t": round(d.t, 3),
        "time": iso(wall),
        "frame": d.frame,
        "gate": gate,
        "decision": str(d.decision),
        "via": str(d.via),
        "score": d.score,
        "reason": str(d.reason),
    }
    if d.via == Via.TICKET:
        out["ticket"] = d.subject
    else:
        out["person"] = d.subject
        if d.ticket is not None:
            out["ticket"] = d.ticket.ticket_id
    return out


@contextlib.contextmanager
def decisions_on_console(printed: bool = True):
    """While the console prints each decision (`run`, `demo`), drop the log line repeating it."""

    def not_a_decision(r: logging.LogRecord) -> bool:
        return not str(r.msg).startswith("decision ")

    if printed:
        log.addFilter(not_a_decision)
    try:
        yield
    finally:
        log.removeFilter(not_a_decision)


def format_decision(ev: dict) -> str:
    """One console line per decision (the operator's view; never sent to the journal)."""
    who = ev.get("person") or ev.get("ticket") or "-"
    score = f" score={ev['score']}" if ev.get("score") is not None else ""
    return (
        f"[t={ev['t']:7.2f}s frame {ev['frame']:>4}] {ev['decision'].upper():<5} "
        f"via {ev['via']:<6} {who:<20} {ev['reason']}{score}"
    )


class Gate:
    """The running gate. Overrides go into `cfg` (config.override) before it gets here."""

    def __init__(
        self,
        cfg: config_mod.Config,
        on_decision: DecisionCallback | None = None,
        *,
        source: FrameSource | None = None,
        scanner: Iterable[str | bytes] | None = None,
        pin_factory=None,
        notifier: Notifier | None = None,
        notices: Notices | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.on_decision = on_decision or (lambda ev: None)
        self.notifier = notifier or Notifier()
        # What the visitor is told (edge/gate/notices.py): every decision and the guidance
        # before one, fanned out to every sink (events file, lane screen); a sink never raises.
        self.notices = notices if notices is not None else Notices()
        self.clock = clock
        self.stop_requested = False
        self.reload_requested = False
        self.frames = 0
        self.last_decision = "none"
        self.degraded = ""
        self.reload_error = ""
        self.audit: AuditLog | None = None
        self.face: FaceStack | None = None
        self._scan_q: queue.Queue[str] = queue.Queue()
        self._last_alarm = float("-inf")
        self._face_failures = 0
        self._face_errors = Repeats()
        self._floor = 0.0  # the newest time the gate recorded, as last read (_recorded_floor)
        self.floor_read_s = FLOOR_READ_S  # the audit log's newest time read again after this
        self._floor_read = float("-inf")  # when (time.monotonic) it was last read
        self._source_failures = 0
        self._source_alarm = float("-inf")
        self._evidence_retry: float | None = None  # since when a moved audit log will not open
        with contextlib.ExitStack() as stack:
            # First built, last released: whatever fails after this, the relay is driven shut.
            self.relay = stack.enter_context(
                Relay(cfg.relay, factory=pin_factory, on_event=self._relay_event)
            )
            # the stamp before the files are read: one replaced in between is read again
            self._tickets_stamp = desk.tickets_stamp(cfg)
            self.verifier = self._load_tickets(cfg)
            self.audit = open_audit(cfg, "create", fold_junk=True)
            stack.callback(lambda: self.audit.close() if self.audit is not None else None)
            # A missing or rolled-back ledger is a stand-in that refuses every ticket, loudly.
            self.ledger = open_gate_ledger(cfg, self.audit, self.clock())
            stack.callback(lambda: self.ledger.close())
            self._evidence_files = self._evidence_ids()
            self.face = self._load_faces(cfg)
            stack.callback(self._close_face)
            self.overrides = lane.open_overrides(cfg)  # a supervisor's "open once" (fleet lanes)
            if self.overrides is not None:
                stack.callback(self.overrides.close)
            self.policy = policy_for(cfg, self.face)
            self.codes = StreamReader()  # ticket QR codes every scan, other formats less often
            lane.report_versions(self.ledger, cfg, self.face is not None)  # for the heartbeat
            c = cfg.camera
            self.source = source or open_source(
                c.source,
                c.width,
                c.height,
                c.fps,
                c.realtime,
                c.reconnect_max_s,
                cfg.vision.max_image_pixels,
            )
            stack.callback(self.source.close)
            self._resources = stack.pop_all()
        # The lane screen (`edge-gate screen`) hears the notices on a socket.
        self._screen: SocketSink | None = None
        self._follow_screen(cfg)
        if scanner is not None:
            threading.Thread(target=self._feed_scanner, args=(scanner,), daemon=True).start()

    # --- loading -------------------------------------------------------------------------------

    @staticmethod
    def _load_tickets(cfg: config_mod.Config) -> tk.Verifier:
        return with_pretix(cfg, gate_verifier(cfg, keys=checks.ticket_keys(cfg)))

    def _load_faces(self, cfg: config_mod.Config) -> FaceStack | None:
        """Configuration errors raise (refuse to start); faults of files at run time degrade."""
        if not checks.faces_wanted(cfg):
            return None
        why_off = checks.faces_off_reason(cfg)  # raises ConfigError for settings that never work
        if why_off:
            self._degrade(why_off)
            return None
        try:
            return FaceStack(cfg)
        except checks.REFUSE_TO_START:
            raise
        except Exception as e:  # damaged model, runtime, damaged gallery: degrade, never open
            self._degrade(f"face path failed to load: {e}")
            return None

    def _degrade(self, why: str) -> None:
        self.degraded = f"ticket-only: {why}"
        log.error("gate DEGRADED %s", self.degraded)
        self._last_alarm = time.monotonic()
        self._audit(
            AuditRecord(
                self.clock(), self.cfg.gate.id, "system", reason="degraded", detail=why[:300]
            )
        )
        if self.cfg.gate.mode == "face-and-ticket":
            log.error("gate mode face-and-ticket cannot grant without faces: every entry refused")

    def _close_face(self) -> None:
        if self.face is not None:
            self.face.close()
            self.face = None

    def reload(self) -> None:
        """SIGHUP: re-read config, ticket keys, revocations and the gallery; keep camera and relay.

        Everything new is built before anything old is replaced: on any error the previous
        configuration stays in force and the failure is reported (STATUS=, log).
        """
        self.notifier.reloading()
        old_cfg, old_degraded = self.cfg, self.degraded
        try:
            cfg = config_mod.reload(old_cfg)
            verifier = self._load_tickets(cfg)
            self.cfg, self.degraded = cfg, ""
            face = self._load_faces(cfg)
            if self.ledger.problem:  # a ledger that is back (ledger init) is reopened
                self.ledger = open_gate_ledger(cfg, self.audit, self.clock())
                self._evidence_files = self._evidence_ids()
        except Exception as e:  # whatever broke, the running configuration stays
            self.cfg, self.degraded = old_cfg, old_degraded
            self.reload_error = f"reload failed, previous configuration kept: {e}"
            log.error("gate reload_failed reason=%s; keeping the previous configuration", e)
        else:
            self._close_face()
            self.verifier, self.face, self.reload_error = verifier, face, ""
            if self.overrides is not None:  # the issuer keys that sign overrides, as tickets
                self.overrides.configure(cfg)
            # a reload is no way round a cooldown, anti-passback or an attack's refusal
            self.policy = policy_for(cfg, face).carry_over(self.policy)
            lane.report_versions(self.ledger, cfg, face is not None)
            self._follow_screen(cfg)
            log.info("gate reloaded config=%s", cfg.source_file)
            later = [t for t in ("camera", "relay") if getattr(cfg, t) != getattr(old_cfg, t)]
            if later:  # the device and the relay pin stay as they were built
                log.warning(
                    "gate reload_partial changed=%s: these take effect at the next start "
                    "(systemctl restart edge-gate)",
                    ",".join(f"[{t}]" for t in later),
                )
        self.notifier.ready(self.status_text())

    def _follow_screen(self, cfg: config_mod.Config) -> None:
        """Send notices to the lane screen's socket `[screen] socket` names (at start, and after
        a reload that names another one or none)."""
        path = str(cfg.resolve(cfg.screen.socket)) if cfg.screen.socket else ""
        old = self._screen
        if (old.path if old is not None else "") == path:
            return
        if old is not None:
            self.notices.remove(old)
            old.close()
            self._screen = None
        if path:
            if (problem := path_problem(path)) is not None:  # the gate decides on without it
                log.error("gate %s; no notice will reach the lane screen", problem)
            self._screen = SocketSink(path)
            self.notices.add(self._screen)
        if old is not None:
            log.info("gate screen socket=%s", path or "none")

    # --- loop ----------------------------------------------------------------------------------

    def _feed_scanner(self, lines: Iterable[str | bytes]) -> None:
        try:
            for text in lines_from(lines):
                self._scan_q.put(text)
        except Exception as e:  # the reader must never die silently
            log.error("scanner stopped reason=%s", e)
            self.reload_error = f"scanner stopped: {e}"

    def status_text(self, fps: float = 0.0) -> str:
        """The STATUS= line systemd shows: mode (or why degraded), camera, rate, last decision."""
        mode = self.degraded or self.cfg.gate.mode
        if getattr(self, "ledger", None) is not None and self.ledger.problem:
            mode += "; TICKETS REFUSED: ledger error"
        cam = self.camera_state
        alarm = f"; {self.reload_error}" if self.reload_error else ""
        return f"{mode}; camera {cam}; {fps:.1f} fps; last {self.last_decision}{alarm}"

    @property
    def camera_state(self) -> str:
        """The source's state for STATUS= and the heartbeat; "failing" while its reads raise."""
        if not hasattr(self, "source"):
            return "starting"
        return "failing" if self._source_failures else self.source.state

    def _next_frame(self) -> Frame | None:
        """The source's next frame. A source that raises (a driver fault, a device gone) is a
        missed frame: logged at ERROR at once and then once a minute while it lasts, read again
        after a pause that grows to a second, and the gate keeps running with the relay shut.
        A file none of whose frames could be used (SourceError) ends the run with its error."""
        try:
            frame = self.source.read()
        except Exception as e:
            if isinstance(e, SourceError) or self.source.finished:
                raise
            self._source_failures += 1
            now = time.monotonic()
            if self._source_failures == 1 or now - self._source_alarm >= DEGRADED_LOG_EVERY_S:
                self._source_alarm = now
                log.error(
                    "source read_failed failures=%d error=%s; reading again",
                    self._source_failures,
                    e,
                )
            pause = SOURCE_RETRY_S * 2 ** min(self._source_failures - 1, 8)
            time.sleep(min(pause, SOURCE_RETRY_MAX_S))
            return None
        if self._source_failures:
            log.info("source recovered after %d failed reads", self._source_failures)
            self._source_failures = 0
        return frame

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop the loop; SIGHUP reloads between frames."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop_requested", True))
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "reload_requested", True))

    def run(self) -> int:
        """Process frames until the file ends or SIGTERM; the relay ends off either way."""
        if threading.current_thread() is threading.main_thread():
            self.install_signals()
        self.notifier.ready(self.status_text())
        t_status, n_status = time.monotonic(), 0
        try:
            while not self.stop_requested:
                if self.reload_requested:
                    self.reload_requested = False
                    with self._store_wait():
                        self.reload()
                with self._store_wait():
                    self.take_overrides()
                frame = self._next_frame()
                if frame is None:
                    if self.source.finished:
                        break
                    time.sleep(0.02)
                # a ticket waiting for its own opening (a scan is read once) is judged without
                # a frame when the camera has none
                if frame is not None or not self._scan_q.empty() or self.policy.waiting:
                    for d in self.process(frame):
                        with self._store_wait():
                            self.act(d)
                if frame is not None:
                    self.frames += 1
                    n_status += 1
                self.notifier.watchdog()
                now = time.monotonic()
                if now - t_status >= 1.0:
                    with self._store_wait():
                        self.tick(n_status / (now - t_status))
                    t_status, n_status = now, 0
                    self._alarm(now)
        finally:
            self.close()
        return 0

    def _store_wait(self) -> contextlib.AbstractContextManager[None]:
        """Around the loop's steps that write to disk: another process holding a store's lock
        makes them wait up to its busy timeout (the ledger's 10 s alone is WatchdogSec), which
        is no hang; systemd keeps hearing from the gate for up to STORE_WAIT_BOUND_S."""
        return self.notifier.bounded_wait(STORE_WAIT_BOUND_S)

    def tick(self, fps: float) -> None:
        """Once a second: status to systemd and to sync; office revocations/keys sync wrote;
        the evidence chains keep up with what sync wrote (and junk codes are folded)."""
        self.notifier.status(self.status_text(fps))
        self._follow_gallery()
        self._follow_evidence()
        self._maintain_evidence()
        mode = self.degraded or self.cfg.gate.mode
        try:
            lane.report_status(self.ledger, fps=round(fps, 1), camera=self.camera_state, mode=mode)
        except EdgeGateError as e:  # fleet.db busy or full: the heartbeat waits, the gate goes on
            log.error("gate status not reported: %s", e)
        if (stamp := desk.tickets_stamp(self.cfg)) != self._tickets_stamp:
            self._tickets_stamp = stamp
            try:
                self.verifier = self._load_tickets(self.cfg)
                log.info("gate tickets reloaded: revocations or keys changed")
            except EdgeGateError as e:
                log.error("gate tickets reload_failed reason=%s; keeping the previous keys", e)

    def _follow_gallery(self) -> None:
        """The gallery file deleted or replaced underneath the running gate: nobody is let in
        by face from a file no longer on disk. A replaced file is opened as at start; a deleted
        one (or a replacement that does not open) leaves the gate ticket-only, loudly."""
        if self.face is None:
            return
        moved = self.face.gallery_moved()
        if not moved:
            return
        path = self.face.path
        log.error("gate gallery_%s path=%s; the face path follows the file", moved, path)
        try:
            if moved == "deleted":
                raise GalleryError(
                    f"gallery {path} was deleted while the gate ran",
                    "restore it from backup, then systemctl reload edge-gate",
                )
            self.face.reopen_gallery()
        except Exception as e:  # closed: nobody by face until a reload
            self._close_face()
            self.policy.params = dataclasses.replace(self.policy.params, face_enabled=False)
            self._degrade(f"face path off: {e}")
            return
        self.policy = policy_for(self.cfg, self.face).carry_over(self.policy)
        log.info("gate gallery reopened path=%s", path)

    def _evidence_ids(self) -> tuple:
        """The audit log's and the open ledger's files as (device, inode); None: none open."""
        none_open = isinstance(getattr(self.ledger, "ledger", self.ledger), UnavailableLedger)
        ledger = None if none_open else file_id(self.cfg.resolve(self.cfg.tickets.ledger))
        return file_id(self.cfg.resolve(self.cfg.audit.path)), ledger

    def _follow_evidence(self) -> None:
        """The audit log or the ledger deleted or replaced underneath the running gate (its
        connection would go on writing records and redemptions into a file no longer on disk,
        lost at the next start): both are opened again as at start. A deleted ledger is then a
        stand-in refusing every ticket; a deleted audit log starts anew and its chain says it
        was replaced; a replaced ledger is checked against the audit log's mark."""
        now = self._evidence_ids()
        was = self._evidence_files
        moved = [n for n, a, b in zip(("audit", "ledger"), now, was, strict=True) if b and a != b]
        if not moved:
            return
        retrying = self._evidence_retry is not None
        if not retrying:
            log.error(
                "gate evidence_moved files=%s: deleted or replaced while the gate ran; "
                "reopening them as at start",
                ",".join(moved),
            )
        old_audit, old_ledger = self.audit, self.ledger
        for name, old in (("audit", old_audit), ("ledger", old_ledger)):
            if name in moved and isinstance(old, Store):  # first: its log is still at the path
                let_go(old, close=False)  # closed below, once the files at the paths are open
        try:
            self.audit = open_audit(self.cfg, "create", fold_junk=True)
        except Exception as e:  # the folder gone, unwritable or full: tried again each tick
            # Never on into the deleted file (its records would be lost at the next start):
            # no audit log, so face grants are refused (audit_error) until it opens again.
            if self._evidence_retry is None or time.monotonic() - self._evidence_retry >= 60:
                log.error(
                    "gate audit reopen_failed error=%s: face grants refused (audit_error) "
                    "until it opens; tried again every second",
                    e,
                )
                self._evidence_retry = time.monotonic()
            self.audit = None
            if "ledger" in moved and not isinstance(
                getattr(old_ledger, "ledger", old_ledger), UnavailableLedger
            ):
                self.ledger = desk.stand_in_ledger(
                    self.cfg, f"the ledger moved and the audit log is not open: {e}"
                )
                with contextlib.suppress(Exception):
                    old_ledger.close()
            with contextlib.suppress(Exception):
                if old_audit is not None:
                    old_audit.close()
            # the moved files' old ids stay: the next tick sees them moved and tries again
            self._evidence_files = tuple(
                b if n in moved else a
                for n, a, b in zip(("audit", "ledger"), now, was, strict=True)
            )
            return
        if retrying:
            log.info("gate audit reopened after reopen_failed")
        self._evidence_retry = None
        try:
            self.ledger = open_gate_ledger(self.cfg, self.audit, self.clock())
        except Exception as e:  # the new audit log refused the record of a missing ledger
            self.ledger = desk.stand_in_ledger(self.cfg, str(e))
        for old in (old_ledger, old_audit):
            try:
                if old is not None:
                    old.close()
            except Exception as e:
                log.warning("close error=%s", e)
        lane.report_versions(self.ledger, self.cfg, self.face is not None)
        # the identities read before opening (replaced in between, the next tick follows the
        # new file); a file the open made anew is read now
        after = self._evidence_ids()
        self._evidence_files = tuple(
            a if a is not None else b for a, b in zip(now, after, strict=True)
        )

    def _maintain_evidence(self) -> None:
        try:
            if self.audit is not None:
                self.audit.maintain(self.clock())
            self.ledger.maintain()
        except EdgeGateError as e:  # a locked or full disk: the next tick tries again
            log.error("evidence maintain error=%s", e)

    def _face_failed(self, e: Exception) -> None:
        """A face path that fails frame after frame at run time: ticket-only, loudly."""
        self._face_failures += 1
        if self._face_failures >= FACE_FAILURES_TO_DEGRADE:
            self._close_face()
            self.policy.params = dataclasses.replace(self.policy.params, face_enabled=False)
            self._degrade(f"face path failed {self._face_failures} frames in a row: {e}")

    def _alarm(self, now: float) -> None:
        """While degraded or refusing tickets, log ERROR once a minute: a quiet fault hides."""
        if (
            self.degraded or self.ledger.problem
        ) and now - self._last_alarm >= DEGRADED_LOG_EVERY_S:
            self._last_alarm = now
            if self.degraded:
                log.error("gate DEGRADED %s", self.degraded)
            if self.ledger.problem:
                log.error("gate LEDGER_ERROR every ticket is refused: %s", self.ledger.problem)

    def process(self, frame: Frame | None) -> list[Decision]:
        """Decide on one camera frame, or (frame None) on scanner input alone."""
        wall = self.clock()
        faces: tuple[FaceSeen, ...] = ()
        texts: list[str] = []
        if frame is not None:
            if self.face is not None:
                try:
                    faces = self.face.observe(frame.image, frame.t)
                    # only a face the matcher judged shows the path works: a frame without a
                    # face never reaches the gallery, so it neither counts nor resets failures
                    if any(f.quality_ok for f in faces):
                        self._face_failures = 0
                except Exception as e:  # fail closed: this frame grants nobody by face
                    unsaid = self._face_errors.seen(str(e), wall)
                    if unsaid == 0:
                        log.error("frame %d stage=face error=%s", frame.index, e)
                    elif unsaid is not None:
                        log.error(
                            "frame %d stage=face error=%s (%d more frames failed so since its "
                            "last line)",
                            frame.index,
                            e,
                            unsaid,
                        )
                    self._face_failed(e)
            if frame.index % max(1, self.cfg.tickets.scan_every) == 0:
                try:
                    texts = self.codes.read(frame.image)
                except Exception as e:
                    log.error("frame %d stage=qr error=%s", frame.index, e)
        scans: list[str] = []
        while not self._scan_q.empty():
            scans.append(self._scan_q.get_nowait())
        seen = tuple(TicketSeen(t, self.verifier.verify(t, wall)) for t in texts) + tuple(
            TicketSeen(t, self.verifier.verify(t, wall), scanned=True) for t in scans
        )
        t, index = (frame.t, frame.index) if frame is not None else (time.monotonic(), -1)
        floor = self._recorded_floor(faces)
        decisions = self.policy.step(Observation(t, index, wall, faces, seen, floor))
        for g in self.policy.take_guidance():
            self.guide(g, wall)
        return decisions

    def _recorded_floor(self, faces: tuple[FaceSeen, ...]) -> float:
        """The newest time the gate recorded (audit log, ledger), asked when a face whose pass
        has an end is in view: a clock behind it (no real-time clock, set back) cannot tell
        whether that pass ended. The gate's own records count at once (a clock set back right
        after a grant is behind it); the log, for what other processes wrote, is read at most
        every `floor_read_s`. A log that cannot be read keeps the last floor read."""
        if not any(f.valid_until is not None for f in faces):
            return self._floor
        audit = self.audit
        try:
            own = audit.newest_appended if audit is not None else 0.0
            self._floor = max(self._floor, own, getattr(self.ledger, "floor", 0.0))
            mono = time.monotonic()
            if audit is not None and mono - self._floor_read >= self.floor_read_s:
                self._floor_read = mono  # a log that fails is asked again a second later
                self._floor = max(self._floor, audit.newest_time() or 0.0)
        except (EdgeGateError, sqlite3.Error) as e:
            log.error("gate floor_unread error=%s; the last floor read holds", e)
        return self._floor

    @property
    def lane(self) -> str:
        """The lane name notices carry: the fleet's lane, else the gate id."""
        return self.cfg.fleet.lane or self.cfg.gate.id

    def guide(self, g: Guidance, wall: float) -> None:
        """Tell the visitor what they can do before any decision (step back, come closer...)."""
        log.info("guidance %s reason=%s frame=%d", g.notice, g.reason, g.frame)
        self._tell(Notice(wall, self.lane, g.notice, g.reason))

    def _tell(self, notice: Notice) -> None:
        try:
            self.notices.send(notice)
        except Exception as e:  # Notices never raises; a broken fan-out must not either
            log.error("notice error=%s", e)

    def act(self, d: Decision) -> None:
        """Redeem, open, record, report: a grant that cannot be recorded or switched is a deny
        (and the policy is told that it opened nothing).

        A ticket grant's record is the ledger's commit; a face grant's only record is the audit
        log, so it is written before the relay opens (a locked or full audit log: denied
        `audit_error`). A recorded face grant the relay then refuses is followed by its deny.
        """
        wall = self.clock()
        asked = d
        pretix_word = ""
        if d.decision == GRANT and d.via != Via.TICKET:  # a restored lane: no face until the
            try:  # office's forget list is applied (fleet)
                held = lane.face_refusal(self.ledger)
                why = held.reason if held is not None else None
            except EdgeGateError as e:  # cannot tell whether it is applied: closed
                log.error("fleet state error=%s", e)
                why = Reason.LEDGER_ERROR
            if why is not None:
                d = dataclasses.replace(d, decision=Outcome.DENY, reason=why, ticket=None)
        if d.decision == GRANT and d.ticket is not None:
            try:  # the commit is the moment the entry counts
                r, pretix_word = pretix_desk.gate_redeem(self.ledger, self.verifier, d.ticket, wall)
                if not r.ok:
                    d = dataclasses.replace(d, decision=Outcome.DENY, reason=r.reason, ticket=None)
            except EdgeGateError as e:
                log.error("ledger error=%s", e)
                d = dataclasses.replace(
                    d, decision=Outcome.DENY, reason=Reason.LEDGER_ERROR, ticket=None
                )
        elif d.decision == Outcome.DENY and d.code:
            try:
                pretix_word = pretix_desk.gate_refused(self.ledger, self.verifier, d.code, wall)
            except EdgeGateError as e:
                log.error("pretix refused scan not queued: %s", e)
        recorded = False
        if d.decision == GRANT and d.via == Via.FACE:  # no record, no entry
            try:
                if self.audit is None:
                    raise AuditError("the audit log is not open")
                self.audit.record(self._decision_record(d, wall))
                recorded = True
            except Exception as e:
                log.error("audit error=%s: a face grant that cannot be recorded is refused", e)
                d = dataclasses.replace(d, decision=Outcome.DENY, reason=Reason.AUDIT_ERROR)
        if d.decision == GRANT:
            try:
                self.relay.pulse()
            except EdgeGateError as e:
                log.error("relay error=%s", e)
                d = dataclasses.replace(d, decision=Outcome.DENY, reason=Reason.RELAY_ERROR)
                recorded = False  # the grant recorded above was not carried out: say so too
        ev = decision_json(d, self.cfg.gate.id, wall)
        if pretix_word:
            ev["pretix_reason"] = pretix_word
        self.last_decision = f"{d.decision} {d.via} {d.reason}"
        # No person or ticket id in the log: the journal is not where identifiers belong.
        log.info("decision %s via=%s reason=%s frame=%d", d.decision, d.via, d.reason, d.frame)
        if not recorded:
            self._audit(self._decision_record(d, wall))
        try:
            self.on_decision(ev)
        except Exception as e:  # a full disk for --events must not stop the gate deciding
            log.error("output error=%s: a decision missed the console or --events", e)
        self._tell(  # never raises: a screen fault never stops the gate
            Notice(
                wall,
                self.lane,
                notice_for_decision(d.decision == GRANT, str(d.reason)),
                str(d.reason),
                str(d.decision),
            )
        )
        if d.decision != asked.decision:
            self.policy.not_carried_out(asked)

    def _decision_record(self, d: Decision, wall: float) -> AuditRecord:
        """The audit record of one decision (a face+ticket grant names its ticket in detail)."""
        ticket = d.ticket.ticket_id if d.via != Via.TICKET and d.ticket is not None else ""
        return AuditRecord(
            wall,
            self.cfg.gate.id,
            "decision",
            str(d.decision),
            str(d.via),
            d.subject or "",
            d.score,
            str(d.reason),
            ticket,
        )

    def take_overrides(self) -> None:
        """A supervisor's "open once" that sync left, judged by edge/fleet/override.py: one pulse
        when accepted; either way a decision `via override` in the audit log, events, screen."""
        if self.overrides is None:
            return
        wall = self.clock()
        try:
            verdicts = self.overrides.take(wall)
        except Exception as e:  # fleet.db busy or damaged: no override now, the gate goes on
            log.error("override inbox error=%s", e)
            return
        for v in verdicts:
            recorded = False
            if v.ok:  # as a face grant: no record, no entry (the office's record is not here)
                try:
                    if self.audit is None:
                        raise AuditError("the audit log is not open")
                    # a nonce spent in a fleet.db since made anew: the grant is in the audit log
                    v = v.unless_granted(self.audit, self.cfg.fleet.max_clock_offset_s)
                    if v.ok:
                        self.audit.record(v.record(self.cfg.gate.id, wall))
                        recorded = True
                except Exception as e:
                    log.error("audit error=%s: an override that cannot be recorded is refused", e)
                    v = v.refused(str(Reason.AUDIT_ERROR))
            if v.ok:
                try:
                    self.relay.pulse()
                except EdgeGateError as e:
                    log.error("relay error=%s", e)
                    v, recorded = v.refused(str(Reason.RELAY_ERROR)), False
            self.last_decision = f"{v.outcome} override {v.reason}"
            log.info("decision %s via=override reason=%s", v.outcome, v.reason)
            if not recorded:
                self._audit(v.record(self.cfg.gate.id, wall))
            try:
                self.on_decision(v.event(self.cfg.gate.id, wall))
            except Exception as e:
                log.error("output error=%s: a decision missed the console or --events", e)
            self._tell(v.notice(self.lane, wall))

    def _audit(self, rec: AuditRecord) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(rec)
        except Exception as e:  # a full disk must not stop the gate deciding
            log.error("audit error=%s", e)

    def _relay_event(self, kind: str, detail: str) -> None:
        self._audit(
            AuditRecord(
                self.clock(), self.cfg.gate.id, "door", via=kind, reason=kind, detail=detail
            )
        )

    def close(self) -> None:
        """Release everything in reverse order of building; the relay, driven shut, goes last."""
        if getattr(self, "_resources", None) is None:
            return
        self.notifier.stopping()
        resources, self._resources = self._resources, None
        screen, self._screen = getattr(self, "_screen", None), None
        if screen is not None:
            self.notices.remove(screen)
            screen.close()
        try:
            resources.close()
        except Exception as e:
            log.warning("close error=%s", e)

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
