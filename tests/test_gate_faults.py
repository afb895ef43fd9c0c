"""Faults of the running gate: each one fails closed, is said once in the log, and the gate goes
on deciding (relay pins that refuse, sources that raise or end early, storage that cannot be
written, files replaced underneath, reloads)."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from edge import config as config_mod
from edge.config import RelayConfig
from edge.errors import AuditError, GalleryError, LedgerError, RelayError
from edge.gate.audit import AuditLog, AuditRecord
from edge.gate.daemon import Gate
from edge.gate.notify import Notifier
from edge.gate.policy import FaceSeen
from edge.gate.relay import Relay
from edge.gate.sources import CameraSource, Frame, FrameSource, VideoFileSource
from edge.lab.demo import ticket_scene

from .helpers import (
    FakeCapture,
    ListSource,
    PiCameras,
    enroll_lin,
    hold_write_lock,
    make_config,
    notify_messages,
    run_gate,
    ten_fps_camera,
)


def wait_for(cond, bound_s: float = 30.0) -> bool:
    """Poll for a state that must come; the bound only ends a broken test (never a timing)."""
    end = time.monotonic() + bound_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def clip_frames(path: Path) -> list[np.ndarray]:
    src = VideoFileSource(path)
    out = []
    while (f := src.read()) is not None:
        out.append(f.image)
    src.close()
    return out


def ticket_clip(tmp_path: Path, extra: str = "") -> tuple[config_mod.Config, list[np.ndarray]]:
    """A ticket-only gate and the frames of the generated ticket clip (a valid ticket first)."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n" + extra)
    scene = ticket_scene(tmp_path / "office", tmp_path / "t.mp4", time.time())
    return cfg, clip_frames(scene.clip)


def audit_records(cfg: config_mod.Config):
    with AuditLog(cfg.resolve(cfg.audit.path)) as a:
        return a.records()


# --- the relay: a pin that refuses ---------------------------------------------------------------


class FlakyPin(MockPin):
    """gpiozero's MockPin whose writes of one level fail (an I/O error on the GPIO line), either
    always (`fail_on`) or for the next `fail_times` writes of that level."""

    fail_on: bool | None = None
    fail_times: int | None = None

    def _set_state(self, value):
        failing = self.fail_times is None or self.fail_times > 0
        if self.fail_on is not None and bool(value) == self.fail_on and failing:
            if self.fail_times is not None:
                self.fail_times -= 1
            raise OSError(5, "Input/output error")
        super()._set_state(value)


class GlitchPin(MockPin):
    """Every write fails while `glitch` > 0 (an I/O error on the GPIO line for a moment)."""

    glitch = 0

    def _set_state(self, value):
        if self.glitch > 0:
            self.glitch -= 1
            raise OSError(5, "Input/output error")
        super()._set_state(value)


def test_a_pulse_that_fails_during_a_pulse_is_switched_off_once_the_line_obeys():
    """A second grant meets a glitch: switching on fails, and the one switch-off tried then
    fails too. The first pulse's timer had been ended by the second, so nothing switched the
    relay off again: the turnstile stayed open until the next pulse or a restart. Now the
    switch-off is retried until the relay obeys (the gate records the grant's relay_error)."""
    factory = MockFactory(pin_class=GlitchPin)
    with Relay(RelayConfig(pin=17, pulse_s=0.2), factory=factory) as r:
        r.pulse(600.0)  # still open when the second grant comes, however slow the machine
        assert r.is_open
        r.pin.glitch = 2  # on() fails, then the off() tried at once fails too
        with pytest.raises(RelayError, match="failed to switch on"):
            r.pulse()
        deadline = time.monotonic() + 30
        while r.is_open and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not r.is_open, "the relay stays energised: nothing switches it off"


def test_a_relay_pin_that_refuses_to_switch_on_is_a_relay_error_at_once():
    """Before, the pulse switched on in gpiozero's blink thread: the failure was a traceback in
    that thread and pulse() returned as if the turnstile had opened."""
    factory = MockFactory(pin_class=FlakyPin)
    with Relay(RelayConfig(pin=17, pulse_s=0.2), factory=factory) as r:
        r.pin.fail_on = True
        try:
            r.pulse()
            raised = None
        except RelayError as e:
            raised = e
        assert raised is not None and "failed to switch on" in str(raised)
        assert r.pulses == 0
        assert not r.is_open
        r.pin.fail_on = None  # the line works again: the next pulse opens and ends shut
        r.pulse()
        assert wait_for(lambda: r.pulses == 1 and not r.is_open)
    assert [s.state for s in r.pin.states] == [False, True, False]


def test_a_relay_pin_that_refuses_to_switch_off_is_retried_until_shut_and_reported():
    """Before, the pin's refusal killed the pulse's thread with the relay left on: the turnstile
    stayed open until the gate stopped."""
    factory = MockFactory(pin_class=FlakyPin)
    events: list[tuple[str, str]] = []
    r = Relay(
        RelayConfig(pin=17, pulse_s=0.05),
        factory=factory,
        on_event=lambda kind, detail: events.append((kind, detail)),
    )
    r.pin.fail_on, r.pin.fail_times = False, 3  # the first three attempts to switch off fail
    r.pulse()
    assert wait_for(lambda: r.pin.fail_times == 0 and r.pin.state is False)
    assert not r.is_open
    assert [kind for kind, _ in events] == ["relay_error"]  # said once, not once per attempt
    assert "failed to switch off" in events[0][1]
    r.close()
    assert r.pin.function == "output"
    assert r.pin.state is False


def test_gate_denies_relay_error_and_records_it_when_the_pin_refuses(tmp_path):
    cfg, frames = ticket_clip(tmp_path)
    factory = MockFactory(pin_class=FlakyPin)
    factory.pin(cfg.relay.pin).fail_on = True
    got: list[dict] = []
    with Gate(cfg, got.append, source=ListSource(frames[:30]), pin_factory=factory) as gate:
        gate.run()
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", "relay_error")]
    assert not any(s.state for s in gate.relay.pin.states)
    recs = [r for r in audit_records(cfg) if r.kind == "decision"]
    assert [(r.decision, r.reason) for r in recs] == [("deny", "relay_error")]


def test_gate_records_relay_error_when_the_pin_refuses_to_switch_off(tmp_path):
    cfg, frames = ticket_clip(tmp_path)
    cfg = config_mod.override(cfg, relay={"pulse_s": 0.05})
    factory = MockFactory(pin_class=FlakyPin)
    pin = factory.pin(cfg.relay.pin)
    released = threading.Event()

    class UntilShut(ListSource):
        """The valid ticket's frames, then the camera's view until the relay is shut again."""

        deadline = time.monotonic() + 60  # only ends a broken run (the test then fails)

        def read(self):
            f = super().read()
            if f is None and not released.is_set() and time.monotonic() < self.deadline:
                self.finished = False
                time.sleep(0.01)
                if pin.fail_times == 0 and pin.state is False:
                    released.set()
            return f

    got: list[dict] = []
    with Gate(cfg, got.append, source=UntilShut(frames[:30]), pin_factory=factory) as gate:
        pin.fail_on, pin.fail_times = False, 2  # claimed shut; the pulse's end fails twice
        gate.run()
    assert released.is_set()
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]
    door = [r for r in audit_records(cfg) if r.kind == "door"]
    assert [r.reason for r in door] == ["relay_error"]
    assert "failed to switch off" in door[0].detail
    assert gate.relay.pin.state is False


# --- storage: a face grant is never let in unrecorded -------------------------------------------


class ScriptedFaces:
    """The face path's output for frames whose pixels name the visitor (1: p-1, 2: p-2, 0: none):
    the daemon's acting on a face grant is what these tests look at, not recognition."""

    def observe(self, image, t=0.0):
        who = int(image[0, 0, 0])
        return (FaceSeen(f"p-{who}", 0.9, 0.3, (0.5, 0.5), True),) if who else ()

    def gallery_moved(self):
        return ""

    def close(self):
        pass


def face_gate(cfg, frames, **kw) -> tuple[Gate, list[dict]]:
    """A gate whose face path reports the scripted faces (liveness off: not under test)."""
    got: list[dict] = []
    gate = Gate(cfg, got.append, source=ListSource(frames, **kw), pin_factory=MockFactory())
    gate.face = ScriptedFaces()  # type: ignore[assignment]
    gate.policy.params = dataclasses.replace(gate.policy.params, face_enabled=True, liveness=False)
    return gate, got


def visitor(who: int, n: int = 5) -> list[np.ndarray]:
    return [np.full((120, 160, 3), who, np.uint8)] * n


def test_a_face_grant_the_locked_audit_log_cannot_record_is_denied(tmp_path, caplog):
    """Before, the relay opened first and the record's failure was only logged: a face let in
    with no trace. Now the record comes first; once the lock is gone the gate grants again."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")

    def release():
        holder.communicate("", timeout=60)

    gate, got = face_gate(cfg, visitor(1) + visitor(2), hook_at=5, hook=release)
    holder = hold_write_lock(cfg.resolve(cfg.audit.path))
    gate.audit.conn.execute("PRAGMA busy_timeout=200")  # the lock outlasts the wait
    try:
        gate.run()
    finally:
        if holder.poll() is None:
            holder.kill()
    decided = [(e["decision"], e["person"], e["reason"]) for e in got]
    assert decided == [("deny", "p-1", "audit_error"), ("grant", "p-2", "ok")]
    assert [s.state for s in gate.relay.pin.states].count(True) == 1  # one opening: p-2's
    recs = [(r.decision, r.subject, r.reason) for r in audit_records(cfg) if r.kind == "decision"]
    assert recs == [("grant", "p-2", "ok")]  # recorded once; p-1's deny could not be written
    lines = [r.getMessage() for r in caplog.records if "audit error" in r.getMessage()]
    assert any("cannot be recorded is refused" in m for m in lines)
    assert not any("p-1" in m for m in lines)  # no identifier in the journal
    gate.close()


def test_a_face_grant_on_a_full_audit_disk_is_denied_and_the_gate_goes_on(tmp_path):
    """SQLite's own page limit on the gate's connection stands in for a full disk: every
    write that needs a new page fails with 'database or disk is full'."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    gate, got = face_gate(cfg, visitor(1) + visitor(0, 3) + visitor(2))
    pages = gate.audit.conn.execute("PRAGMA page_count").fetchone()[0]
    gate.audit.conn.execute(f"PRAGMA max_page_count={pages}")
    filler = AuditRecord(time.time(), cfg.gate.id, "system", reason="filler", detail="x" * 200)
    with pytest.raises(AuditError, match="full"):
        for _ in range(10_000):  # the pages' free room: then the disk is full
            gate.audit.record(filler)
    gate.run()
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", "audit_error")] * 2
    assert not any(s.state for s in gate.relay.pin.states)
    gate.close()


def test_a_recorded_face_grant_the_relay_refuses_is_followed_by_its_deny(tmp_path):
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    got: list[dict] = []
    factory = MockFactory(pin_class=FlakyPin)
    factory.pin(cfg.relay.pin).fail_on = True
    gate = Gate(cfg, got.append, source=ListSource(visitor(1)), pin_factory=factory)
    gate.face = ScriptedFaces()  # type: ignore[assignment]
    gate.policy.params = dataclasses.replace(gate.policy.params, face_enabled=True, liveness=False)
    gate.run()
    gate.close()
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", "relay_error")]
    recs = [(r.decision, r.reason) for r in audit_records(cfg) if r.kind == "decision"]
    assert recs == [("grant", "ok"), ("deny", "relay_error")]


# --- the frame source ------------------------------------------------------------------------


class RaisingCapture(FakeCapture):
    """A V4L2 capture whose driver raises once its scripted frames are gone (unplugged)."""

    def read(self):
        if not self.script:
            raise RuntimeError("VIDIOC_DQBUF: No such device")
        return super().read()


def test_a_camera_whose_reads_raise_is_reopened_and_the_gate_keeps_deciding(tmp_path):
    """Before, the driver's exception ended the gate's loop (the daemon stopped)."""
    cfg, frames = ticket_clip(tmp_path, "[policy]\ncooldown_s = 1.0\n")
    first, second = frames[:30], frames[100:]  # the valid ticket, unplugged, then its replay
    captures = [RaisingCapture(first), RaisingCapture(second)]

    def factory(dev):
        if not captures:  # both streams were read and the camera is gone again: stop
            gate.stop_requested = True
            cap = FakeCapture([])
            cap.opened = False
            return cap
        return captures.pop(0)

    cam, states = ten_fps_camera(factory)
    got: list[dict] = []
    gate = Gate(cfg, got.append, source=cam, pin_factory=MockFactory())
    assert gate.run() == 0
    assert "lost" in states[len(first) :]
    assert cam.reconnects == 1
    assert gate.frames == len(first) + len(second)
    assert [(e["decision"], e["reason"]) for e in got] == [
        ("grant", "ok"),
        ("deny", "already_used"),
    ]
    assert gate.relay.pin.state is False


def test_a_source_that_raises_is_read_again_said_once_and_the_gate_goes_on(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg, frames = ticket_clip(tmp_path)
    seen_status: list[str] = []

    class Flaky(ListSource):
        raises = 4

        def read(self):
            if self.raises:
                self.raises -= 1
                if self.raises == 0:
                    seen_status.append(gate.status_text())
                raise OSError(19, "No such device")
            return super().read()

    got: list[dict] = []
    gate = Gate(cfg, got.append, source=Flaky(frames[:30]), pin_factory=MockFactory())
    assert gate.run() == 0
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]
    assert "camera failing" in seen_status[0]
    assert "failing" not in gate.status_text()
    failed = [r for r in caplog.records if "source read_failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelname == "ERROR"  # at once, not once per read
    assert any("source recovered after 4" in r.getMessage() for r in caplog.records)


def test_a_clip_cut_short_is_decided_as_far_as_it_goes_and_said(tmp_path, caplog):
    """A clip truncated mid-way (its container's count says more frames) used to end quietly,
    as if complete."""
    cfg, frames = ticket_clip(tmp_path)
    avi = tmp_path / "t.avi"
    w = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].shape[1::-1])
    for f in frames:
        w.write(f)
    w.release()
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) * 2 // 5])  # cut after about 40% of the clip
    gate, got = run_gate(cfg, avi, tmp_path)
    assert 0 < gate.frames < len(frames)
    assert [(e["decision"], e["reason"]) for e in got][:1] == [("grant", "ok")]
    early = [r.getMessage() for r in caplog.records if "source ended_early" in r.getMessage()]
    assert len(early) == 1
    assert f"frames={gate.frames} of {len(frames)}" in early[0]
    assert "truncated or damaged" in early[0]


def test_camera_frames_of_any_shape_or_type_never_stop_the_gate(tmp_path, caplog):
    """Gray, 16-bit, float with NaN, 1x1, empty, 5 channels, bool, int64, not an array, a very
    tall frame: each becomes a BGR frame or is skipped as corrupt; the ticket after still
    decides."""
    cfg, frames = ticket_clip(tmp_path)
    odd = [
        np.full((48, 64), 90, np.uint8),
        np.full((48, 64, 3), 40000, np.uint16),
        np.full((48, 64, 3), np.nan, np.float64),
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((48, 64, 5), np.uint8),
        np.zeros((48, 64, 3), bool),
        np.zeros((48, 64, 3), np.int64),
        "not a frame",
        np.zeros((5000, 40, 3), np.uint8),
    ]
    cap = FakeCapture(odd + frames[:30])
    cam = CameraSource("0", capture_factory=lambda dev: cap)

    class UntilDrained(FrameSource):
        def read(self):
            if not cap.script:
                self.finished = True
                return None
            return cam.read()

    got: list[dict] = []
    gate = Gate(cfg, got.append, source=UntilDrained(), pin_factory=MockFactory())
    assert gate.run() == 0
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]
    assert cam.corrupt == 6  # 1x1, empty, 5 channels, bool, int64, not an array
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# --- reload ----------------------------------------------------------------------------------


def test_a_reload_keeps_what_the_gate_remembers_of_visitors(tmp_path):
    """Before, SIGHUP built a fresh policy: a face let in a moment ago was let in again at once,
    anti-passback forgotten (and an attack's refusal with it)."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    gate, got = face_gate(cfg, [])

    def show(who: int, t0: float) -> list[tuple[str, str]]:
        out = []
        for i, img in enumerate(visitor(who)):
            for d in gate.process(Frame(img, t0 + i / 10, int(t0 * 10) + i)):
                gate.act(d)
                out.append((str(d.decision), str(d.reason)))
        return out

    assert show(1, 0.0) == [("grant", "ok")]
    gate.reload()
    assert gate.reload_error == ""
    gate.face = ScriptedFaces()  # type: ignore[assignment]  # the reloaded gate's face path
    gate.policy.params = dataclasses.replace(gate.policy.params, face_enabled=True, liveness=False)
    # back after the cooldown, well inside anti-passback (60 s)
    assert show(1, 10.0) == [("deny", "anti_passback")]
    assert [s.state for s in gate.relay.pin.states].count(True) == 1
    gate.close()


# --- the gallery file underneath the running gate ------------------------------------------------


@pytest.mark.parametrize("change", ["deleted", "replaced_empty", "replaced_other_key"])
def test_a_gallery_deleted_or_replaced_underneath_is_followed(
    tmp_path, fixtures, pipeline, caplog, change
):
    """Before, the gate kept its connection to the file it had opened: deleted or renamed over,
    it went on letting in the people of a gallery no longer on disk."""
    from edge.gallery.crypto import init_key, load_key
    from edge.gallery.store import Gallery

    cfg = make_config(tmp_path)
    enroll_lin(cfg, fixtures, pipeline)
    frames = clip_frames(fixtures / "video" / "short_hamilton_clip.mp4")[:120]  # he is let in
    got: list[dict] = []
    gate = Gate(cfg, got.append, source=ListSource(frames), pin_factory=MockFactory())
    assert gate.face is not None and not gate.degraded
    db = cfg.resolve(cfg.gallery.db)
    if change == "deleted":
        for x in ("", "-wal", "-shm"):
            Path(f"{db}{x}").unlink(missing_ok=True)
    else:
        other = tmp_path / "new.db"
        key = (
            load_key(cfg.resolve(cfg.gallery.key_file))
            if change == "replaced_empty"
            else init_key(tmp_path / "other.key")
        )
        with Gallery(other, key):
            pass
        os.replace(other, db)
    gate.tick(0.0)  # once a second in the loop
    face_after = gate.face
    gate.run()
    assert gate.frames == len(frames)
    assert [e for e in got if e["decision"] == "grant"] == []
    assert not any(s.state for s in gate.relay.pin.states)
    moved = "deleted" if change == "deleted" else "replaced"
    assert any(f"gate gallery_{moved}" in r.getMessage() for r in caplog.records)
    if change == "replaced_empty":  # the new file is the gallery now: nobody enrolled in it
        assert face_after is not None and not gate.degraded
        assert len(face_after.matcher.matcher.people) == 0
        # gone again just as the gate opens it: refused, and no empty gallery made in its place
        for x in ("", "-wal", "-shm"):
            Path(f"{db}{x}").unlink(missing_ok=True)
        with pytest.raises(GalleryError, match="does not exist"):
            face_after.reopen_gallery()
        assert not db.exists()
    else:
        assert face_after is None
        assert gate.degraded.startswith("ticket-only: face path off")
        assert ("was deleted" if change == "deleted" else str(db)) in gate.degraded


# --- the Pi camera -------------------------------------------------------------------------------


def test_a_pi_camera_that_stops_is_restarted_with_backoff(monkeypatch, caplog):
    """Before, a Pi camera that failed was asked for a frame again on every loop, forever (an
    error line each time) and never restarted: a reseated cable left the gate blind."""
    import types

    from edge.gate.sources import Picamera2Source

    xbgr = np.zeros((48, 64, 4), np.uint8)
    xbgr[..., 2] = 200
    cams = PiCameras([[xbgr, xbgr], IndexError("list index out of range"), [xbgr, xbgr, xbgr]])
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=cams))
    now = [0.0]
    src = Picamera2Source(64, 48, reconnect_max_s=4.0, clock=lambda: now[0])
    got = []
    for _ in range(300):  # 30 s of a 10 fps loop
        f = src.read()
        if f is not None:
            got.append(f.index)
        now[0] += 0.1
    first, second = cams.made[0], cams.made[1]
    assert got == [0, 1, 2, 3, 4]  # the first camera's two frames, then the restarted one's
    assert src.reconnects == 1
    assert first.stopped and first.closed  # released before a new one is started
    assert second.started
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    # each camera's loss said twice (its first failure, then "lost"), not once per read
    assert len(errors) == 2 * 2
    src.close()
    assert second.stopped and second.closed


def test_a_pi_camera_missing_at_start_is_a_clear_error(monkeypatch):
    import types

    from edge.errors import SourceError
    from edge.gate.sources import Picamera2Source

    cams = PiCameras([IndexError("list index out of range")])
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=cams))
    with pytest.raises(SourceError, match="Pi camera cannot be started.*ribbon cable"):
        Picamera2Source(64, 48)


@pytest.mark.parametrize(
    "breakage",
    ["k_over_n", "unknown_key", "deleted", "folder", "bad_mode", "issuer_key_garbage"],
)
def test_a_reload_with_a_broken_config_keeps_the_old_one_and_says_why(tmp_path, breakage):
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    toml = Path(cfg.source_file)
    text = toml.read_text()
    gate = Gate(cfg, source=ListSource([]), pin_factory=MockFactory())
    if breakage == "k_over_n":
        toml.write_text(text + "[policy]\nk = 9\nn = 2\n")
    elif breakage == "unknown_key":
        toml.write_text(text + "[policy]\nkk = 1\n")
    elif breakage == "deleted":
        toml.unlink()
    elif breakage == "folder":
        toml.unlink()
        toml.mkdir()
    elif breakage == "bad_mode":
        toml.write_text(text.replace('id = "test-gate"', 'id = "test-gate"\nmode = "open"'))
    else:
        (tmp_path / "office" / "issuer.pub").write_text("not a key")
    gate.reload()
    assert gate.cfg is cfg
    assert gate.reload_error.startswith("reload failed, previous configuration kept: ")
    why = {
        "k_over_n": "policy.k",
        "unknown_key": "policy.kk",
        "deleted": "does not exist",
        "folder": "cannot be read",
        "bad_mode": "gate.mode",
        "issuer_key_garbage": "not an issuer public key",
    }[breakage]
    assert why in gate.reload_error
    assert why in gate.status_text()
    gate.close()


def test_a_reload_says_relay_and_camera_changes_wait_for_a_restart(tmp_path, caplog):
    """The relay pin and the camera are built once: a reload that changes them used to be taken
    silently, the old pin still driven."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    toml = Path(cfg.source_file)
    gate = Gate(cfg, source=ListSource([]), pin_factory=MockFactory())
    toml.write_text(toml.read_text().replace("pulse_s = 0.3", "pulse_s = 0.3\npin = 27"))
    gate.reload()
    assert gate.reload_error == ""
    assert gate.cfg.relay.pin == 27 and gate.relay.cfg.pin == 17
    said = [r.getMessage() for r in caplog.records if "reload_partial" in r.getMessage()]
    assert said == [
        "gate reload_partial changed=[relay]: these take effect at the next start "
        "(systemctl restart edge-gate)"
    ]
    gate.close()


# --- signals -----------------------------------------------------------------------------------


def test_sigterm_in_the_middle_of_a_decision_finishes_it_closes_and_flushes(tmp_path):
    """SIGTERM arrives while a decision is being reported: that decision is finished and
    recorded, the gate stops at the next frame, the relay ends shut and the junk codes counted
    so far get their record when the log closes."""
    cfg, frames = ticket_clip(tmp_path)
    got: list[dict] = []

    def on_decision(ev):
        got.append(ev)
        if ev["reason"] == "invalid_signature":  # the second decision, a junk code
            os.kill(os.getpid(), signal.SIGTERM)

    gate = Gate(cfg, on_decision, source=ListSource(frames), pin_factory=MockFactory())
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        assert gate.run() == 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    assert [(e["decision"], e["reason"]) for e in got] == [
        ("grant", "ok"),
        ("deny", "invalid_signature"),
    ]
    assert gate.frames < len(frames)
    assert gate.relay.pin.state is False and gate.relay.pin.function == "output"
    recs = [(r.decision, r.reason) for r in audit_records(cfg) if r.kind == "decision"]
    assert recs == [("grant", "ok"), ("deny", "junk_codes")]


# --- storage held for a while, full, and the events file ---------------------------------------


@pytest.mark.parametrize("store", ["ledger", "audit"])
def test_a_store_locked_for_a_second_delays_the_grant_and_loses_nothing(tmp_path, store):
    """Another process (a backup, `ledger recover`, sync) holds the write lock for about a
    second: the gate waits for it (its busy timeout), then grants and records as usual."""
    if store == "ledger":
        cfg, frames = ticket_clip(tmp_path)
        gate = Gate(cfg, source=ListSource(frames[:30]), pin_factory=MockFactory())
        got: list[dict] = []
        gate.on_decision = got.append
        db, conn = cfg.resolve(cfg.tickets.ledger), gate.ledger.conn
    else:
        cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
        gate, got = face_gate(cfg, visitor(1))
        db, conn = cfg.resolve(cfg.audit.path), gate.audit.conn
    conn.execute("PRAGMA busy_timeout=120000")  # however slow this machine: the lock goes first
    holder = hold_write_lock(db)
    threading.Timer(1.0, lambda: holder.communicate("", timeout=60)).start()
    try:
        gate.run()
    finally:
        holder.wait(120)
    assert [(e["decision"], e["reason"]) for e in got] == [("grant", "ok")]
    assert [s.state for s in gate.relay.pin.states].count(True) == 1
    recs = [(r.decision, r.reason) for r in audit_records(cfg) if r.kind == "decision"]
    assert recs == [("grant", "ok")]
    if store == "ledger":
        from edge.tickets.ledger import Ledger

        with Ledger(cfg.resolve(cfg.tickets.ledger)) as led:
            assert led.used("DAY-0001") == 1


@pytest.mark.parametrize("fault", ["full", "read_only"])
def test_a_ledger_that_cannot_be_written_denies_the_ticket_and_the_gate_goes_on(tmp_path, fault):
    """A full disk (SQLite's page limit on the gate's connection, filled with redemptions) or
    a card remounted read-only (query_only): the valid ticket is refused `ledger_error`, never
    let in uncounted, and every later code is still decided."""
    from edge import tickets as tk

    cfg, frames = ticket_clip(tmp_path)
    got: list[dict] = []
    gate = Gate(cfg, got.append, source=ListSource(frames), pin_factory=MockFactory())
    conn = gate.ledger.conn
    if fault == "full":
        conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(LedgerError, match="full"):
            for i in range(100_000):  # other tickets' entries fill the last free room
                gate.ledger.redeem(tk.Ticket(f"FILL-{i:06d}", valid_until=2**40), time.time())
    else:
        conn.execute("PRAGMA query_only=ON")
    gate.run()
    gate.close()
    decided = [(e["decision"], e["reason"]) for e in got]
    assert decided[0] == ("deny", "ledger_error")
    assert len(decided) == 5
    assert not any(s.state for s in gate.relay.pin.states)


def test_an_events_file_on_a_full_disk_still_prints_every_decision(tmp_path):
    """`run --events /dev/full`: every write fails with ENOSPC; the console still shows each
    decision, the error is logged, and the run ends normally."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    scene = ticket_scene(tmp_path / "office", tmp_path / "t.mp4", time.time())
    p = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", cfg.source_file]
        + ["--source", str(scene.clip), "--fast", "--events", "/dev/full"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    shown = [ln for ln in p.stdout.splitlines() if " via ticket " in ln]
    assert len(shown) == len(scene.expected)
    assert "output error=[Errno 28]" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("store", ["audit", "ledger"])
def test_an_audit_log_or_ledger_deleted_underneath_is_reopened_as_at_start(tmp_path, caplog, store):
    """Before, the gate's connections went on writing into the deleted files: every record and
    redemption after the deletion was lost when the gate stopped."""
    cfg, frames = ticket_clip(tmp_path)
    db = cfg.resolve(cfg.audit.path if store == "audit" else cfg.tickets.ledger)

    def delete():  # after the first ticket was let in and recorded
        for x in ("", "-wal", "-shm"):
            Path(f"{db}{x}").unlink(missing_ok=True)
        gate.tick(0.0)  # once a second in the loop

    got: list[dict] = []
    source = ListSource(frames, hook_at=40, hook=delete)
    gate = Gate(cfg, got.append, source=source, pin_factory=MockFactory())
    gate.run()
    decided = [(e["decision"], e["reason"]) for e in got]
    said = [r.getMessage() for r in caplog.records if "gate evidence_moved" in r.getMessage()]
    assert len(said) == 1 and f"files={store}:" in said[0]
    assert decided[0] == ("grant", "ok")
    if store == "audit":
        assert decided[-1] == ("deny", "already_used")  # tickets go on as before
        assert "replaced or deleted" in gate.audit.problem  # the new chain says what happened
        recs = [(r.decision, r.reason) for r in audit_records(cfg) if r.kind == "decision"]
        assert ("deny", "already_used") in recs  # on disk, in the file at audit.path
    else:
        assert decided[-1] == ("deny", "ledger_error")  # no ledger: no ticket counted or let in
        assert "does not exist" in gate.ledger.problem
        assert "TICKETS REFUSED" in gate.status_text()
        assert [s.state for s in gate.relay.pin.states].count(True) == 1


class HookedSource(ListSource):
    """Frames from a list, with a hook before each of several frames."""

    def __init__(self, frames, hooks):
        super().__init__(frames)
        self.hooks = dict(hooks)

    def read(self):
        if (hook := self.hooks.pop(self.i, None)) is not None:
            hook()
        return super().read()


def test_an_audit_log_deleted_that_cannot_be_reopened_refuses_face_grants_until_it_is(
    tmp_path, monkeypatch, caplog
):
    """The audit log deleted to free a full disk (the gate holds it open: no space comes back),
    so it cannot be made again. Before, the gate went on writing into the deleted file and never
    looked again: a face let in afterwards opened the relay with its record lost. Now face
    grants are refused (audit_error) until the log opens again, tried each tick."""
    import edge.gate.daemon as daemon_mod

    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    db = cfg.resolve(cfg.audit.path)
    real_open = daemon_mod.open_audit

    def full_disk(*a, **kw):
        raise AuditError(f"audit log {db}: database or disk is full")

    def delete_on_a_full_disk():
        for x in ("", "-wal", "-shm"):
            Path(f"{db}{x}").unlink(missing_ok=True)
        monkeypatch.setattr(daemon_mod, "open_audit", full_disk)
        gate.tick(0.0)
        gate.tick(0.0)  # tried again: still full

    def room_again():
        monkeypatch.setattr(daemon_mod, "open_audit", real_open)
        gate.tick(0.0)

    frames = visitor(1) + visitor(0, 3) + visitor(2) + visitor(0, 3) + visitor(3)
    gate, got = face_gate(cfg, [])
    gate.source = HookedSource(frames, {6: delete_on_a_full_disk, 14: room_again})
    gate.run()
    assert [(e["decision"], e["reason"], e["person"]) for e in got] == [
        ("grant", "ok", "p-1"),
        ("deny", "audit_error", "p-2"),
        ("grant", "ok", "p-3"),
    ]
    assert gate.relay.pulses == 2  # p-1 and p-3
    on_disk = [(r.decision, r.subject) for r in audit_records(cfg) if r.kind == "decision"]
    assert ("grant", "p-3") in on_disk  # the log made again holds what came after
    said = [r.getMessage() for r in caplog.records if "reopen_failed" in r.getMessage()]
    assert len(said) == 1  # one line, not one per tick


def test_a_clip_without_one_usable_frame_still_ends_the_run_with_its_error(tmp_path):
    """The daemon reads again after a source raised, except for a source's own SourceError (a
    file none of whose frames can be used): that stays the run's error, also behind a wrapper
    (FirstFrames) that does not say it is finished."""
    from edge.errors import SourceError
    from edge.gate.sources import FirstFrames

    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"x")
    for wrap in (lambda s: s, lambda s: FirstFrames(s, 0)):
        junk = [np.zeros((4, 4, 7), np.uint8)] * 3  # frames, none of them usable
        src = wrap(VideoFileSource(bad, capture_factory=lambda _, j=junk: FakeCapture(j)))
        gate = Gate(cfg, source=src, pin_factory=MockFactory())
        with pytest.raises(SourceError, match="none of its 3 frame"):
            gate.run()
        assert gate.relay.pin.state is False


def test_the_watchdog_hears_from_a_gate_waiting_on_a_locked_ledger(tmp_path):
    """A ledger locked by another process makes a redemption wait up to the busy timeout (10 s,
    as long as the unit's WatchdogSec): before, no ping went out meanwhile and systemd killed
    the gate as hung. Now the wait is no hang: pings go on, and the ticket is refused."""
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(1.0)
    marker = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    cfg, frames = ticket_clip(tmp_path)
    got: list[dict] = []

    def decided(ev):
        got.append(ev)
        marker.sendto(b"TEST=decided", sock_path)  # after the wait: the redemption failed

    notifier = Notifier({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "200000"})
    waiting = lambda: marker.sendto(b"TEST=waiting", sock_path)  # noqa: E731 - the ticket next
    source = ListSource(frames[:30], hook_at=8, hook=waiting)
    gate = Gate(cfg, decided, source=source, pin_factory=MockFactory(), notifier=notifier)
    gate.ledger.conn.execute("PRAGMA busy_timeout=2000")  # the test's wait: 2 s, not 10
    holder = hold_write_lock(cfg.resolve(cfg.tickets.ledger))
    msgs, reader = notify_messages(server)
    try:
        gate.run()
    finally:
        holder.communicate("", timeout=60)
    reader.join(300)
    server.close()
    marker.close()
    assert [(e["decision"], e["reason"]) for e in got] == [("deny", "ledger_error")]
    during = msgs[msgs.index("TEST=waiting") + 1 : msgs.index("TEST=decided")]
    assert "WATCHDOG=1" in during
    assert msgs[-1] == "STOPPING=1"


def test_a_wait_on_a_locked_store_pings_the_watchdog_as_it_begins(tmp_path):
    """The loop pings at most every half interval, and the wait's helper first pings half an
    interval after the wait begins: entered just before the loop's next ping was due, the gap
    passed WatchdogSec and systemd killed the gate mid-wait. The wait now pings as it begins
    when the last ping is a quarter interval old."""
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(2.0)  # far below the 5 s the helper would first wait
    notifier = Notifier({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "10000000"})
    try:
        notifier.watchdog()
        assert server.recv(64) == b"WATCHDOG=1"
        notifier._last_ping -= 4.5  # the loop's last ping, 4.5 s ago: its next is due at 5 s
        with notifier.bounded_wait(60.0):
            assert server.recv(64) == b"WATCHDOG=1"  # at once, not 5 s into the wait
        notifier._last_ping = time.monotonic()  # pinged just now: the wait sends nothing more
        with notifier.bounded_wait(60.0), pytest.raises(TimeoutError):
            server.settimeout(0.3)
            server.recv(64)
    finally:
        server.close()
