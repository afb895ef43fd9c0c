"""`edge-gate demo --lanes N`: an office and N lanes on one Mosquitto, on this machine.

A one-time ticket's screenshot is shown at every lane: granted at lane 1, refused `already_used`
at the others, each through `edge-gate ticket verify --config LANE --redeem` while every lane's
`edge-gate sync` runs. Where the shared fixtures exist, a pass holder enrolled once at the
office (from one photo) is admitted by face at the last lane on a recorded clip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edge import config as config_mod
from edge import tickets as tk
from edge.config import PROJECT_ROOT
from edge.fleet.office import publish_enrollment
from edge.fleet.state import read_state
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Gallery
from edge.gate.daemon import Gate, format_decision
from edge.lab.broker import Mosquitto
from edge.lab.demo import enroll_person, fresh_workdir
from edge.lab.workspace import Member, roster_all, start_syncs, stop_all, write_member
from edge.tickets.issue import IssueRequest, issue_ticket
from edge.tickets.ledger import Ledger
from edge.vision.pipeline import FacePipeline


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _heard(m: Member, ticket_id: str) -> bool:
    led = Ledger(m.dir / "ledger.db")
    try:
        return led.remote_count(ticket_id) > 0
    finally:
        led.close()


def _ready(m: Member) -> bool:
    """Connected, with the office's roster and forget list (so faces may be granted)."""
    st = m.dir / "fleet.db"
    return bool(read_state(st, "connected") and read_state(st, "roster")) and not read_state(
        st, "forget_replay"
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, env=env
    )


def run_fleet_demo(workdir: Path, lanes: int, fixtures: Path | None, fast: bool) -> int:
    """Run the demo, printing what happens; 0 if every lane behaved as one gate."""
    fresh_workdir(workdir)
    names = [f"lane{i}" for i in range(1, lanes + 1)]
    users = {n: os.urandom(8).hex() for n in ["office", *names]}
    priv, pub = tk.keygen(workdir / "office-keys")
    init_key(workdir / "site.key")
    broker = Mosquitto(workdir / "broker", users=users).start()
    print(f"edge-gate demo --lanes {lanes}: mosquitto on {broker.url} (loopback only), {workdir}")
    face_lane = names[-1] if fixtures is not None else None
    members = {
        n: write_member(
            workdir,
            n,
            broker.url,
            "demo-park",
            pub,
            users[n],
            workdir / "site.key",
            {"heartbeat_s": 1.0},
            {"gate": {"mode": "face-or-ticket"}} if n in (face_lane, "office") else None,
        )
        for n in ["office", *names]
    }
    for n in names:
        init_key(members[n].dir / "gallery.key")
    roster_all(members["office"], [members[n] for n in names], priv)
    print(f"  the office signed a roster of {lanes} lane keys (each lane's `fleet join`)")
    procs = start_syncs(members[n] for n in ["office", *names])
    ok = True
    try:
        up = _wait(lambda: all(_ready(members[n]) for n in names), 30)
        print(
            f"  {lanes} lanes and the office running edge-gate sync: "
            + ("connected, roster and forget list applied" if up else "NOT ready")
        )
        until = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
        issued = issue_ticket(priv, IssueRequest("SCREENSHOT-1", valid_until=until), workdir / "t")
        t, png = issued.ticket, issued.path
        print(f"\n== one screenshot of a one-time ticket ({png}) sent to friends")
        for i, n in enumerate(names):
            if i > 0:
                t0 = time.monotonic()
                heard = _wait(lambda n=n: _heard(members[n], t.ticket_id), 10)
                print(
                    f"   {n} heard of lane1's entry after {1000 * (time.monotonic() - t0):.0f} ms"
                    if heard
                    else f"   {n} has NOT heard of lane1's entry"
                )
            r = _cli("ticket", "verify", "--config", str(members[n].config), "--redeem", str(png))
            out = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
            verdict = "GRANT" if r.returncode == 0 else "DENY "
            print(
                f"   {n}: {verdict} {out.get('reason', r.stderr.strip()[:200])}"
                f" (exit {r.returncode})"
            )
            ok &= (r.returncode == 0) == (i == 0) and (
                i == 0 or out.get("reason") == "already_used"
            )
        if face_lane and fixtures is not None:
            ok &= _face_part(members["office"], members[face_lane], priv, fixtures, fast)
    finally:
        stop_all(procs, 10)
        broker.stop()
    print("\nthe lanes behaved as one gate" if ok else "\nUNEXPECTED: see above")
    return 0 if ok else 1


def _face_part(office: Member, lane: Member, priv: Path, fixtures: Path, fast: bool) -> bool:
    """Enroll at the office from one photo, publish sealed, admit by face at `lane`."""
    ocfg = config_mod.load(office.config)
    pid = enroll_person(
        ocfg,
        FacePipeline.from_config(ocfg),
        "Lin-Manuel Miranda",
        [fixtures / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"],
    )
    publish_enrollment(ocfg, priv, office.dir / "gallery.db", office.dir / "gallery.key", pid)
    print(f"\n== pass holder enrolled once at the office as {pid}; sent sealed for the site")

    def present() -> bool:
        try:
            g = Gallery(lane.dir / "gallery.db", load_key(lane.dir / "gallery.key"), create=False)
        except Exception:
            return False
        try:
            return any(p.id == pid for p in g.people())
        finally:
            g.close()

    if not _wait(present, 20):
        print(f"   {lane.name} did NOT receive the enrollment")
        return False
    grants: list[dict] = []

    def show(ev: dict) -> None:
        print("   " + format_decision(ev), flush=True)
        if ev["decision"] == "grant" and ev.get("person") == pid:
            grants.append(ev)

    cfg = config_mod.override(
        config_mod.load(lane.config),
        camera={
            "source": str(fixtures / "video" / "short_hamilton_clip.mp4"),
            "realtime": not fast,
        },
    )
    with Gate(cfg, show) as gate:
        gate.run()
    granted = bool(grants)
    print(f"   {lane.name}: {'admitted' if granted else 'NOT admitted'} {pid} by face")
    return granted
