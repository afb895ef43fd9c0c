"""A park for the console's tests: a real Mosquitto, an office and two lanes with their `sync`,
the console served by uvicorn on a free loopback port, and Debian's Chromium through Playwright.

Browser tests skip with the reason where Chromium or Playwright is missing, and fail when
CI=true. Every wait is bounded polling for a condition; no timing is asserted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
from gpiozero.pins.mock import MockFactory

from edge import config as config_mod
from edge import tickets as tk
from edge.config import PROJECT_ROOT
from edge.fleet.sync import Sync
from edge.gate.daemon import Gate
from edge.lab.broker import MISSING, free_port, mosquitto_binary
from edge.lab.workspace import Member, roster_all, write_member

CHROMIUM = os.environ.get("EDGE_CHROMIUM", "/usr/bin/chromium")
USERS = {n: f"pw-{n}" for n in ("office", "lane1", "lane2")}
PASSWORD = "correct horse battery"
NOTICE_EN = "We keep a face template (never a photo) to let you in without a ticket."
NOTICE_ZH = "我们仅保存人脸模板（从不保存照片），以便您无需门票入园。"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + "; CI=true requires it", pytrace=False)
    pytest.skip(reason)


def need_browser() -> None:
    """Skip (or, in CI, fail) when Debian's Chromium or Playwright is not installed."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"Chromium not found at {CHROMIUM} (apt-get install chromium; scripts/setup.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[browser]'; scripts/setup.sh)")


def need_mosquitto() -> None:
    """Skip (or, in CI, fail) without a mosquitto binary."""
    if mosquitto_binary() is None:
        _missing(MISSING)


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    """Bounded polling: cond()'s first truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def y4m_from_clip(clip: Path, out: Path, first: int = 90, last: int = 214, step: int = 2) -> Path:
    """A 4:2:0 YUV4MPEG2 file (Chromium's fake camera) from frames of a recorded clip."""
    cap = cv2.VideoCapture(str(clip))
    frames, i = [], 0
    while True:
        ok, f = cap.read()
        if not ok or i > last:
            break
        if i >= first and (i - first) % step == 0:
            frames.append(f)
        i += 1
    cap.release()
    if not frames:
        raise RuntimeError(f"no frames {first}..{last} in {clip}")
    h, w = frames[0].shape[:2]
    w, h = w - w % 2, h - h % 2
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F15:1 Ip A1:1 C420jpeg\n".encode())
        for fr in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(fr[:h, :w], cv2.COLOR_BGR2YUV_I420).tobytes())
    return out


class NoFrames:
    """A camera that has nothing to show: the gate decides on scanner input alone."""

    state, finished = "ok", False

    def read(self):
        return None

    def close(self):
        pass


def scan_at_lane(cfg: config_mod.Config, text: str, timeout: float = 30.0) -> dict:
    """A ticket shown to a lane's scanner: the real gate decides, records, notifies; its event."""
    got: list[dict] = []
    with Gate(cfg, got.append, source=NoFrames(), scanner=[text], pin_factory=MockFactory()) as g:
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            for d in g.process(None):
                g.act(d)
            time.sleep(0.02)
    assert got, "the gate made no decision on the scanned ticket"
    return got[0]


def run_clip_at_lane(cfg: config_mod.Config, clip: Path) -> list[dict]:
    """The real gate on a recorded clip (mock relay): its decision events."""
    got: list[dict] = []
    cfg = config_mod.override(cfg, camera={"source": str(clip), "realtime": False})
    with Gate(cfg, got.append, pin_factory=MockFactory()) as gate:
        assert gate.run() == 0
    return got


@dataclass
class Park:
    """An office and two lanes of one site on a real broker, syncs running in threads."""

    root: Path
    site: str
    office: Member
    lanes: list[Member]
    priv: Path
    pub: Path
    site_key: Path

    def cfg(self, i: int) -> config_mod.Config:
        """Lane i's config (1-based; 0 is the office)."""
        return config_mod.load((self.lanes[i - 1] if i else self.office).config)

    @property
    def office_cfg(self) -> config_mod.Config:
        """The office config (with [console])."""
        return config_mod.load(self.office.config)

    def ticket(self, tid: str) -> str:
        """A one-time day ticket signed by the office's issuer key."""
        now = int(time.time())
        t = tk.Ticket(tid, "day", now - 60, now + 86400, tk.Kind.ONE_TIME, 1)
        return tk.sign(t, tk.load_private(self.priv))


def make_park(root: Path, broker_url: str) -> Park:
    """Write the office and two face-or-ticket lanes; the office gets a [console] section."""
    from edge.gallery.crypto import init_key

    site = "park-" + uuid.uuid4().hex[:8]
    priv, pub = tk.keygen(root / "issuer")
    site_key = root / "site.key"
    init_key(site_key)
    (root / "notice-en.txt").write_text(NOTICE_EN)
    (root / "notice-zh.txt").write_text(NOTICE_ZH)
    fast = {"heartbeat_s": 0.5, "offline_after_s": 5.0}
    office = write_member(
        root, "office", broker_url, site, pub, USERS["office"], site_key, fast,
        sections={"console": {
            "issuer_key": str(priv), "consent_version": "2026-01",
            "notice_file": str(root / "notice-en.txt"),
            "notice_file_zh": str(root / "notice-zh.txt"),
            "users_db": "console.db", "secret_file": "console.secret",
        }},
    )  # fmt: skip
    lanes = []
    for i in (1, 2):
        name = f"lane{i}"
        lanes.append(
            write_member(
                root, name, broker_url, site, pub, USERS[name], site_key, fast,
                sections={
                    "gate": {"mode": "face-or-ticket"},
                    "relay": {"pin_factory": "mock", "pulse_s": 0.2},
                    "screen": {"socket": str(root / name / "screen.sock"), "listen": "127.0.0.1:0"},
                },
            )
        )  # fmt: skip
    for m in (office, *lanes):
        init_key(m.dir / "gallery.key")
    roster_all(office, lanes, priv)  # the office signs the lanes' keys (`fleet roster add`)
    return Park(root, site, office, lanes, priv, pub, site_key)


class Syncs:
    """`edge-gate sync` of the office and each lane in a thread of its own (its SQLite belongs
    to it): the console shows what the office's sync stored."""

    def __init__(self, park: Park):
        self.park = park
        self.running: list[tuple[Sync, threading.Thread]] = []

    def start(self) -> Syncs:
        for i in (0, 1, 2):
            made: list[Sync] = []
            ready = threading.Event()

            def main(i=i, made=made, ready=ready):
                made.append(Sync(self.park.cfg(i)))
                ready.set()
                made[0].run()

            t = threading.Thread(target=main, daemon=True)
            t.start()
            ready.wait(10)
            self.running.append((made[0], t))
        return self

    def stop(self) -> None:
        for s, t in self.running:
            s.stop_requested = True
            t.join(10)
        self.running.clear()


class Served:
    """The console (or any ASGI app) under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                           access_log=False, timeout_graceful_shutdown=1)
        )  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn started")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def add_users(cfg: config_mod.Config) -> None:
    """One account per role (plus one to lock out), all with PASSWORD."""
    from edge.console.users import UserStore

    store = UserStore(cfg.resolve(cfg.console.users_db))
    try:
        for name, role, lang in (
            ("sam", "supervisor", "en"),
            ("stu", "steward", "en"),
            ("li", "supervisor", "zh-CN"),
            ("rita", "steward", "en"),
        ):
            if store.get(name) is None:
                store.add(name, role, PASSWORD, lang)
    finally:
        store.close()


def login(page, base: str, user: str, password: str = PASSWORD):
    """Log in through the form; returns the response of the POST's final page."""
    page.goto(base + "/login")
    page.fill("#user", user)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#login")
    return page


def shot(page, name: str, tmp: Path) -> Path:
    """A screenshot of the page: into $EDGE_SCREENSHOTS (docs/screenshots) when set."""
    env = os.environ.get("EDGE_SCREENSHOTS")
    d = (PROJECT_ROOT / env if not Path(env).is_absolute() else Path(env)) if env else tmp
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"{name}.png"
    page.screenshot(path=str(out), full_page=False)
    return out


@contextlib.contextmanager
def chromium(fake_video: Path | None = None):
    """Debian's Chromium, headless, with the fake camera playing `fake_video` when given."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    if fake_video is not None:
        args.append(f"--use-file-for-fake-video-capture={fake_video}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


def copy_tree_of(src: Path, dst: Path) -> None:
    """Copy a folder (for a second console with its own state)."""
    shutil.copytree(src, dst, dirs_exist_ok=True)
