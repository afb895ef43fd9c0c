"""Bad input on the pretix path: junk codes at the lane, a damaged pretix folder, and a "shop"
that answers junk to `edge-gate pretix sync`. Each gets a refusal or one `edge-gate: error`
line with the fix; the folder keeps its last good data (a revoked ticket stays refused), and no
check-in waiting for upload is lost.

The junk shop is a small server on a free loopback port speaking just enough of pretix's API;
each test replaces one of its answers by junk (a real pretix: tests/test_pretix_real.py).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import socketserver
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.config import PROJECT_ROOT
from edge.pretix import api
from edge.pretix.api import PretixClient, PretixUnreachable
from edge.tickets import pretix_offline as po
from edge.tickets.ledger import init_ledger

from .pretix_helpers import Shop

INTERNAL = "internal error"
ORG, EVENT, LIST = "org", "gatenight", 7
Answer = bytes | Callable[[socket.socket], None]


def http(status: int, body: Any = b"", ctype: str = "application/json", head: str = "") -> bytes:
    """One whole HTTP answer; a body that is not bytes is sent as JSON."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(raw)}\r\n"
        f"Connection: close\r\n{head}\r\n"
    ).encode() + raw


def page(results: list, nxt: Any = None) -> bytes:
    return http(200, {"count": len(results), "next": nxt, "previous": None, "results": results})


class JunkShop:
    """pretix's answers for one event, by resource; `junk[resource]` replaces one of them."""

    def __init__(self, shop: Shop, tls: tuple[Path, Path] | None = None):
        self.shop = shop
        self.junk: dict[str, Answer] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(65537).decode("latin-1").split()
                if len(line) < 2:
                    return
                headers: dict[str, str] = {}
                while (h := self.rfile.readline(65537).decode("latin-1").strip()) != "":
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = self.rfile.read(int(headers.get("content-length", "0")))
                outer.seen.append((line[0], line[1], headers, body))
                answer = outer.answer(line[0], line[1].split("?")[0])
                try:
                    if callable(answer):
                        answer(self.connection)
                    else:
                        self.wfile.write(answer)
                except OSError:  # the lane gave up on it: what these tests want
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def resource(self, method: str, path: str) -> str:
        ev = f"/api/v1/organizers/{ORG}/events/{EVENT}/"
        if path == f"/api/v1/organizers/{ORG}/checkinrpc/redeem/":
            return "redeem"
        if path.endswith("/failed_checkins/"):
            return "failed_checkins"
        if path == ev:
            return "event"
        return path[len(ev) :].strip("/") if path.startswith(ev) else path

    def answer(self, method: str, path: str) -> Answer:
        name = self.resource(method, path)
        if name in self.junk:
            return self.junk[name]
        s, when = self.shop, "2026-01-01T00:00:00Z"
        good: dict[str, bytes] = {
            "event": http(200, json.loads((s.root / "event.json").read_text())),
            "checkinlists": page([s.checkin_list]),
            "items": page([{"id": 1}]),
            "revokedsecrets": page(
                [{"id": i, "secret": x, "created": when} for i, x in enumerate(s.revoked, 1)]
            ),
            "blockedsecrets": page(
                [
                    {"id": i, "secret": x, "updated": when, "blocked": True}
                    for i, x in enumerate(s.blocked, 1)
                ]
            ),
            "redeem": http(201, {"status": "ok"}),
            "failed_checkins": http(201, {"id": 1}),
        }
        return good.get(name, http(404, {"detail": "Not found."}))

    def posts(self, name: str) -> list[dict]:
        return [
            json.loads(b)
            for m, p, _h, b in self.seen
            if m == "POST" and self.resource(m, p.split("?")[0]) == name
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def junk_shop(tmp_path):
    shop = Shop(tmp_path / "shop")
    shop.write()
    server = JunkShop(shop)
    yield server
    server.close()


def lane(tmp_path: Path, url: str) -> Path:
    """A lane's gate.toml for the shop at `url`, its ledger created; returns the config path."""
    token = tmp_path / "pretix.token"
    token.write_text("secret-token-abc\n")
    os.chmod(token, 0o600)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        f'[gate]\nid = "lane-1"\n[tickets]\nledger = "{tmp_path / "ledger.db"}"\n[pretix]\n'
        f'dir = "{tmp_path / "px"}"\nurl = "{url}"\norganizer = "{ORG}"\nevent = "{EVENT}"\n'
        f'checkin_list = {LIST}\ntoken_file = "{token}"\n'
    )
    init_ledger(tmp_path / "ledger.db")
    return cfg


def sync(capsys, cfg: Path) -> dict:
    """`pretix sync --once --json`: its report; never an internal error."""
    capsys.readouterr()
    rc = main(["pretix", "sync", "--config", str(cfg), "--once", "--json"])
    out, err = capsys.readouterr()
    assert INTERNAL not in err and "Traceback" not in err, err
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == (0 if report["reached"] else 1), (rc, report)
    return report


def scan(capsys, cfg: Path, secret: str, redeem: bool = False) -> dict:
    capsys.readouterr()
    main(["ticket", "verify", "--config", str(cfg), *(["--redeem"] if redeem else []), secret])
    out, err = capsys.readouterr()
    assert INTERNAL not in err, err
    return json.loads(out.strip().splitlines()[-1])


def pending(cfg: Path) -> list[tuple[str, dict]]:
    db = sqlite3.connect(cfg.parent / "ledger.db")
    try:
        rows = db.execute("SELECT kind, body FROM upload_outbox ORDER BY id").fetchall()
    finally:
        db.close()
    return [(k, json.loads(b)["body"]) for k, b in rows]


# --- a shop that answers junk to `pretix sync` ---------------------------------------------------


def _trickle(sock: socket.socket) -> None:
    """Headers, then one byte of the body at a time, for ever (until the lane hangs up).

    A byte every 0.02 s: far inside the client's 1 s read timeout however loaded the machine,
    so only the whole answer's deadline can end the read."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n")
    while True:
        sock.sendall(b" ")
        time.sleep(0.02)


def _trickle_head(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    while True:
        sock.sendall(b"X")
        time.sleep(0.02)


PAGE_JUNK: dict[str, bytes] = {
    "html_200": http(200, b"<html><body>Welcome to the hotel WiFi</body></html>", "text/html"),
    "empty_object": http(200, {}),
    "list": http(200, []),
    "results_number": http(200, {"results": 5, "next": None}),
    "results_text": http(200, {"results": "abc", "next": None}),
    "next_number": http(200, {"results": [], "next": 5}),
    "first_not_object": http(200, {"results": [5, "x"], "next": None}),
    "nested_too_deep": http(200, b"[" * 100_000),
    "long_number": http(200, b'{"results": [' + b"9" * 5000 + b'], "next": null}'),
    "not_utf8": http(200, b'{"results": ["\xff\xfe"], "next": null}'),
    "html_500": http(500, b"<h1>Internal Server Error</h1>", "text/html"),
    "status_line_junk": b"HELLO THERE\r\n\r\n",
    "truncated": b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"results": [',
    "header_flood": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n{}",
    "header_line_huge": b"HTTP/1.1 200 OK\r\nX-A: " + b"b" * 70_000 + b"\r\n\r\n{}",
    "redirect_away": http(302, b"", head="Location: http://127.0.0.2:9/login\r\n"),
    "unauthorised_html": http(401, b"<html>login</html>", "text/html"),
}


@pytest.mark.parametrize("resource", ["revokedsecrets", "blockedsecrets", "checkinlists"])
@pytest.mark.parametrize("junk", sorted(PAGE_JUNK))
def test_junk_answers_keep_the_folder_and_a_revoked_ticket_refused(
    junk_shop, tmp_path, capsys, resource, junk
):
    """Before: a page that was not a page (HTML, {}, results not a list) was read as "no
    revoked secrets" (a full download then cleared the list: revoked tickets valid again), or
    crashed sync (next or results of the wrong type, a status line or headers that are not
    HTTP, a body cut short, nesting too deep)."""
    shop = junk_shop.shop
    revoked, blocked, good = shop.secret("Revoked01"), shop.secret("Blocked01"), shop.secret("Ok1")
    shop.revoked, shop.blocked = [revoked], [blocked]
    cfg = lane(tmp_path, junk_shop.url)
    assert sync(capsys, cfg)["reached"]
    folder = tmp_path / "px"
    before = {p.name: p.read_bytes() for p in folder.glob("*.json") if p.name != po.SYNC_STATE}
    (folder / po.SYNC_STATE).unlink()  # the next download is a full one
    junk_shop.junk[resource] = PAGE_JUNK[junk]
    report = sync(capsys, cfg)
    assert not report["reached"] and report["error"]
    after = {p.name: p.read_bytes() for p in folder.glob("*.json") if p.name != po.SYNC_STATE}
    assert after == before
    assert scan(capsys, cfg, revoked)["reason"] == "revoked"
    assert scan(capsys, cfg, blocked)["reason"] == "blocked"
    assert scan(capsys, cfg, good)["valid"] is True


def test_a_redirect_is_not_followed_and_never_carries_the_token(junk_shop, tmp_path, capsys):
    """Before: urllib followed a redirect to another host with the Authorization header (the
    shop's token sent to whoever the redirect named)."""
    other = JunkShop(junk_shop.shop)
    try:
        where = other.url + f"/api/v1/organizers/{ORG}/events/{EVENT}/"
        junk_shop.junk["event"] = http(301, b"", head=f"Location: {where}\r\n")
        cfg = lane(tmp_path, junk_shop.url)
        report = sync(capsys, cfg)
        assert not report["reached"]
        assert "redirect" in report["error"] and "pretix.url" in report["error"]
        assert other.seen == []  # nothing went there, least of all the token
        assert not (tmp_path / "px" / "event.json").exists()
    finally:
        other.close()


@pytest.mark.parametrize("junk", [_trickle, _trickle_head])
def test_a_shop_that_trickles_its_answer_is_given_up_on(junk_shop, junk):
    """Before: each read had a timeout, the answer none: a server sending a byte every few
    seconds held `pretix sync` (and its uploads) for ever."""
    junk_shop.junk["event"] = junk
    _given_up_on(PretixClient(junk_shop.url, "secret-token-abc", timeout_s=1.0))


def _given_up_on(client: PretixClient) -> None:
    """The client's GET of the event ends with PretixUnreachable, saying it took too long."""
    result: list[BaseException | None] = []

    def call() -> None:
        try:
            client.get(f"organizers/{ORG}/events/{EVENT}/")
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - what it raised is the assertion
            result.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the request never ended"
    assert isinstance(result[0], PretixUnreachable), result
    assert "no complete answer within" in str(result[0])


def test_over_https_the_shop_is_reached_and_a_trickle_still_given_up_on(tmp_path, capsys):
    """The deadline and the refusal of redirects hold for HTTPS too ([pretix] tls_ca_file)."""
    from .test_fleet_attacks import _self_signed

    cert, key = _self_signed(tmp_path)
    shop = Shop(tmp_path / "shop")
    shop.write()
    server = JunkShop(shop, (cert, key))
    try:
        cfg = lane(tmp_path, server.url)
        with open(cfg, "a") as f:
            f.write(f'tls_ca_file = "{cert}"\n')
        assert sync(capsys, cfg)["reached"]
        server.junk["event"] = _trickle
        _given_up_on(PretixClient(server.url, "tok", ca_file=str(cert), timeout_s=1.0))
        other = PretixClient(server.url, "secret-token-abc", timeout_s=5.0)  # the system's CAs
        with pytest.raises(PretixUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            other.get(f"organizers/{ORG}/events/{EVENT}/")
    finally:
        server.close()


def test_an_answer_larger_than_any_page_is_not_read_whole(junk_shop):
    """Before: the whole body was read into memory, however large."""
    sent = []

    def huge(sock: socket.socket) -> None:
        n = api.MAX_BODY + (8 << 20)
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
        chunk, total = b" " * 65536, 0
        try:
            while total < n:
                sock.sendall(chunk)
                total += len(chunk)
        finally:
            sent.append(total)

    junk_shop.junk["event"] = huge
    client = PretixClient(junk_shop.url, "secret-token-abc")
    with pytest.raises(PretixUnreachable, match="larger than"):
        client.get(f"organizers/{ORG}/events/{EVENT}/")


@pytest.mark.parametrize(
    "answer",
    [{"api_token": 5}, {"api_token": ["a"]}, {"api_token": "two words"}, [1, 2], "<html>"],
)
def test_init_device_with_a_junk_answer_is_one_error_line(junk_shop, tmp_path, capsys, answer):
    """Before: a device token that was not a text crashed `pretix init-device` (TypeError) after
    the one-time token was spent; one with a space in it was written and refused later."""
    junk_shop.junk["/api/v1/device/initialize"] = http(200, answer)
    token = tmp_path / "device.token"
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        f'[pretix]\ndir = "px"\nurl = "{junk_shop.url}"\norganizer = "{ORG}"\n'
        f'event = "{EVENT}"\ncheckin_list = {LIST}\ntoken_file = "{token}"\nauth = "device"\n'
    )
    rc = main(["pretix", "init-device", "--config", str(cfg), "--init-token", "kkk"])
    err = capsys.readouterr().err
    assert rc == 2 and INTERNAL not in err, err
    assert "without a usable device token" in err and "create a new device" in err
    assert not token.exists()


# --- check-ins waiting for upload are never lost -------------------------------------------------


UPLOAD_JUNK: dict[str, bytes] = {
    "html_404": http(404, b"<html>Not Found</html>", "text/html"),
    "html_200": http(200, b"<html>proxy says hello</html>", "text/html"),
    "redirect": http(302, b"", head="Location: /login\r\n"),
    "html_400": http(400, b"<html>Bad Request</html>", "text/html"),
    "status_line_junk": b"HELLO\r\n\r\n",
    "truncated": b"HTTP/1.1 201 Created\r\nContent-Length: 500\r\n\r\n{",
    "nested_too_deep": http(201, b"[" * 100_000),
    "html_503": http(503, b"<html>down</html>", "text/html"),
}


@pytest.mark.parametrize("junk", sorted(UPLOAD_JUNK))
def test_an_upload_answered_with_junk_keeps_the_checkins(junk_shop, tmp_path, capsys, junk):
    """Before: a failed check-in answered 200 by a proxy page, or redirected (urllib then sent
    a GET to the login page, 200), or an HTML 404 of the wrong server, was taken as pretix's
    answer and deleted from the outbox; a status line that was not HTTP crashed sync."""
    shop = junk_shop.shop
    cfg = lane(tmp_path, junk_shop.url)
    assert sync(capsys, cfg)["reached"]
    good = shop.secret("Entry0001")
    assert scan(capsys, cfg, "junk-code", redeem=True)["valid"] is False
    assert scan(capsys, cfg, good, redeem=True)["valid"] is True
    queued = pending(cfg)
    assert [k for k, _ in queued] == ["pretix.failed", "pretix.redeem"]
    junk_shop.junk["redeem"] = junk_shop.junk["failed_checkins"] = UPLOAD_JUNK[junk]
    report = sync(capsys, cfg)
    assert report["upload_pending"] == 2 and report["uploaded"] == 0
    assert pending(cfg) == queued
    del junk_shop.junk["redeem"], junk_shop.junk["failed_checkins"]
    report = sync(capsys, cfg)  # the shop is back: both arrive, with their own nonces
    assert report["reached"] and report["upload_pending"] == 0
    nonces = [b["nonce"] for _, b in queued]
    assert junk_shop.posts("failed_checkins")[-1]["nonce"] == nonces[0]
    assert junk_shop.posts("redeem")[-1]["nonce"] == nonces[1]


def test_pretix_own_refusal_is_still_dropped(junk_shop, tmp_path, capsys):
    """pretix's own 400 (JSON) cannot change on a later try: dropped, as pretixSCAN does."""
    cfg = lane(tmp_path, junk_shop.url)
    assert sync(capsys, cfg)["reached"]
    assert scan(capsys, cfg, "junk-code", redeem=True)["valid"] is False
    junk_shop.junk["failed_checkins"] = http(400, {"raw_barcode": ["too long"]})
    assert sync(capsys, cfg)["upload_pending"] == 0


@pytest.mark.parametrize(
    "row",
    ["[]", '{"body": 5}', '{"list": 7}', '{"body": {}, "list": "x", "event": 1}', "5"],
)
def test_a_damaged_outbox_row_does_not_stop_the_others(junk_shop, tmp_path, capsys, row):
    """Before: a row of the wrong shape (KeyError, TypeError) crashed every round of sync:
    no check-in after it was ever sent, and no download happened either."""
    cfg = lane(tmp_path, junk_shop.url)
    db = sqlite3.connect(tmp_path / "ledger.db")
    with db:
        db.execute(
            "INSERT INTO upload_outbox (t, kind, body) VALUES (?, ?, ?)",
            (time.time(), "pretix.failed", row),
        )
    db.close()
    assert sync(capsys, cfg)["reached"]  # the folder is filled despite it
    assert scan(capsys, cfg, "junk-code", redeem=True)["valid"] is False
    report = sync(capsys, cfg)
    assert report["reached"] and report["upload_pending"] == 0
    assert len(junk_shop.posts("failed_checkins")) == 1


@pytest.mark.parametrize(
    "state",
    [
        '{"pulled_at": "yesterday", "revoked_since": 5, "last_attempt": [1]}',
        '{"pulled_at": NaN}',
        '{"pulled_at": Infinity}',
        "[" * 100_000,
        "[]",
    ],
)
def test_a_damaged_sync_state_costs_a_full_download_not_a_crash(tmp_path, capsys, state):
    """Before: `pretix sync --once` with the shop unreachable crashed on a pulled_at that was
    not a number, and the lane's heartbeat carried a NaN the office refuses."""
    from edge import config as config_mod
    from edge.tickets.pretix_desk import pretix_heartbeat

    with socket.socket() as s:  # a port nobody listens on: the shop is down
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = lane(tmp_path, url)
    shop = Shop(tmp_path / "px")
    shop.write()
    (tmp_path / "px" / po.SYNC_STATE).write_text(state)
    report = sync(capsys, cfg)
    assert not report["reached"] and "unreachable" in report["error"]
    assert report["pulled_at"] is None and report["age_s"] is None
    hb = pretix_heartbeat(config_mod.load(cfg), time.time())
    json.dumps(hb, allow_nan=False)  # what the fleet can carry
    assert hb["data_time"] is not None  # the files' own time: the data is there


# --- a damaged pretix folder ----------------------------------------------------------------------


FOLDER_JUNK = {
    "nested_too_deep": "[" * 100_000,
    "long_number": '{"id": 7, "x": ' + "1" * 5000 + "}",
    "not_utf8": '{"id": 7, "name": "\udcff"}',
}


@pytest.mark.parametrize("name", ["event.json", "checkinlist.json", "revokedsecrets.json",
                                  "blockedsecrets.json", "items.json"])  # fmt: skip
@pytest.mark.parametrize("junk", sorted(FOLDER_JUNK))
def test_a_damaged_folder_file_is_one_error_line(tmp_path, capsys, name, junk):
    """Before: a file nested too deep (RecursionError) or holding a number too long to convert
    (ValueError) was an internal error instead of the file's name and the fix."""
    shop = Shop(tmp_path / "px")
    folder = shop.write()
    (folder / name).write_bytes(FOLDER_JUNK[junk].encode("utf-8", "surrogateescape"))
    rc = main(["ticket", "verify", "--pretix-dir", str(folder), shop.secret("Seed00001")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert INTERNAL not in err and "Traceback" not in err
    assert f"pretix data {folder / name}" in err and "pretix sync" in err


def test_a_huge_folder_file_is_refused_without_reading_it(tmp_path):
    """Before: read whole into memory (a runaway or damaged file of gigabytes took the gate's
    memory); now refused with its name. Run with a memory limit, so before it fails cleanly."""
    shop = Shop(tmp_path / "px")
    folder = shop.write()
    with open(folder / "revokedsecrets.json", "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    limit = 2 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    p = subprocess.run(
        [sys.executable, "-m", "edge.cli", "ticket", "verify", "--pretix-dir", str(folder),
         shop.secret("Seed00002")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, preexec_fn=cap,
        env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "larger than 64 MiB" in p.stderr and "revokedsecrets.json" in p.stderr


def test_sync_refuses_to_write_a_file_the_lane_would_refuse(
    junk_shop, tmp_path, capsys, monkeypatch
):
    """The folder is all or nothing: a download the gate could not read replaces nothing."""
    shop = junk_shop.shop
    cfg = lane(tmp_path, junk_shop.url)
    assert sync(capsys, cfg)["reached"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "px").glob("*.json")}
    shop.revoked = [shop.secret(f"R{i:08d}") for i in range(40)]
    monkeypatch.setattr(po, "MAX_FILE", 4096)
    report = sync(capsys, cfg)
    assert not report["reached"] and "revokedsecrets.json would be larger" in report["error"]
    after = {p.name: p.read_bytes() for p in (tmp_path / "px").glob("*.json")}
    assert {k: v for k, v in after.items() if k != po.SYNC_STATE} == {
        k: v for k, v in before.items() if k != po.SYNC_STATE
    }


# --- junk codes at the lane ----------------------------------------------------------------------


def test_junk_codes_are_refused_and_queued_for_pretix(tmp_path, capsys):
    """Random bytes, a huge text, non-UTF-8 (as argv carries it), cut-short base64, the wrong
    key: each is `invalid` for pretix, refused, and its failed check-in queued."""
    import base64
    import random

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    shop = Shop(tmp_path / "px")
    folder = shop.write()
    good = shop.secret("Seed00003")
    rng = random.Random(7)
    codes = [
        bytes(rng.randrange(256) for _ in range(120)).decode("latin-1"),
        "A" * 100_000,
        b"\xff\xfeabc".decode("utf-8", "surrogateescape"),
        good[: len(good) // 2],
        good[:-1],
        Shop(tmp_path / "other", keys=[Ed25519PrivateKey.generate()]).secret("Seed00003"),
        base64.b64encode(b"\x01\x00\x05\x00\x40" + b"x" * 69).decode()[::-1],
        "\x00" * 50,
    ]
    ledger = tmp_path / "l.db"
    init_ledger(ledger)
    for code in codes:
        rc = main(["ticket", "verify", "--pretix-dir", str(folder), "--db", str(ledger),
                   "--redeem", "--json", code])  # fmt: skip
        out, err = capsys.readouterr()
        assert rc == 1 and INTERNAL not in err, (code[:40], err)
        res = json.loads(out.strip().splitlines()[-1])
        assert res["valid"] is False and res["pretix_reason"] == "invalid", res
    db = sqlite3.connect(ledger)
    rows = [json.loads(b)["body"] for (b,) in db.execute("SELECT body FROM upload_outbox")]
    db.close()
    assert len(rows) == len(codes)
    assert all(r["error_reason"] == "invalid" and len(r["raw_barcode"]) <= 1024 for r in rows)


def test_a_folder_sync_cannot_write_is_one_error_not_a_crash(junk_shop, tmp_path, capsys):
    """Before: an OSError while replacing a file of the folder ended `pretix sync` (exit 70);
    as a service, it stopped uploading check-ins too."""
    cfg = lane(tmp_path, junk_shop.url)
    (tmp_path / "px" / "event.json").mkdir(parents=True)  # a file turned into a folder
    report = sync(capsys, cfg)
    assert not report["reached"] and "cannot write" in report["error"]
    assert "event.json" in report["error"]


def test_junk_qr_codes_at_the_camera_are_denied_and_queued(tmp_path):
    """The gate on pretix codes it cannot use, held up to the camera: a QR of random bytes, of
    control characters, of 2,000 characters, a secret cut short, one of another shop: each is
    one deny with pretix's word `invalid`, queued for pretix; the gate runs to the end."""
    import random

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from gpiozero.pins.mock import MockFactory

    from edge.gate.daemon import Gate

    from .helpers import ListSource, make_config
    from .test_pretix_gate import BLANK, qr_frame

    shop = Shop(tmp_path / "px")
    shop.write()
    cfg = make_config(tmp_path, f'[vision]\nface_enabled = false\n[pretix]\ndir = "{shop.root}"\n')
    rng = random.Random(11)
    good = shop.secret("Camera002")
    codes = [
        "".join(chr(rng.randrange(32, 256)) for _ in range(90)),
        "\x01\x02\x1b[2J" + "x" * 20,
        "Z" * 2000,
        good[:-8],
        Shop(tmp_path / "o", keys=[Ed25519PrivateKey.generate()]).secret("Camera002"),
    ]
    frames = [BLANK]
    for code in codes:
        frames += [qr_frame(code)] * 3 + [BLANK] * 3
    got: list[dict] = []
    with Gate(cfg, got.append, source=ListSource(frames), pin_factory=MockFactory()) as gate:
        assert gate.run() == 0
    assert [(e["decision"], e.get("pretix_reason")) for e in got] == [("deny", "invalid")] * len(
        codes
    ), got
    rows = pending(tmp_path / "gate.toml")
    assert [b["error_reason"] for _, b in rows] == ["invalid"] * len(codes)
    assert all(len(b["raw_barcode"]) <= 1024 for _, b in rows)


@pytest.mark.traceback_expected
def test_a_round_failing_as_no_step_foresaw_is_logged_and_the_next_round_runs(
    junk_shop, tmp_path, monkeypatch, caplog
):
    """Before: an exception no step expected ended `pretix sync`'s loop (the process, until
    systemd started it again); now the round is logged with its traceback once, the link is
    down in the state the gate reads, and the next round reaches the shop."""
    from edge import config as config_mod
    from edge.pretix import sync as px_sync

    cfg = config_mod.load(lane(tmp_path, junk_shop.url))
    cfg = config_mod.override(cfg, pretix={"sync_every_s": 0.2})
    rounds: list[str] = []
    real_pull = px_sync.PretixSync.pull

    def pull(self):
        rounds.append("pull")
        if len(rounds) <= 2:
            raise KeyError("a field no step expected")
        return real_pull(self)

    monkeypatch.setattr(px_sync.PretixSync, "pull", pull)
    sync_ = px_sync.PretixSync(cfg)
    t = threading.Thread(target=sync_.run, daemon=True)
    with caplog.at_level(logging.ERROR, "edge.pretix.sync"):
        t.start()
        end = time.monotonic() + 60
        while not sync_.reachable:
            assert t.is_alive(), "the loop ended"
            assert time.monotonic() < end, "no round reached the shop"
            time.sleep(0.05)
        sync_.stop.set()
        t.join(30)
    failed = [r for r in caplog.records if "round failed" in r.getMessage()]
    # said once with its traceback; the same error again within the minute is counted
    assert len(failed) == 1 and "KeyError" in failed[0].getMessage() and failed[0].exc_info
    assert rounds.count("pull") >= 3
    assert (tmp_path / "px" / "event.json").exists()  # the third round wrote the folder
    state = json.loads((tmp_path / "px" / po.SYNC_STATE).read_text())
    assert state["last_error"] == ""


FLAGS = ["all_products", "allow_multiple_entries", "allow_entry_after_exit"]


@pytest.mark.parametrize("key", FLAGS)
@pytest.mark.parametrize("value", ["false", 0, 1, [], {}])
def test_a_check_in_list_setting_that_is_not_a_boolean_is_refused(tmp_path, key, value):
    """A hand-written or damaged checkinlist.json: the string "false" read as true (every
    product admitted, or entries without limit). Anything but true, false or null is refused."""
    obj = {"id": 7, "name": "Main gate", "limit_products": [], key: value}
    with pytest.raises(po.ConfigError, match=f"{key} is"):
        po.parse_checkin_list(obj, tmp_path / "checkinlist.json")
    for ok in (True, False):
        assert getattr(po.parse_checkin_list({**obj, key: ok}, tmp_path), key) is ok
