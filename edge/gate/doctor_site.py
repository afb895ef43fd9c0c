"""`edge-gate doctor`, the lane's own checks: tickets, ledger, camera, GPIO, clock, disk, fleet.

Registered in SITE_CHECKS (edge/gate/checklist.py); doctor.py runs them after its own vision,
gallery and clock checks.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from edge import config as config_mod
from edge.errors import EdgeGateError
from edge.evidence import Witness, key_path, lane_key
from edge.fleet.identity import load_lane_key
from edge.fleet.state import (
    BEHIND_OFFICE,
    BEHIND_OFFICE_FIX,
    StateReader,
    check_faces,
    check_link,
)
from edge.gate import checks
from edge.gate.audit import AUDIT_BROKEN_FIX, open_audit
from edge.gate.checklist import Check, Site, registry
from edge.gate.desk import open_ledger
from edge.tickets.pretix_desk import AHEAD_SLACK_S, lane_status
from edge.tickets.pretix_offline import check_configured, load_dir
from edge.tickets.revocation import joined_lines
from edge.timeutil import iso, kernel_clock_synced
from edge.vision.models import detector_spec

SITE_CHECKS, check = registry()


@check("ticket keys")
def _ticket_keys(site: Site) -> str | Check:
    if site.cfg.camera.source == "demo" and not site.cfg.tickets.pubkeys:
        return Check(
            "warn",
            "ticket keys",
            'camera.source = "demo" brings its own demo ticket key',
            "set tickets.pubkeys to your ticket office's issuer.pub",
        )
    keys = checks.ticket_keys(site.cfg)
    return f"{len(keys)} issuer public key(s); no private key on the gate"


def _demo_creates(site: Site, path: Path, name: str) -> Check | None:
    """`run` on the demo source creates the demo's ledger and revocation list; say so, not fail."""
    if site.cfg.camera.source == "demo" and not path.exists():
        return Check("warn", name, f"{path} does not exist yet; the demo run creates it")
    return None


@check("revocation list")
def _revocations(site: Site) -> str | Check:
    cfg = site.cfg
    if cfg.tickets.revocation_list:
        demo = _demo_creates(site, cfg.resolve(cfg.tickets.revocation_list), "revocation list")
        if demo is not None:
            return demo
    n = len(checks.revocations(cfg))
    joined = joined_lines(cfg.resolve(cfg.tickets.revocation_list)) if n else []
    if joined:
        line, entry = joined[0]
        return Check(
            "warn",
            "revocation list",
            f"{n} revoked ticket id(s); line {line} ({entry!r})"
            + (f" and {len(joined) - 1} more" if len(joined) > 1 else "")
            + " holds several ids joined by commas: ids are matched exactly, so it revokes none",
            "put one id per line",
        )
    return f"{n} revoked ticket id(s)"


@check("camera")
def _camera(site: Site) -> str | Check:
    cam = site.cfg.camera
    if cam.source == "demo":
        return Check(
            "warn", "camera", 'camera.source = "demo"', "set /dev/video0 or picamera2 on the gate"
        )
    if cam.source == "picamera2":
        if importlib.util.find_spec("picamera2") is None:
            raise EdgeGateError("picamera2 is not installed", "pip install 'edge-gate[pi]'")
        return "picamera2 importable"
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.gate.sources import open_source

    with open_source(cam.source, cam.width, cam.height, cam.fps, realtime=False) as s:
        f = s.read()
    if f is None:
        raise EdgeGateError(
            f"camera {cam.source} opened but gave no frame", "check the cable and lighting"
        )
    return f"{cam.source}: {f.image.shape[1]}x{f.image.shape[0]}"


CONTEXT_FRAMES = 30  # frames the camera-context check reads (two seconds at 15 fps)


def context_check(shape: tuple[int, ...], box, spec, min_face_px: int, where: str) -> Check:
    """How much of the view a face at the lane's mark leaves for liveness to look around it.

    `box` is the largest face seen (BlazeFace), `spec` the liveness entry (its crop scale, the
    floor under which a face is too close to judge, and its box style). Pure: doctor and tests.
    """
    # the liveness stack loads only for the camera-context check (as doctor.py does)
    from edge.vision.liveness import judged_context

    h, w = shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    bh = y1 - y0
    mapped = spec.box_map.apply(box) if hasattr(spec, "box_map") else box
    ctx = judged_context(shape, box, mapped, spec.crop_scale)
    seen = f"{where}: a face {bh / h:.0%} of the {w}x{h} frame's height"
    if ctx < spec.min_crop_scale:
        most = bh / h * ctx / spec.min_crop_scale  # the face height that leaves the floor
        return Check(
            "warn",
            "camera context",
            f"{seen} leaves {ctx:.2f}x the face for liveness, under its floor of "
            f"{spec.min_crop_scale}x: visitors standing there are refused as too close",
            f"mount the camera further back or use a wider lens, so a face at the lane's mark "
            f"is at most {most:.0%} of the frame height (about {int(most * h)} px at {h} px); "
            "set [camera] width/height to a mode that shows the sensor's whole field of view",
        )
    if min(x1 - x0, bh) < min_face_px:
        return Check(
            "warn",
            "camera context",
            f"{seen} is {int(min(x1 - x0, bh))} px, under [vision] min_face_px ({min_face_px}):"
            " visitors standing there are told to come closer",
            "raise [camera] width/height, or mount the camera closer to the lane's mark",
        )
    full = "the model's full context" if ctx >= spec.crop_scale else "less than its full context"
    return Check(
        "ok",
        "camera context",
        f"{seen} leaves {ctx:.2f}x the face for liveness ({full} {spec.crop_scale}x, floor "
        f"{spec.min_crop_scale}x)",
    )


@check("camera context")
def _camera_context(site: Site) -> str | Check:
    """A few frames from the camera: is a face where visitors stand judged, or too close?"""
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.gate.sources import open_source
    from edge.vision.detector import BlazeFace
    from edge.vision.liveness import PadSpec

    cfg, cam = site.cfg, site.cfg.camera
    if cfg.liveness.mode == "off" or not checks.faces_wanted(cfg):
        return "no liveness check on this lane"
    if cam.source == "demo":
        return 'camera.source = "demo": nothing to measure'
    mdir = config_mod.models_path(cfg)
    spec = PadSpec.load(mdir, cfg.liveness.model, require_threshold=False)
    d = detector_spec(mdir, cfg.vision.detector)
    det = BlazeFace(d.path, d.kind, threads=1, min_score=cfg.vision.min_score)
    best, shape = None, None
    with open_source(cam.source, cam.width, cam.height, cam.fps, realtime=False) as src:
        for _ in range(CONTEXT_FRAMES):
            f = src.read()
            if f is None:
                break
            for face in det.detect(f.image):
                if best is None or face.height > best.height:
                    best, shape = face, f.image.shape
    if best is None or shape is None:
        return (
            f"no face in {CONTEXT_FRAMES} frames of {cam.source}: stand at the lane's mark and "
            "run doctor again to measure how much of the view a visitor's face takes"
        )
    return context_check(shape, best.box, spec, cfg.vision.min_face_px, str(cam.source))


@check("GPIO")
def _gpio(site: Site) -> str | Check:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.gate.relay import check_pins, make_pin_factory

    relay = site.cfg.relay
    factory = make_pin_factory(relay.pin_factory)
    try:
        check_pins(relay, factory)  # the check the relay makes at start; claims no pin
    finally:
        factory.close()
    if relay.pin_factory == "mock":
        return Check(
            "warn",
            "GPIO",
            'relay.pin_factory = "mock": the relay is simulated',
            "set lgpio on a Pi",
        )
    return f"{relay.pin_factory} on BCM {relay.pin}"


@check("clock")
def _clock(site: Site) -> str:
    now = time.time()
    if now < 1_735_689_600:  # 2025-01-01: an unset clock
        raise EdgeGateError(
            f"the clock says {time.ctime(now)}",
            "set the time (RTC or NTP); ticket validity depends on it",
        )
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


@check("disk")
def _disk(site: Site) -> str:
    folder = site.db.parent if site.db.parent.exists() else Path(".")
    free = shutil.disk_usage(folder).free / 2**20
    if free < 100:
        raise EdgeGateError(
            f"only {free:.0f} MiB free in {folder}",
            "free space: the ledger and audit log must be able to write",
        )
    return f"{free:.0f} MiB free in {folder}"


def _span(seconds: float) -> str:
    """A gap as an operator reads it: seconds, minutes, hours or days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def clock_behind(now: float, floor: float, synced: bool | None) -> EdgeGateError:
    """The clock is behind the newest record: set wrong now (the usual case: set it), or right
    now and the record dated by a clock that ran ahead (then setting it changes nothing)."""
    problem = f"the clock ({iso(now)}) is behind the newest recorded entry ({iso(floor)})"
    if not synced:
        return EdgeGateError(problem, "set the time; tickets are refused until then")
    return EdgeGateError(
        f"{problem}, by {_span(floor - now)}, and the kernel reports it synchronised: a "
        "clock that ran ahead dated that record",
        f"tickets, and passes with an end date, are refused until {iso(floor)}: find what set "
        "the clock ahead (its NTP server, an RTC, a date typed by hand) so it cannot again, then "
        "`edge-gate ledger clock-checked --config C --reason TEXT` (recorded in the audit "
        "log) and restart the gate",
    )


@check("ticket ledger")
def _ledger(site: Site) -> str | Check:
    cfg = site.cfg
    demo = _demo_creates(site, cfg.resolve(cfg.tickets.ledger), "ticket ledger")
    if demo is not None:
        return demo
    audit_path = cfg.resolve(cfg.audit.path)
    with ExitStack() as stack:
        audit = None
        if audit_path.is_file():
            audit = stack.enter_context(open_audit(cfg, "use"))
        led = stack.enter_context(open_ledger(cfg, audit, "use"))
        now = time.time()
        mark, floor = led.mark(), led.clock_behind(now)  # as the ledger judges a redemption
    if floor is not None:
        raise clock_behind(now, floor, kernel_clock_synced())
    return f"{cfg.resolve(cfg.tickets.ledger)}: {mark.seq} redemptions, newest {iso(mark.t) or '-'}"


@check("evidence")
def _evidence(site: Site) -> str | Check:
    """The audit log's chains (hashed, and keyed with the lane's key) and the witness; the
    ledger's are checked with it by "ticket ledger" (its open walks the whole chain)."""
    cfg = site.cfg
    path = cfg.resolve(cfg.audit.path)
    if path.is_dir():
        return Check("fail", "evidence", f"audit.path {path} is a folder", "name a file in it")
    if not path.is_file():
        ek = lane_key(key_path(cfg), "use")
        seen = Witness(ek).get("audit") if ek is not None else None
        if seen is not None and seen.n > 0:  # the lane signed for a log that is not there
            return Check(
                "fail",
                "evidence",
                f"audit log {path} is missing, yet the lane's evidence witness names log "
                f"{seen.id[:8]} with {seen.n} records: it was deleted or moved",
                f"restore it from its backup; then {AUDIT_BROKEN_FIX}",
            )
        return "no audit log yet (the gate's first run makes it and the evidence key)"
    with open_audit(cfg, "use") as log:
        rep = log.verify()
    if not rep.ok:
        return Check(
            "fail",
            "evidence",
            f"audit chain broken: {rep.problem}",
            AUDIT_BROKEN_FIX,
        )
    how = "hashed and keyed" if rep.keyed else "hashed, not keyed yet"
    return f"audit chain intact ({how}): {rep.records} records, head {rep.head_id}"


@check("fleet")
def _fleet(site: Site) -> str | Check:
    """The link and clock as edge-gate sync last saw them (tickets are refused on either), the
    lanes whose clocks are off from the fleet's, and a forget list still to replay."""
    fl = site.cfg.fleet
    if not fl.enabled:
        return "no [fleet]: this gate works alone"
    try:
        load_lane_key(site.cfg)  # sync signs with it; refused when missing or not private
    except EdgeGateError as e:
        return Check("fail", "fleet", str(e).split(" (fix: ")[0], e.hint)
    # read only: answers while sync holds a write, and makes or upgrades nothing
    st = StateReader(site.cfg.resolve(fl.state_db))
    try:
        link, offset = check_link(fl, st, time.time()), st.get("clock_offset")
        faces = check_faces(fl, st)
        connected = st.get("connected")
        clocks = st.get("clocks") or {}
    finally:
        st.close()
    where = f"site {fl.site}, lane {fl.lane}, broker {fl.broker}"
    fix = "systemctl status edge-gate-sync; check the broker and the clock (NTP)"
    off = sorted(
        (lane, o)
        for lane, o in clocks.items()
        if abs(o) > fl.max_clock_offset_s and lane != fl.lane
    )
    named = ", ".join(f"{lane} ({o:+.1f} s)" for lane, o in off)
    if not link.ok:
        if link.reason == BEHIND_OFFICE:  # sync runs; what it was given is older
            fix = BEHIND_OFFICE_FIX
        return Check("fail", "fleet", f"{where}: {link.reason}: {link.detail}", fix)
    if not faces.ok:
        return Check(
            "warn", "fleet", f"{where}: {faces.reason}: {faces.detail}", "start edge-gate-sync"
        )
    if not connected:
        return Check("warn", "fleet", f"{where}: sync not connected", fix)
    mine = "unknown" if offset is None else f"{offset:+.1f} s"
    if off:
        return Check(
            "warn",
            "fleet",
            f"{where}: connected, clock vs fleet {mine}; clock off from the fleet's: {named}",
            "set the time (NTP) on the lanes named",
        )
    return f"{where}: connected, clock vs fleet {mine}"


@check("pretix")
def _pretix(site: Site) -> str | Check:
    """The lane's pretix folder: readable, and how old (sync keeps it fresh; the gate never
    waits for it, so old data is a warning: revocations made since are not known here)."""
    px = site.cfg.pretix
    if not px.enabled:
        return "no [pretix]: pretix tickets are not accepted here"
    data = load_dir(site.cfg.resolve(px.dir))  # a ConfigError fails the check with its fix
    check_configured(data, site.cfg.resolve(px.dir), px.event, px.checkin_list)  # as the gate
    st = lane_status(site.cfg, time.time())
    age = st["age_s"]
    ahead = age is not None and age < -AHEAD_SLACK_S  # dated ahead: this lane's clock is behind
    when = (
        "of unknown age"
        if age is None
        else f"dated {-age / 60:.0f} min ahead of this clock"
        if ahead
        else f"{max(age, 0.0) / 60:.0f} min old"  # within the slack: just pulled
    )
    what = (
        f"event {data.event.slug}, list {data.checkin_list.id}, {len(data.event.keys)} key(s), "
        f"{len(data.revoked)} revoked, {len(data.blocked)} blocked; data {when}"
        f"; {st['upload_pending']} check-in(s) waiting for upload"
    )
    if ahead:
        return Check(
            "warn",
            "pretix",
            what + " (this lane's clock is behind: tickets are judged on a wrong time)",
            "set the time (timedatectl; NTP), then run edge-gate doctor again",
        )
    if age is None or age > px.stale_after_s:
        why = f"; last error: {st['last_error']}" if st["last_error"] else ""
        return Check(
            "warn",
            "pretix",
            what + f" (older than pretix.stale_after_s = {px.stale_after_s:.0f} s){why}",
            "systemctl status edge-gate-pretix-sync; check the shop URL, token and network",
        )
    return what
