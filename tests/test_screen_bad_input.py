"""Bad input at the lane screen (`edge-gate screen`): junk on the notice socket, junk and idle
clients on its page, a socket path that is taken. The screen refuses each with one log line or
one typed error, keeps showing the next good notice, and never prints a traceback; the gate
goes on deciding whatever the screen does."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge.errors import ConfigError
from edge.gate.daemon import Gate
from edge.screen import server as screen_server
from edge.screen.server import Screen

from .helpers import FramesUntilScanned, ScannerLines, make_config

GOOD = {"v": 1, "t": 1.0, "lane": "l1", "notice": "welcome", "reason": "ok", "decision": "grant",
        "name": None}  # fmt: skip


def _cfg(tmp_path: Path) -> config_mod.Config:
    (tmp_path / "gate.toml").write_text('[screen]\nsocket = "n.sock"\nlisten = "127.0.0.1:0"\n')
    return config_mod.load(tmp_path / "gate.toml")


def _send(cfg: config_mod.Config, data: bytes) -> None:
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        tx.sendto(data, str(cfg.resolve(cfg.screen.socket)))
    finally:
        tx.close()


def _state(screen: Screen) -> dict:
    """/state as the page reads it: strict JSON (a browser's JSON.parse takes no NaN)."""
    with urllib.request.urlopen(screen.url + "state", timeout=30) as r:
        return json.loads(r.read(), parse_constant=lambda c: pytest.fail(f"{c} in /state"))


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _until(what: str, cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)


JUNK = [
    b"[" * 60_000,  # nested too deep for the JSON reader
    json.dumps({**GOOD, "t": "noon"}).encode(),
    json.dumps({**GOOD, "t": [1]}).encode(),
    json.dumps({**GOOD, "t": float("nan")}).encode(),
    json.dumps({**GOOD, "t": float("inf")}).encode(),
    json.dumps({**GOOD, "lane": {"a": 1}}).encode(),
    json.dumps({**GOOD, "name": 5}).encode(),
    json.dumps([GOOD]).encode(),
    b"\xff\xfe\x00junk",
    b"",
    b"1" * 5000,  # a number too long to convert
]


def test_junk_datagrams_are_refused_and_the_next_notice_still_shows(tmp_path, caplog):
    """Before: one datagram nested too deep, or with a time that is not a number, killed the
    thread reading the socket: every later notice was lost while the page showed the last."""
    cfg = _cfg(tmp_path)
    with Screen(cfg) as screen, caplog.at_level(logging.WARNING, "edge.screen.server"):
        for i, junk in enumerate(JUNK):
            _send(cfg, junk)
            _send(cfg, json.dumps({**GOOD, "t": float(i + 2)}).encode())
            shown = screen.board.wait_after(i, 30)
            assert shown is not None, f"junk {junk[:40]!r} stopped the screen hearing notices"
            assert (shown.seq, shown.t) == (i + 1, float(i + 2))
            assert _state(screen)["current"]["t"] == float(i + 2)
        assert screen.receiver.refused == len(JUNK)
        assert screen.receiver.thread.is_alive()
    assert not [r for r in caplog.records if r.exc_info]  # one line each, no traceback


def test_an_oversized_datagram_is_refused_whole(tmp_path):
    cfg = _cfg(tmp_path)
    with Screen(cfg) as screen:
        big = json.dumps({**GOOD, "reason": "x" * 100_000}).encode()
        with contextlib.suppress(OSError):  # larger than the socket takes: refused by the kernel
            _send(cfg, big)
        _send(cfg, json.dumps(GOOD).encode())
        shown = screen.board.wait_after(0, 30)
        assert shown is not None and shown.reason == "ok"


def test_a_file_at_the_socket_path_is_refused_and_left_alone(tmp_path):
    """Before: `Address already in use` with the fix "give the screen a writable folder"."""
    cfg = _cfg(tmp_path)
    path = cfg.resolve(cfg.screen.socket)
    path.write_text("someone's notes")
    with pytest.raises(ConfigError, match="exists and is not a socket") as e:
        Screen(cfg)
    assert "move that file away" in str(e.value)
    assert path.read_text() == "someone's notes"
    path.unlink()
    path.mkdir()
    with pytest.raises(ConfigError, match="not a socket"):
        Screen(cfg)


def test_a_second_screen_on_the_same_socket_is_refused_and_the_first_keeps_hearing(tmp_path):
    """Before: the second screen removed the first one's socket and bound its own: the first,
    still showing on the kiosk, never heard another notice."""
    cfg = _cfg(tmp_path)
    with Screen(cfg) as first:
        with pytest.raises(ConfigError, match="another screen is listening"):
            Screen(cfg)
        _send(cfg, json.dumps(GOOD).encode())
        assert first.board.wait_after(0, 30) is not None
    # a socket left by a screen that is gone is taken over
    left = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.bind(str(cfg.resolve(cfg.screen.socket)))
    left.close()
    with Screen(cfg) as again:
        _send(cfg, json.dumps(GOOD).encode())
        assert again.board.wait_after(0, 30) is not None


def test_listen_address_with_a_control_character_is_a_config_error(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="is not host:port"):
        Screen(cfg, "\x00:8088")  # before: TypeError from the socket layer


def _raw(port: int, data: bytes, reset: bool = False) -> bytes:
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        c.sendall(data)
        if reset:  # close with RST: the page's answer meets a reset connection
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out
    finally:
        c.close()


def test_junk_http_requests_get_an_answer_and_no_traceback(tmp_path, capfd, caplog):
    """Before: a page client that reset its connection left a traceback on the screen's stderr
    (the journal) for every request."""
    cfg = _cfg(tmp_path)
    with Screen(cfg) as screen, caplog.at_level(logging.ERROR, "edge.screen.server"):
        port = screen.httpd.server_address[1]
        answers = {
            b"\x00\xff\xfe junk\r\n\r\n": b"Error code: 400",  # HTTP/0.9: no status line
            b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n": b"HTTP/1.0 414 ",
            b"POST /state HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello": b"HTTP/1.0 501 ",
            b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n": b"HTTP/1.0 431 ",
            b"GET /%ff%00/../../etc/passwd HTTP/1.1\r\n\r\n": b"HTTP/1.0 404 ",
            b"GET / HTTP/9.9\r\n\r\n": b"Error code: 505",
        }
        for request, status in answers.items():
            assert status in _raw(port, request), request[:40]
        for _ in range(20):
            for path in (b"/", b"/screen.js", b"/state", b"/events"):
                _raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n", reset=True)
        _send(cfg, json.dumps(GOOD).encode())
        assert screen.board.wait_after(0, 30) is not None
        assert _state(screen)["received"] == 1  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err[-2000:]


def test_a_client_that_never_sends_or_never_reads_is_closed(tmp_path, monkeypatch):
    """Before: a connection that sent no request, or an event stream nobody read, held one of
    the screen's threads for ever."""
    monkeypatch.setattr(screen_server, "CLIENT_TIMEOUT_S", 1.0)
    cfg = _cfg(tmp_path)
    with Screen(cfg) as screen:
        port = screen.httpd.server_address[1]
        base = _handler_threads()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", port))
        stuck.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        # the stream is served (an idle connection's thread may already have timed out: its
        # whole life is CLIENT_TIMEOUT_S, so the six are not counted alive at once)
        stuck.settimeout(30)
        assert stuck.recv(64).startswith(b"HTTP/1.0 200"), "the event stream is not served"
        big, i = {**GOOD, "reason": "r" * 3000}, 0
        end = time.monotonic() + 60
        while _handler_threads() > base:  # notices until the stream's buffers are full
            assert time.monotonic() < end, "an idle or unread connection is still open"
            _send(cfg, json.dumps({**big, "t": float(i)}).encode())
            i += 1
            if i % 100 == 0:
                time.sleep(0.02)
        for c in idle:
            c.settimeout(30)
            assert c.recv(100) == b""  # closed by the screen
            c.close()
        stuck.close()
        _send(cfg, json.dumps({**GOOD, "t": 99.0}).encode())
        _until("the screen still hears", lambda: screen.board.current.t == 99.0)
        assert _state(screen)["current"]["t"] == 99.0


def test_the_gate_decides_on_while_the_screen_is_down_or_its_path_is_a_file(tmp_path):
    """The gate sends each notice without waiting: no screen, or a file where the socket should
    be, drops the notice; every decision is still made and the file is untouched."""
    cfg = make_config(tmp_path, '[vision]\nface_enabled = false\n[screen]\nsocket = "n.sock"\n')
    blank = np.full((48, 64, 3), 200, np.uint8)
    for present in (False, True):
        if present:
            cfg.resolve("n.sock").write_text("not a socket")
        lines = ScannerLines(["junk-1\n", "junk-2\n"])
        got: list[dict] = []
        src = FramesUntilScanned(blank, lines.done)
        with Gate(cfg, got.append, source=src, pin_factory=MockFactory(), scanner=lines) as gate:
            gate.run()
        assert [e["decision"] for e in got] == ["deny", "deny"]
    assert cfg.resolve("n.sock").read_text() == "not a socket"


def _open_stream(port: int, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """An /events request from `source`; returns the socket and the first bytes answered."""
    c = socket.socket()
    c.bind((source, 0))
    c.settimeout(30)
    c.connect(("127.0.0.1", port))
    c.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        first = c.recv(200)
    except ConnectionResetError:  # refused before the answer could be read
        first = b""
    return c, first


def test_connections_over_the_caps_are_refused_and_take_no_thread(tmp_path, monkeypatch, caplog):
    """Before: every connection took a thread for as long as it read, without limit; a client
    holding streams by the hundred left the lane's kiosk (and the machine) without threads."""
    monkeypatch.setattr(screen_server, "MAX_PER_ADDRESS", 3)
    monkeypatch.setattr(screen_server, "MAX_CONNECTIONS", 5)
    # a stream closed by its page is found at the next write: a keepalive each second here
    monkeypatch.setattr(screen_server, "KEEPALIVE_S", 1.0)
    cfg = _cfg(tmp_path)
    with Screen(cfg) as screen, caplog.at_level(logging.WARNING, "edge.screen.server"):
        port = screen.httpd.server_address[1]
        base = _handler_threads()
        held = [_open_stream(port) for _ in range(3)]
        assert all(b" 200 " in first for _, first in held)
        extra, first = _open_stream(port)  # a fourth from the same address
        assert first == b"" or first.startswith(b"HTTP/1.0 503 ")
        extra.close()
        other = [_open_stream(port, "127.0.0.2") for _ in range(2)]  # another address: admitted
        assert all(b" 200 " in first for _, first in other)
        over, first = _open_stream(port, "127.0.0.3")  # five open in all: refused
        assert first == b"" or first.startswith(b"HTTP/1.0 503 ")
        over.close()
        assert _handler_threads() == base + 5
        assert screen.httpd.open_connections() == 5
        refusals = [r for r in caplog.records if "connection refused" in r.getMessage()]
        assert len(refusals) == 1  # once a minute, not once per connection
        for c, _ in held[:1] + other:
            c.close()
        _until("the closed streams free their slots", lambda: screen.httpd.open_connections() == 2)
        again, first = _open_stream(port)
        assert b" 200 " in first  # a slot is free again
        _send(cfg, json.dumps({**GOOD, "t": 7.0}).encode())
        _until("the screen still hears", lambda: getattr(screen.board.current, "t", 0) == 7.0)
        for c in [again] + [c for c, _ in held[1:]]:
            c.close()
