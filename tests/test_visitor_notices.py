"""What the visitor is told at the lane: the notice of each decision and the guidance before one."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import ConfigError
from edge.gate.daemon import Gate
from edge.gate.notices import Notices
from edge.gate.policy import FaceSeen, Guidance, Policy, PolicyParams
from edge.gate.sources import Frame

from .console_harness import NoFrames, chromium, need_browser
from .helpers import make_config

FPS = 10.0
BLANK = np.full((48, 64, 3), 200, np.uint8)


class Heard:
    """A notice sink that keeps what the visitor was told."""

    def __init__(self):
        self.seen = []

    def send(self, notice) -> None:
        self.seen.append(notice)

    def said(self) -> list[tuple[str, str, str | None]]:
        return [(n.notice, n.reason, n.decision) for n in self.seen]


class ScriptedFaces:
    """The face path as a script: the faces the next frame holds."""

    def __init__(self):
        self.next: tuple[FaceSeen, ...] = ()

    def observe(self, image, t):
        return self.next

    def close(self) -> None:
        pass


def face(pid, live=True, pad="") -> FaceSeen:
    return FaceSeen(pid, 0.9, 0.3, (0.5, 0.5), True, live=live, pad=pad)


LIVE_A = face("A")
CLOSE_A = face("A", live=False, pad="too_close")
STRANGER = face(None, live=None)


@dataclasses.dataclass
class Lane:
    gate: Gate
    faces: ScriptedFaces
    heard: Heard
    events: list[dict]
    frame: int = 0

    def show(self, faces: tuple[FaceSeen, ...], frames: int, scan: str = "") -> None:
        for _ in range(frames):
            self.faces.next = faces
            if scan:
                self.gate._scan_q.put(scan)
                scan = ""
            frame = Frame(BLANK, self.frame / FPS, self.frame)
            for d in self.gate.process(frame):
                self.gate.act(d)
            self.frame += 1


def lane(tmp_path) -> Lane:
    """A gate whose face path is scripted, liveness on, every notice heard."""
    cfg = make_config(tmp_path, "[vision]\nface_enabled = false\n")
    heard, events = Heard(), []
    gate = Gate(
        cfg, events.append, source=NoFrames(), pin_factory=MockFactory(), notices=Notices([heard])
    )
    faces = ScriptedFaces()
    gate.face = faces  # type: ignore[assignment]
    gate.policy = Policy(PolicyParams(k=3, n=5, window_s=2.0, liveness=True))
    return Lane(gate, faces, heard, events)


def ticket(tmp_path, tid: str = "W-1") -> str:
    key = tk.load_private(tmp_path / "office" / "issuer.key")
    return tk.sign(tk.Ticket(tid, valid_until=int(time.time()) + 999), key)


def test_a_visitor_let_in_by_face_is_not_refused_walking_up_to_the_camera(tmp_path):
    """Before, a visitor granted by face who then came close to the camera on the way through
    was refused `too_close` half a second later: the screen turned from "Welcome" to "Please
    show your ticket" (red) while they passed. Now the visitor let in hears only the welcome."""
    ln = lane(tmp_path)
    with ln.gate:
        ln.show((LIVE_A,), 5)
        ln.show((CLOSE_A,), 20)
    assert ln.heard.said() == [("welcome", "ok", "grant")]
    assert [e["decision"] for e in ln.events] == ["grant"]


def test_a_visitor_let_in_by_ticket_is_not_told_to_show_a_ticket(tmp_path):
    """Before, a visitor not enrolled who showed a ticket after 3 s at the gate was let in, and
    a second later the face path said `not_enrolled`: "Please show your ticket" right after the
    welcome. Now a ticket grant ends what the face path says to that visitor."""
    ln = lane(tmp_path)
    with ln.gate:
        ln.show((STRANGER,), 30)
        ln.show((STRANGER,), 30, scan=ticket(tmp_path))
    assert ln.heard.said() == [("welcome", "ok", "grant")]
    assert [(e["decision"], e["via"]) for e in ln.events] == [("grant", "ticket")]


def test_a_visitor_let_in_by_ticket_is_not_guided_or_refused_as_too_close(tmp_path):
    """Before, a pass holder let in by ticket who then came close to the camera was told to step
    back and refused `too_close` after the welcome. Now the welcome stands."""
    ln = lane(tmp_path)
    with ln.gate:
        ln.show((STRANGER,), 3)
        ln.show((CLOSE_A,), 20, scan=ticket(tmp_path))
    assert ln.heard.said() == [("welcome", "ok", "grant")]


def test_a_ticket_refused_at_redemption_opens_nothing_and_lets_nobody_in(tmp_path):
    """A ticket the policy granted and the ledger then refused (spent at this or another lane)
    counted as an opening: the next visitor's ticket, scanned a frame later, waited a pulse
    for an opening that never was, and the visitor who held the spent ticket was taken as let
    in (the face path said nothing more to them). Now the next ticket is judged at once and
    the visitor refused is told again."""
    ln = lane(tmp_path)
    w1, w2 = ticket(tmp_path, "W-1"), ticket(tmp_path, "W-2")
    with ln.gate:
        ln.show((), 1, scan=w1)  # frame 0: let in
        ln.show((), 79)  # past the cooldown
        ln.show((STRANGER,), 1, scan=w1)  # frame 80: spent
        ln.show((STRANGER,), 1, scan=w2)  # frame 81: the next visitor's
        ln.show((STRANGER,), 60)
    assert [(e["decision"], e["reason"], e["frame"]) for e in ln.events[:3]] == [
        ("grant", "ok", 0),
        ("deny", "already_used", 80),
        ("grant", "ok", 81),
    ]
    assert len(ln.events) == 3  # W-2's holder let in: the face path says no more to them


def test_a_visitor_whose_ticket_was_spent_is_told_what_to_do(tmp_path):
    """The face path stays with a visitor whose ticket the ledger refused: a stranger at the
    gate is told `not_enrolled` (show a ticket) as one with no ticket would be."""
    ln = lane(tmp_path)
    w1 = ticket(tmp_path, "W-1")
    with ln.gate:
        ln.show((), 1, scan=w1)
        ln.show((), 79)
        ln.show((STRANGER,), 1, scan=w1)
        ln.show((STRANGER,), 60)
    assert [(e["decision"], e["reason"]) for e in ln.events] == [
        ("grant", "ok"),
        ("deny", "already_used"),
        ("deny", "not_enrolled"),
    ]


def _listen(path) -> socket.socket:
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    rx.settimeout(5.0)
    return rx


def test_a_reload_follows_a_new_screen_socket(tmp_path):
    """Before, a reload read a new `[screen] socket` and went on sending to the old one: the
    lane screen, restarted on the new path, stayed idle with no word in the gate's log. Now
    the gate sends to the path the reloaded config names (none when it is emptied)."""
    cfg = make_config(tmp_path, '[vision]\nface_enabled = false\n[screen]\nsocket = "a.sock"\n')
    a, b = _listen(tmp_path / "a.sock"), _listen(tmp_path / "b.sock")
    toml = tmp_path / "gate.toml"
    with a, b, Gate(cfg, source=NoFrames(), pin_factory=MockFactory()) as gate:
        gate.guide(Guidance(0.0, 0, "hold_still", "not_yet_live"), time.time())
        assert json.loads(a.recv(4096))["notice"] == "hold_still"
        toml.write_text(toml.read_text().replace('"a.sock"', '"b.sock"'))
        gate.reload()
        assert not gate.reload_error
        gate.guide(Guidance(0.0, 1, "step_back", "too_close"), time.time())
        assert json.loads(b.recv(4096))["notice"] == "step_back"
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            a.recv(4096)  # nothing more on the old path
        toml.write_text(toml.read_text().replace('socket = "b.sock"', 'socket = ""'))
        gate.reload()
        gate.guide(Guidance(0.0, 2, "come_closer", "too_small"), time.time())
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(4096)


def _long_socket(tmp_path) -> str:
    return str(tmp_path / ("d" * 60) / ("n" * 60 + ".sock"))


def test_a_screen_socket_path_too_long_is_refused_with_the_fix_that_works(tmp_path):
    """Before, a `[screen] socket` longer than a Unix socket path may be stopped the screen with
    the fix "give the screen's service a writable folder", which does not help. Now the error
    says the path is too long and to choose a shorter one."""
    from edge.screen.server import Screen

    path = _long_socket(tmp_path)
    (tmp_path / "gate.toml").write_text(f'[screen]\nsocket = "{path}"\nlisten = "127.0.0.1:0"\n')
    cfg = config_mod.load(tmp_path / "gate.toml")
    with pytest.raises(ConfigError) as e:
        Screen(cfg)
    assert "longer than a Unix socket path may be (107)" in str(e.value)
    assert "shorter path" in e.value.hint
    assert "writable folder" not in str(e.value)


def test_the_gate_says_at_start_when_its_screen_socket_path_can_never_work(tmp_path, caplog):
    """Before, a gate whose `[screen] socket` is too long for a Unix socket started without a
    word and said so only at the first visitor's notice. Now it starts, decides as always, and
    logs at start that no notice will reach the screen, with the fix."""
    path = _long_socket(tmp_path)
    cfg = make_config(tmp_path, f'[vision]\nface_enabled = false\n[screen]\nsocket = "{path}"\n')
    with (
        caplog.at_level(logging.ERROR, logger="edge.gate.daemon"),
        Gate(cfg, source=NoFrames(), pin_factory=MockFactory()),
    ):
        pass
    said = [r.getMessage() for r in caplog.records if "screen.socket" in r.getMessage()]
    assert len(said) == 1, caplog.text
    assert "longer than a Unix socket path may be" in said[0]
    assert "shorter path" in said[0]


def test_a_name_with_dollar_signs_is_shown_as_it_is(tmp_path):
    """Before, the page put a name into its greeting with String.replace, which reads `$&`,
    `$'` and `$$` in the name as patterns: "Zoë $& $$" was shown as "Hello, Zoë {name} $".
    Now the name is shown as it is, in every language."""
    need_browser()
    from edge.gate.notice_socket import SocketSink
    from edge.screen.server import Screen

    (tmp_path / "gate.toml").write_text(
        '[screen]\nsocket = "n.sock"\nlisten = "127.0.0.1:0"\nshow_names = true\n'
        'languages = ["en", "zh-CN"]\n'
    )
    cfg = config_mod.load(tmp_path / "gate.toml")
    name = "Zoë $& $$ $' $`"
    with Screen(cfg) as screen, chromium() as browser:
        page = browser.new_page()
        page.goto(screen.url)
        page.locator("body.idle[data-live='1']").wait_for(timeout=15_000)
        sink = SocketSink(cfg.resolve(cfg.screen.socket))
        sink.send({"v": 1, "t": time.time(), "lane": "l1", "notice": "welcome", "reason": "ok",
                   "decision": "grant", "name": name})  # fmt: skip
        sink.close()
        page.locator("body[data-notice='welcome']").wait_for(timeout=15_000)
        assert page.locator("#name").inner_text() == f"Hello, {name} · {name}，您好"


def test_two_visitors_one_of_them_missed_now_and_then_are_refused_once(tmp_path):
    """Before, two faces at the gate of which the detector missed one every third frame were
    refused `tailgating` each time the second face came back: "Please show your ticket", red
    and two beeps three times a second, and as many audit records. Now they are refused once,
    and again only after a window without two faces."""
    ln = lane(tmp_path)
    b = dataclasses.replace(STRANGER, center=(0.3, 0.5))
    with ln.gate:
        for _ in range(20):
            ln.show((STRANGER, b), 2)
            ln.show((STRANGER,), 1)
        ln.show((), 25)  # they have gone
        ln.show((STRANGER, b), 3)  # the next two
    assert [e["reason"] for e in ln.events] == ["tailgating", "tailgating"]
    assert ln.heard.said() == [("show_ticket", "tailgating", "deny")] * 2


def test_a_grant_right_after_a_refusal_puts_the_red_light_out(tmp_path):
    """Before, a ticket shown within 1.5 s of a refusal lit the green light while the red one
    still burned: both at once for the visitor let in. Now a decision's light puts the other
    one out."""
    from edge.screen.server import Signal

    f = MockFactory()
    sig = Signal(config_mod.SignalConfig(green_pin=6, red_pin=13), factory=f)
    try:
        sig.play("deny")
        _until(lambda: f.pin(13).state, "the red light")
        sig.play("grant")
        _until(lambda: f.pin(6).state, "the green light")
        assert not f.pin(13).state
        sig.play("deny")
        _until(lambda: f.pin(13).state, "the red light again")
        assert not f.pin(6).state
    finally:
        sig.close()


def _until(cond, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def test_a_ticket_grant_keeps_the_attack_verdict_of_the_face_in_view(tmp_path):
    """A replay of an enrolled person judged an attack, then a valid ticket shown in the same
    visit: the ticket lets its holder in, and the replay, whose frames then pass as live, is
    still refused by face (no second entry in that person's name)."""
    ln = lane(tmp_path)
    with ln.gate:
        ln.show((face("A", live=False),), 10)
        ln.show((face("A", live=False),), 2, scan=ticket(tmp_path))
        ln.show((LIVE_A,), 20)
    said = [(e["decision"], e["via"], e["reason"]) for e in ln.events]
    assert said == [("deny", "face", "presentation_attack"), ("grant", "ticket", "ok")], said
