#!/usr/bin/env python3
"""Console and lane-screen figures (docs/CONSOLE.md): prints them, asserts nothing.

1. render: each console page, p50/p95 over N requests (a logged-in supervisor; uvicorn on
   loopback), with 20 lanes' heartbeats and 10,000 decisions in the feed and 100,000 records in
   the office audit log.
2. decision -> decisions page: a real gate (scanner input) at a lane, its `sync`, a real
   Mosquitto, the console's feed and the decisions page open in Chromium; from the decision's
   time (audit record) to the row arriving in the page (server-sent events).
3. relay -> lane screen: a real gate with a mock relay sends its notice to `edge-gate screen`;
   from the relay pulse to the words drawn in Chromium (requestAnimationFrame after the update).

    .venv/bin/python scripts/bench_console.py [--n 100] [--skip-browser]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import queue
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpiozero.pins.mock import MockFactory  # noqa: E402

from edge import config as config_mod  # noqa: E402
from edge import tickets as tk  # noqa: E402
from edge.console.app import build_app  # noqa: E402
from edge.console.feed import FleetFeed  # noqa: E402
from edge.gate.audit import AuditLog, AuditRecord  # noqa: E402
from tests.console_harness import (  # noqa: E402
    PASSWORD,
    USERS,
    NoFrames,
    Served,
    Syncs,
    add_users,
    chromium,
    make_park,
)


def wait_for_plain(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("the lane screen did not show the notice")
        time.sleep(0.005)


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of xs."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def show(name: str, ms: list[float]) -> None:
    print(
        f"  {name:<34} n={len(ms):>4}  p50 {statistics.median(ms):7.1f} ms  "
        f"p95 {pct(ms, 95):7.1f} ms  max {max(ms):7.1f} ms"
    )


def fill_feed(feed: FleetFeed, site: str, lanes: int, decisions: int) -> None:
    """20 lanes' heartbeats and their decisions, as the office's sync stores them."""
    now = time.time()
    heard = {
        f"lane{i}": {
            "fps": 14.8,
            "camera": "ok",
            "mode": "face-or-ticket",
            "last_decision_t": now,
            "clock_offset": 0.01,
            "outbox": 0,
            "age_s": 0.5,
            "state": "ok",
        }  # fmt: skip
        for i in range(1, lanes + 1)
    }
    reasons = ["ok", "already_used", "presentation_attack", "revoked", "not_enrolled"]
    rows = []
    for k in range(decisions):
        lane = f"lane{k % lanes + 1}"
        rows.append({"lane": lane, "seq": k, "t": now - decisions + k, "gate": lane,
                     "kind": "decision", "decision": "grant" if k % 3 else "deny",
                     "via": "ticket", "subject": f"T-{k:06d}",
                     "reason": reasons[k % len(reasons)]})  # fmt: skip
    feed.add_rows(heard, rows)


def fill_audit(cfg: config_mod.Config, n: int) -> None:
    with AuditLog(cfg.resolve(cfg.audit.path)) as a, a.transaction():
        t0 = time.time() - n
        for k in range(n):
            a.record(AuditRecord(t0 + k, "office", "console", subject=f"P-{k:08x}",
                                 reason="login", detail="by sam: logged in"))  # fmt: skip


def session(base: str, user: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    html = op.open(base + "/login").read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    form = {"user": user, "password": PASSWORD, "csrf": token, "next": "/lanes"}
    op.open(base + "/login", urllib.parse.urlencode(form).encode()).read()
    return op


def bench_render(root: Path, n: int) -> None:
    from edge.lab.broker import free_port

    park = make_park(root, f"mqtt://127.0.0.1:{free_port()}")  # nothing listens: feed filled here
    cfg = park.office_cfg
    add_users(cfg)
    print("render: filling 100,000 audit records ...", flush=True)
    fill_audit(cfg, 100_000)
    feed = FleetFeed(config_mod.override(cfg, fleet={"broker": ""}))
    feed.site, feed.enabled = cfg.fleet.site, True
    feed.start = lambda: feed  # filled here, not from a broker
    fill_feed(feed, cfg.fleet.site, 20, 10_000)
    with Served(build_app(cfg, feed)) as srv:
        op = session(srv.url, "sam")
        print(f"render: {n} requests per page, 20 lanes, 10,000 decisions, 100,000 audit records")
        pages = ("/lanes", "/decisions", "/decisions?lane=lane7&reason=already_used",
                 "/people", "/tickets", "/audit", "/audit?before=50000", "/enroll")  # fmt: skip
        for path in pages:
            ms = []
            for _ in range(n):
                t = time.perf_counter()
                body = op.open(srv.url + path).read()
                ms.append(1000 * (time.perf_counter() - t))
            assert len(body) > 500, path
            show("GET " + path, ms)


def bench_live(root: Path, n: int) -> None:
    from edge.gate.daemon import Gate
    from edge.lab.broker import Mosquitto
    from edge.screen.server import Screen

    with Mosquitto(root / "mosquitto", users=USERS) as broker:
        park = make_park(root / "live", broker.url)
        add_users(park.office_cfg)
        syncs = Syncs(park).start()
        lines: queue.Queue[str | None] = queue.Queue()
        cfg = park.cfg(1)
        pulses: list[float] = []
        try:
            with (
                Served(build_app(park.office_cfg)) as srv,
                Screen(cfg) as screen,
                chromium() as browser,
                Gate(
                    cfg, source=NoFrames(), scanner=iter(lines.get, None), pin_factory=MockFactory()
                ) as gate,  # fmt: skip
            ):
                pulse = gate.relay.pulse

                def stamped(*a, **kw):
                    pulses.append(time.time())
                    return pulse(*a, **kw)

                gate.relay.pulse = stamped
                ctx = browser.new_context(bypass_csp=True)
                deck = ctx.new_page()
                deck.goto(srv.url + "/login")
                deck.fill("#user", "stu")
                deck.fill("#password", PASSWORD)
                with deck.expect_navigation():
                    deck.click("#login")
                deck.goto(srv.url + "/decisions?lane=lane1")
                lane_screen = ctx.new_page()
                lane_screen.goto(screen.url)
                lane_screen.locator("body.idle[data-live='1']").wait_for()
                to_page, to_screen = [], []
                for k in range(n):
                    tid = f"T-BENCH-{k:04d}"
                    now = int(time.time())
                    t = tk.Ticket(tid, "day", now - 60, now + 3600, tk.Kind.ONE_TIME, 1)
                    lines.put(tk.sign(t, tk.load_private(park.priv)))
                    got = []
                    while not got:
                        got = gate.process(None)
                        time.sleep(0.002)
                    for d in got:
                        gate.act(d)
                    row = deck.locator("#decisions tr[data-arrived]", has_text=tid)
                    row.first.wait_for(timeout=30_000)
                    arrived = float(row.first.get_attribute("data-arrived")) / 1000
                    to_page.append(1000 * (arrived - float(row.first.get_attribute("data-t"))))
                    wait_for_plain(
                        lambda k=k: (lane_screen.evaluate("window.egShown && window.egShown.seq")
                                     or 0) >= k + 1, 10)  # fmt: skip
                    shown = lane_screen.evaluate("window.egShown.shown") / 1000
                    to_screen.append(1000 * (shown - pulses[-1]))
                    time.sleep(0.3)
                print(f"live: {n} ticket grants at a lane (real gate, sync, Mosquitto, Chromium)")
                show("decision -> decisions page", to_page)
                show("relay pulse -> lane screen drawn", to_screen)
        finally:
            lines.put(None)
            syncs.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="requests per page (render)")
    ap.add_argument("--live-n", type=int, default=30, help="decisions for the live figures")
    ap.add_argument("--skip-browser", action="store_true", help="render figures only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as d:
        bench_render(Path(d) / "render", args.n)
        if not args.skip_browser:
            bench_live(Path(d), args.live_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
