"""`edge-gate screen`: the lane's visitor screen, a process apart from the gate.

It binds the Unix datagram socket the gate sends notices to (`[screen] socket`), serves one
full-screen page on loopback (`[screen] listen`) that a kiosk browser shows, and pushes each
notice to that page over server-sent events. It also plays the optional buzzer/LED pattern
(`[signal]`). Standard library only: the lane needs no web framework. A name reaches the page
only when the park turned `screen.show_names` on, whatever the notice carries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge import config as config_mod
from edge.errors import ConfigError, EdgeGateError
from edge.gate.notice_socket import path_problem
from edge.gate.notices import Notice
from edge.netcaps import BUSY, ConnectionCaps
from edge.screen.texts import IDLE, NAME_GREETING, VISITOR_TEXTS

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
KEEPALIVE_S = 15.0
# A page connection that sends no request, or takes no data, for this long is closed: a client
# that connects and never reads must not hold a thread of the screen forever.
CLIENT_TIMEOUT_S = 30.0
# Page connections served at once, and from one address: a page holds one event stream, so a
# client (or a scan of the network) that opens streams by the hundred is refused with 503 instead
# of taking a thread each until the lane's own kiosk cannot connect.
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 8


@dataclass(frozen=True)
class Shown:
    """One notice as the page gets it: what to say, how to colour it, when it arrived."""

    seq: int
    notice: str
    decision: str | None
    reason: str
    lane: str
    name: str | None
    t: float  # the gate's time of the notice
    received: float  # this process's wall clock when the datagram arrived

    def to_json(self) -> dict[str, Any]:
        """The JSON the page script reads."""
        return {
            "seq": self.seq,
            "notice": self.notice,
            "decision": self.decision,
            "reason": self.reason,
            "lane": self.lane,
            "name": self.name,
            "t": self.t,
            "received": self.received,
        }


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def parse_notice(data: bytes) -> dict[str, Any]:
    """Check one datagram against the notice contract (edge/gate/notices.py); ValueError if not.

    Whatever arrives on the socket ends here as a notice or a ValueError: nesting too deep,
    NaN, a time that is not a number, texts that are not strings."""
    try:
        d = Notice.from_json(json.loads(data, parse_constant=_no_constant)).to_json()
    except (TypeError, AttributeError) as e:
        raise ValueError(f"not a notice: {e}") from None
    except RecursionError:
        raise ValueError("not a notice: nested too deep") from None
    t = d.get("t")
    if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t):
        raise ValueError(f"not a notice: t {t!r} is not a time")
    for key in ("lane", "reason"):
        if not isinstance(d.get(key), str):
            raise ValueError(f"not a notice: {key} is not a text")
    if not isinstance(d.get("name"), str | None):
        raise ValueError("not a notice: name is not a text")
    return d


class Board:
    """The latest notice and a sequence number; page connections wait for it to move."""

    def __init__(self, show_names: bool):
        self.show_names = show_names
        self._cond = threading.Condition()
        self.current: Shown | None = None
        self.received = 0

    def put(self, d: dict[str, Any]) -> Shown:
        """Take a checked notice in; wake every page waiting."""
        name = d.get("name") if self.show_names and isinstance(d.get("name"), str) else None
        with self._cond:
            self.received += 1
            self.current = Shown(
                self.received,
                d["notice"],
                d.get("decision"),
                str(d.get("reason") or ""),
                str(d.get("lane") or ""),
                name,
                float(d.get("t") or 0.0),
                time.time(),
            )
            self._cond.notify_all()
            return self.current

    def wait_after(self, seq: int, timeout: float) -> Shown | None:
        """The notice after `seq`, or None after `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.received > seq, timeout)
            return self.current if self.received > seq else None


class Signal:
    """Buzzer and LEDs (`[signal]`): grant = green + one beep; refusal = red + two beeps."""

    def __init__(self, cfg: config_mod.SignalConfig, factory=None):
        self.devices: list[Any] = []
        self.buzzer = self.green = self.red = None
        if max(cfg.buzzer_pin, cfg.green_pin, cfg.red_pin) < 0:
            return
        # gpiozero loads only when a buzzer or LED is wired
        from gpiozero import LED, Buzzer

        from edge.gate.relay import make_pin_factory

        f = factory or make_pin_factory(cfg.pin_factory)
        if cfg.buzzer_pin >= 0:
            self.buzzer = Buzzer(cfg.buzzer_pin, pin_factory=f)
        if cfg.green_pin >= 0:
            self.green = LED(cfg.green_pin, pin_factory=f)
        if cfg.red_pin >= 0:
            self.red = LED(cfg.red_pin, pin_factory=f)
        self.devices = [d for d in (self.buzzer, self.green, self.red) if d is not None]

    def play(self, decision: str | None) -> None:
        """The pattern for one notice, in the background (guidance: silent)."""
        if decision == "grant":
            led, other, beeps = self.green, self.red, 1
        elif decision == "deny":
            led, other, beeps = self.red, self.green, 2
        else:
            return
        if other is not None:  # the previous decision's light, still on: never both at once
            other.off()
        if led is not None:
            led.blink(on_time=1.5, off_time=0.1, n=1, background=True)
        if self.buzzer is not None:
            self.buzzer.beep(on_time=0.12, off_time=0.12, n=beeps, background=True)

    def close(self) -> None:
        """Release the pins (driven off)."""
        for d in self.devices:
            d.close()


class Receiver:
    """Bind the socket the gate sends to, and feed the board (and the signal) from it."""

    def __init__(self, path: Path, board: Board, signal_: Signal | None = None):
        self.path = Path(path)
        self.board, self.signal = board, signal_
        self.refused = 0
        if (problem := path_problem(self.path)) is not None:
            raise problem
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(self.path)
            self.sock.bind(str(self.path))
        except OSError as e:  # e.g. a folder it may not write, a path too long for a socket
            self.sock.close()
            raise ConfigError(
                f"screen.socket {self.path}: {e.strerror or e}",
                "give the screen's service a writable folder (RuntimeDirectory=)",
            ) from None
        os.chmod(self.path, 0o660)  # the gate's group may send
        self.sock.settimeout(0.5)
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="screen-socket", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._take(data)
            except Exception as e:  # one datagram must never stop the screen hearing the next
                self.refused += 1
                log.error("screen notice failed error=%s", e)

    def _take(self, data: bytes) -> None:
        try:
            d = parse_notice(data)
        except ValueError as e:
            self.refused += 1
            log.warning("screen notice refused reason=%s", str(e)[:200])
            return
        shown = self.board.put(d)
        if self.signal is not None:
            try:
                self.signal.play(shown.decision)
            except Exception as e:  # a buzzer fault never stops the screen
                log.error("screen signal error=%s", e)

    def close(self) -> None:
        """Stop receiving and remove the socket file."""
        self.stopped = True
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket a previous screen left; refuse a path that is something else (a file is
    never deleted) or a socket another screen still listens on (it would stop hearing)."""
    if not os.path.lexists(path):
        return
    if not path.is_socket():
        raise ConfigError(
            f"screen.socket {path} exists and is not a socket; it is left as it is",
            "move that file away, or set [screen] socket to another path (the gate's too)",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except OSError:  # nobody is bound to it any more: a previous screen's
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ConfigError(
        f"screen.socket {path}: another screen is listening on it",
        "stop the other `edge-gate screen` (systemctl status edge-gate-screen), or give this "
        "one another [screen] socket",
    )


def page_config(cfg: config_mod.Config) -> dict[str, Any]:
    """What the page needs besides notices: languages, texts, idle text, how long to hold."""
    langs = [lang for lang in cfg.screen.languages if lang in config_mod.SCREEN_LANGUAGES] or ["en"]
    return {
        "languages": langs,
        "texts": {
            n: {lang: t.get(lang, t["en"]) for lang in langs} for n, t in VISITOR_TEXTS.items()
        },
        "idle": {lang: IDLE[lang] for lang in langs},
        "greeting": {lang: NAME_GREETING[lang] for lang in langs},
        "hold_s": cfg.screen.hold_s,
        "lane": cfg.fleet.lane or cfg.gate.id,
    }


def parse_listen(text: str) -> tuple[str, int]:
    """host:port (IPv6 in brackets), refusing anything else with the fix."""
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not port.isdigit()
        or not 0 <= int(port) < 65536
        or not host
        or not host.isprintable()  # a NUL or line end from a config file: no host name
        or " " in host
    ):
        raise ConfigError(f"listen address {text!r} is not host:port", "e.g. 127.0.0.1:8088")
    return host.strip("[]"), int(port)


def listen_failed(key: str, host: str, port: int, e: OSError) -> ConfigError:
    """Why a page cannot be served at host:port (the screen's, the console's), with the fix."""
    return ConfigError(
        f"cannot listen on {host}:{port}: {e.strerror or e}",
        "another program holds that port, or the address is not one of this machine's: stop "
        f"it, or choose a free one with --listen host:port (or {key} in the config)",
    )


def bind_listen(key: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket at host:port (IPv4 or IPv6), or the typed error saying why not."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:  # socket.gaierror too: a name that resolves to nothing
        raise listen_failed(key, host, port, e) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as every server does
        sock.bind((host, port))
        sock.listen()
    except OSError as e:
        sock.close()
        raise listen_failed(key, host, port, e) from None
    return sock


CSP = "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'"
STATIC = {
    "/screen.js": ("screen.js", "text/javascript; charset=utf-8"),
    "/screen.css": ("screen.css", "text/css; charset=utf-8"),
}


def make_handler(board: Board, page: dict[str, Any], stop: threading.Event):
    """The HTTP handler class: the page, its script and style, the event stream, the state."""
    html = (HERE / "static" / "screen.html").read_text(encoding="utf-8")
    html = html.replace("{{CONFIG}}", json.dumps(page, ensure_ascii=False).replace("<", "\\u003c"))
    html = html.replace("{{LANG}}", page["languages"][0])

    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-gate-screen"
        timeout = CLIENT_TIMEOUT_S  # each read and write of the connection

        def log_message(self, fmt: str, *args: Any) -> None:  # no access log
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except (ConnectionError, TimeoutError):  # the page went away or stopped reading
                self.close_connection = True

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, html.encode(), "text/html; charset=utf-8")
            elif path in STATIC:
                name, ctype = STATIC[path]
                self._send(200, (HERE / "static" / name).read_bytes(), ctype)
            elif path == "/state":
                cur = board.current.to_json() if board.current else None
                body = {"received": board.received, "current": cur}
                self._send(200, json.dumps(body).encode(), "application/json")
            elif path == "/events":
                self._events()
            else:
                self._send(404, b"not found", "text/plain")

        def _events(self) -> None:
            seq = board.received  # before the page can know it is connected: nothing missed
            cur = board.current  # a page (re)connecting still shows what is on now
            if cur is not None and time.time() - cur.received < page["hold_s"]:
                seq = cur.seq - 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            last = time.monotonic()
            try:
                self.wfile.write(b"retry: 500\n\n")
                self.wfile.flush()
                while not stop.is_set():
                    shown = board.wait_after(seq, 1.0)
                    if shown is not None:
                        seq = shown.seq
                        self.wfile.write(f"data: {json.dumps(shown.to_json())}\n\n".encode())
                        self.wfile.flush()
                        last = time.monotonic()
                    elif time.monotonic() - last > KEEPALIVE_S:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        last = time.monotonic()
            except (ConnectionError, TimeoutError):  # gone, or not reading: closed
                return

    return Handler


class _PageServer(ThreadingHTTPServer):
    """The page's server: a request that fails is one log line, never a traceback on stderr;
    connections over the caps are answered 503 at once and take no thread."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.caps = ConnectionCaps(
            MAX_CONNECTIONS,
            MAX_PER_ADDRESS,
            "screen page",
            "the lane's kiosk reconnects by itself",
            log,
        )
        super().__init__(*args, **kwargs)

    def open_connections(self) -> int:
        return self.caps.open_connections()

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        if not self.caps.take(host):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the slot is free again
            self.caps.give_back(host)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.caps.give_back(str(client_address[0]))

    def _refuse(self, request: socket.socket) -> None:
        """503 without reading the request (it may never come), then close: no thread taken."""
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(BUSY)
            request.shutdown(socket.SHUT_WR)
            request.setblocking(False)
            request.recv(65536)  # what has come of the request: closing on it would reset the 503
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        e = sys.exc_info()[1]
        log.error("screen page request failed error=%s: %s", type(e).__name__, e)


class Screen:
    """Socket receiver + page server, started together and stopped together."""

    def __init__(self, cfg: config_mod.Config, listen: str | None = None, signal_factory=None):
        if not cfg.screen.socket:
            raise ConfigError(
                f"{cfg.source_file or '<defaults>'}: screen.socket is empty",
                'set [screen] socket = "/run/edge-gate-screen/notices.sock" in the gate config',
            )
        host, port = parse_listen(listen or cfg.screen.listen)
        self.board = Board(cfg.screen.show_names)
        self.stop = threading.Event()
        self.signal = Signal(cfg.signal, signal_factory)
        self.receiver = Receiver(cfg.resolve(cfg.screen.socket), self.board, self.signal)
        handler = make_handler(self.board, page_config(cfg), self.stop)
        try:
            self.httpd = _PageServer((host, port), handler)
        except OSError as e:  # the port is taken, or the address is not this machine's
            self.receiver.close()
            self.signal.close()
            raise listen_failed("screen.listen", host, port, e) from None
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> Screen:
        """Serve in the background."""
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving, remove the socket, release the pins."""
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.receiver.close()
        self.signal.close()

    def __enter__(self) -> Screen:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def kiosk_command(browser: str, url: str) -> list[str]:
    """The browser full-screen on the page; under `cage` when there is no desktop session."""
    exe = shutil.which(browser) or browser
    cmd = [exe, "--kiosk", f"--app={url}", "--noerrdialogs", "--disable-infobars",
           "--incognito", "--no-first-run", "--check-for-update-interval=31536000"]  # fmt: skip
    if not (os.environ.get("WAYLAND_DISPLAY") or os.environ.get("DISPLAY")) and shutil.which(
        "cage"
    ):
        cmd = [shutil.which("cage") or "cage", "-s", "--", *cmd]
    return cmd


def run_screen(
    cfg: config_mod.Config, listen: str | None = None, kiosk: bool = False, browser: str = ""
) -> int:
    """`edge-gate screen`: serve until SIGTERM; with --kiosk, also the full-screen browser."""
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    with Screen(cfg, listen) as screen:
        print(f"edge-gate screen on {screen.url} (notices from {cfg.resolve(cfg.screen.socket)})")
        proc = None
        if kiosk:
            try:
                proc = subprocess.Popen(kiosk_command(browser or "chromium", screen.url))
            except OSError as e:
                raise EdgeGateError(
                    f"cannot start the kiosk browser {browser}: {e.strerror}",
                    "apt-get install chromium (and cage, without a desktop)",
                ) from None
        try:
            while not stop.wait(1.0):
                if proc is not None and proc.poll() is not None:
                    log.error("screen browser exited status=%s; restarting", proc.returncode)
                    proc = subprocess.Popen(kiosk_command(browser or "chromium", screen.url))
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
    return 0
