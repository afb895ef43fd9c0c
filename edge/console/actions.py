"""What the console does, each through the office library function its CLI command calls.

enroll -> `edge.gallery.enroll.enroll` + `edge.fleet.office.publish_enrollment`;
forget -> `Gallery.forget` + `office.publish_person(..., "forget")`;
revoke / unrevoke -> `edge.tickets.revocation` + `office.publish_revocations`;
override -> `office.publish_override` (`fleet override`);
ticket check -> `edge.gate.desk.verify_tickets`; audit -> `AuditLog.verify` / `page` / `rows`.
Each action is recorded in the office audit log with the staff member's name ("by NAME").
No frame the kiosk receives is written anywhere: it is embedded in memory and dropped.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge import config as config_mod
from edge import tickets as tk
from edge.console.follow import Followed, Stamp, let_go, stamp
from edge.console.roles import LANGS
from edge.errors import EdgeGateError, GalleryGoneError, ImageError, SeveralFacesError
from edge.fleet.office import (
    override_lane,
    publish_enrollment,
    publish_override,
    publish_person,
    publish_revocations,
    publish_unrevocations,
    wait_all_sent,
    wait_sent,
)
from edge.gallery.crypto import load_key
from edge.gallery.enroll import (
    MIN_TEMPLATES,
    Candidate,
    check_consent,
    notice_sha256,
    one_face,
    pick_best,
)
from edge.gallery.enroll import enroll as enroll_person
from edge.gallery.erase import ErasureIncomplete
from edge.gallery.matcher import resolve_threshold
from edge.gallery.store import Consent, Gallery
from edge.gate.audit import AuditLog, AuditRecord, check_reason, open_audit
from edge.gate.desk import DeskOptions, pick_ticket_text, verify_tickets
from edge.tickets.revocation import unrevoke as remove
from edge.timeutil import parse_time
from edge.vision.image import MAX_PIXELS
from edge.vision.image import decode_image as decode
from edge.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)
KIOSK_TTL_S = 900.0  # an unfinished enrollment's faces are dropped after this
SENT_WAIT_S = 5.0  # how long an action waits to say "sent" rather than "queued"
MAX_UPLOAD = 8 * 1024 * 1024


class ActionError(EdgeGateError):
    """A console action was refused; the message is shown to the staff member."""


def by(user: str, detail: str = "") -> str:
    """The audit detail of a console action: who did it, then what."""
    return f"by {user}" + (f": {detail}" if detail else "")


class Office:
    """The office's files and keys as the config names them, plus the audit log it writes."""

    def __init__(self, cfg: config_mod.Config):
        self.cfg = cfg
        self._audit_lock = threading.Lock()
        self._audit: AuditLog | None = None
        self._audit_file = Followed(cfg.resolve(cfg.audit.path))
        self._pipe = None
        self._pipe_lock = threading.RLock()
        self._people: tuple[tuple, list[dict[str, Any]]] = ((), [])
        self._people_lock = threading.Lock()
        self._gallery_seen = has_gallery(self.gallery_db)  # set once it is seen or made

    # --- paths ----------------------------------------------------------------------------------

    @property
    def gallery_db(self) -> Path:
        """The office gallery (where enrollments are made before they are published)."""
        return self.cfg.resolve(self.cfg.gallery.db)

    @property
    def gallery_key(self) -> Path:
        """The office gallery's key file."""
        return self.cfg.resolve(self.cfg.gallery.key_file)

    @property
    def issuer_key(self) -> Path | None:
        """issuer.key that signs what the console publishes, or None (console.issuer_key)."""
        k = self.cfg.console.issuer_key
        return self.cfg.resolve(k) if k else None

    @property
    def revocation_list(self) -> Path | None:
        """The office's revocation list (tickets.revocation_list), or None."""
        r = self.cfg.tickets.revocation_list
        return self.cfg.resolve(r) if r else None

    def need_issuer_key(self) -> Path:
        """The signing key, or a refusal saying how to configure it."""
        if self.issuer_key is None:
            raise ActionError(
                "this console has no issuer key: it cannot publish to the lanes",
                "set console.issuer_key in the office config",
            )
        return self.issuer_key

    def usable_issuer_key(self) -> Path:
        """The signing key, checked to load before anything is changed, recorded or sent: a key
        file deleted or unreadable while the console runs refuses the action whole."""
        path = self.need_issuer_key()
        tk.load_private(path)
        return path

    # --- audit ----------------------------------------------------------------------------------

    def audit_log(self) -> AuditLog:
        """A new connection to the office audit log (audit.path); the caller closes it."""
        return open_audit(self.cfg, "use")  # keyed when this machine holds an evidence key

    @contextlib.contextmanager
    def audit(self) -> Iterator[AuditLog]:
        """The console's one open connection to the office audit log, one thread at a time.

        The file at audit.path is followed: deleted (to free a disk), replaced (restored from
        a backup) or overwritten in place (restored with `cp` over it) while the console runs,
        it is opened again as at start, so no record goes into a file no longer on disk (lost
        at the next start) and no page shows records the file no longer holds."""
        with self._audit_lock:
            now = self._let_go_moved()
            if self._audit is None:
                self._audit = self.audit_log()
                self._audit_file.opened(now)
            try:
                yield self._audit
            finally:
                if self._audit is not None:
                    self._audit_file.backfill(self._audit.conn)

    def _let_go_moved(self) -> Stamp | None:
        """Under `_audit_lock`: the connection to a log no longer at its path, or to a file
        written over in place, is let go; the stamp of the file now there (None: none)."""
        now = stamp(self._audit_file.path)
        if self._audit is not None and (how := self._audit_file.changed(now)):
            log.error(
                "console audit_moved path=%s: %s while the console ran; opened again at its "
                "next use",
                self._audit_file.path,
                how,
            )
            let_go(self._audit)
            self._audit = None
        return now

    def let_go_moved_audit(self) -> None:
        """Let go at once of an audit log deleted or replaced underneath, not at the next
        record: while the console holds it, the office's sync cannot open the file at the path
        (SQLite says disk I/O error on the log and index the held file keeps there). A log in
        use is left to its user, who follows it itself."""
        if self._audit_lock.acquire(blocking=False):
            try:
                self._let_go_moved()
                if self._audit is not None:  # what another process (the office's sync) wrote
                    self._audit_file.backfill(self._audit.conn)
            finally:
                self._audit_lock.release()

    def record(self, user: str, kind: str, detail: str = "", **fields: Any) -> None:
        """One action in the office audit log, with the user's name."""
        with self.audit() as a:
            a.record(
                AuditRecord(time.time(), self.cfg.gate.id, kind, detail=by(user, detail), **fields)
            )

    def close(self) -> None:
        """Close the audit log connection."""
        with self._audit_lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None

    # --- the gallery --------------------------------------------------------------------------

    def check_gallery(self) -> bool:
        """Whether the office gallery is there; a gallery this console saw (or made) that is
        no longer on disk is a GalleryGoneError: an enrolment would make a new, empty one in
        its place and every person enrolled before would be lost from the office unsaid."""
        if has_gallery(self.gallery_db):
            self._gallery_seen = True
            return True
        if self._gallery_seen:
            raise GalleryGoneError(
                f"the office gallery {self.gallery_db} was deleted while the console ran; "
                "nothing was enrolled, so no new, empty gallery replaced it",
                f"restore {self.gallery_db.name} (and {self.gallery_db.name}.forgotten, if "
                "there is one) from its backup; or, to start anew with an empty gallery on "
                "purpose, restart the console: it makes one at its first enrolment",
            )
        return False

    def gallery(self) -> Gallery:
        """The office gallery to enroll into, made at the first enrolment (`check_gallery`)."""
        self.check_gallery()  # and never made if deleted just after it was looked at:
        g = Gallery(self.gallery_db, load_key(self.gallery_key), create=not self._gallery_seen)
        self._gallery_seen = True
        return g

    # --- people -----------------------------------------------------------------------------------

    def people_rows(self) -> list[dict[str, Any]]:
        """Everyone in the office gallery, opened once and again only when the file changed
        (opening every sealed record costs ~16 µs a person: 10,000 people, 160 ms a page)."""
        with self._people_lock:
            stamp = _file_stamp(self.gallery_db)  # taken before reading: a write during the
            if stamp != self._people[0]:  # read changes it, so the next call reads again
                self._people = (stamp, _read_people(self))
            return self._people[1]

    def drop_people(self) -> None:
        """Forget the in-memory list at once (after an erasure: no name outlives it here)."""
        with self._people_lock:
            self._people = ((), [])

    # --- faces ------------------------------------------------------------------------------------

    def pipeline(self):
        """The office's face pipeline (built once; one frame at a time through it)."""
        with self._pipe_lock:
            if self._pipe is None:
                self._pipe = FacePipeline.from_config(self.cfg)
            return self._pipe


# --- the enrollment kiosk --------------------------------------------------------------------


@dataclass
class Capture:
    """One kiosk enrollment in progress: the faces accepted so far (embeddings only)."""

    user: str
    started: float
    candidates: list = field(default_factory=list)
    frames: int = 0


@dataclass(frozen=True)
class FrameFeedback:
    """What the kiosk tells the staff member about one frame."""

    faces: int
    accepted: bool
    reasons: tuple[str, ...]
    face_px: float = 0.0
    sharpness: float = 0.0
    templates: int = 0
    needed: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON the kiosk page reads."""
        return {
            "faces": self.faces,
            "accepted": self.accepted,
            "reasons": list(self.reasons),
            "face_px": round(self.face_px, 1),
            "sharpness": round(self.sharpness, 1),
            "templates": self.templates,
            "needed": self.needed,
        }


class Kiosk:
    """Frames in, feedback out; faces kept per capture until published or abandoned."""

    def __init__(self, office: Office, max_templates: int = 5):
        self.office = office
        self.max_templates = max_templates
        self.needed = MIN_TEMPLATES
        self._captures: dict[str, Capture] = {}
        self._lock = threading.Lock()

    def start(self, user: str) -> str:
        """A new capture id for this user (old, abandoned captures are dropped)."""
        now = time.monotonic()
        with self._lock:
            for k in [k for k, c in self._captures.items() if now - c.started > KIOSK_TTL_S]:
                del self._captures[k]
            cid = secrets.token_urlsafe(12)
            self._captures[cid] = Capture(user, now)
        return cid

    def capture(self, cid: str, user: str) -> Capture:
        """The user's own capture, or a refusal; one older than KIOSK_TTL_S is dropped here (its
        faces are kept no longer, even when no new kiosk page was opened since)."""
        with self._lock:
            c = self._captures.get(cid)
            if c is not None and time.monotonic() - c.started > KIOSK_TTL_S:
                del self._captures[cid]
                c = None
        if c is None or c.user != user:
            raise ActionError("this enrollment has expired", "start again from the kiosk page")
        return c

    def drop(self, cid: str) -> None:
        """Forget a capture's faces (published, or cancelled)."""
        with self._lock:
            self._captures.pop(cid, None)

    def templates(self, c: Capture) -> int:
        """Distinct usable faces so far, as enrollment will count them."""
        return len(pick_best(c.candidates, self.max_templates))

    def frame(self, cid: str, user: str, data: bytes, still: bool = False) -> FrameFeedback:
        """Judge one camera frame (or an uploaded photo, `still`) and keep its face if usable."""
        c = self.capture(cid, user)
        bgr = decode_image(data, self.office.cfg.vision.max_image_pixels)
        pipe = self.office.pipeline()
        with self.office._pipe_lock:
            faces = pipe.still_faces(bgr) if still else pipe.analyze(bgr)
        c.frames += 1
        try:  # the enrollment library's rule: a photo of several people is refused
            face = one_face(faces, f"kiosk#{c.frames}")
        except SeveralFacesError:
            face = None
        if face is None:
            reasons = ("no_face",) if not faces else ("several_faces",)
            return FrameFeedback(
                len(faces), False, reasons, templates=self.templates(c), needed=self.needed
            )
        q = face.quality
        emb = face.embedding
        # a photo is taken as it is, but not a face smaller than the gate looks at (enroll's rule)
        ok = emb is not None and (q.ok or (still and "too_small" not in q.reasons))
        if emb is not None and ok:
            c.candidates.append(Candidate(emb, q.score, f"kiosk#{c.frames}", live=not still))
        return FrameFeedback(
            1,
            ok,
            () if ok else q.reasons or ("unusable",),
            q.face_px,
            q.sharpness,
            self.templates(c),
            self.needed,
        )


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """A JPEG/PNG in memory to BGR, or a clear refusal (never written to disk); the size its
    header claims is checked before decoding (vision.max_image_pixels)."""
    if not data or len(data) > MAX_UPLOAD:
        raise ActionError(f"image of {len(data)} bytes refused", "send a JPEG or PNG under 8 MB")
    try:
        return decode(data, "upload", max_pixels or MAX_PIXELS)
    except ImageError as e:
        raise ActionError(str(e.args[0]), "send a JPEG or PNG") from None


# the enrollment library's fixes name command-line flags: the kiosk's own words for them
_KIOSK_HINTS = {
    "pass --name": "type the visitor's name",
    "pass --guardian NAME": "type the guardian's name: a minor is enrolled with their consent",
}
_MATCHES = "already matches enrolled person"


@contextlib.contextmanager
def _in_kiosk_words() -> Iterator[None]:
    """An enrollment refusal with the fix a kiosk user can follow (no command-line flags)."""
    try:
        yield
    except EdgeGateError as e:
        if e.hint in _KIOSK_HINTS:
            raise ActionError(str(e.args[0]), _KIOSK_HINTS[e.hint]) from None
        if _MATCHES in str(e.args[0]):
            raise ActionError(
                str(e.args[0]),
                "check on the People page who this is: they may be enrolled already; two "
                "people who look this alike are enrolled at the office's command line "
                "(`edge-gate enroll --force`)",
            ) from None
        raise


@dataclass(frozen=True)
class Enrollment:
    """The kiosk form: who, under which consent, with which pass."""

    name: str
    consent_accepted: bool
    consent_version: str
    notice_lang: str = "en"
    pass_ref: str = ""
    valid_until: str = ""
    minor: bool = False
    guardian: str = ""


def enroll(
    office: Office, kiosk: Kiosk, cid: str, user: str, e: Enrollment
) -> tuple[str, int, bool]:
    """Enroll the captured person at the office and publish them; (person id, templates, sent)."""
    if not e.consent_accepted:
        raise ActionError("the consent notice was not accepted", "read it to the visitor, tick it")
    cfg = office.cfg
    if e.consent_version != cfg.console.consent_version:  # the record names what was read
        raise ActionError(
            f"consent version {e.consent_version[:40]!r} is not this console's notice "
            f"({cfg.console.consent_version or 'none configured'})",
            "reload the kiosk page and read the current notice to the visitor",
        )
    if e.notice_lang not in LANGS:
        raise ActionError(
            f"notice language {e.notice_lang[:40]!r} is not one of {', '.join(LANGS)}"
        )
    notice = cfg.console.notice_file_zh if e.notice_lang == "zh-CN" else cfg.console.notice_file
    try:  # the fingerprint of the text read to the visitor goes into their consent record
        read_notice = notice_sha256(cfg.resolve(notice) if notice else None)
    except OSError as err:  # deleted or unreadable while the console runs
        raise ActionError(
            f"the consent notice {notice} cannot be read: {err.strerror}",
            "restore the notice file the console config names (console.notice_file, "
            "notice_file_zh), reload the kiosk page and read it to the visitor",
        ) from None
    consent = Consent(e.consent_version, "electronic", user, e.guardian.strip(), read_notice)
    with _in_kiosk_words():
        check_consent(consent, e.minor)
    c = kiosk.capture(cid, user)
    pipe = office.pipeline()
    valid = (
        parse_time(e.valid_until, cfg.gate.zone, end_of_day=True) if e.valid_until.strip() else None
    )
    if valid is not None and valid < time.time():  # the gate would refuse them (pass_expired)
        raise ActionError(
            f"the pass end {e.valid_until.strip()[:40]} has passed: the gate would refuse this "
            "visitor by face",
            "check the year, or leave it empty for a pass without an end",
        )
    publish = cfg.fleet.enabled and office.issuer_key is not None
    key = office.usable_issuer_key() if publish else None
    recorded = None
    try:  # the person and the record of their consent commit together, or neither does: the
        # record is written inside the gallery's write; a gallery commit that fails after it
        # gets a second record saying the enrolment was not stored
        with (
            office._pipe_lock,
            office.gallery() as g,
            g.transaction(),
            _in_kiosk_words(),
        ):
            pid, n = enroll_person(
                g,
                pipe,
                e.name,
                consent,
                [],
                threshold=resolve_threshold(cfg.gallery.match_threshold, pipe.spec.threshold),
                pass_ref=e.pass_ref.strip(),
                valid_until=valid,
                minor=e.minor,
                max_templates=kiosk.max_templates,
                min_templates=kiosk.needed,
                candidates=list(c.candidates),
            )
            office.record(
                user, "enroll", f"added {n} templates; consent {e.consent_version}", subject=pid
            )
            recorded = pid
    except EdgeGateError as err:
        if recorded is not None:
            log.error("console enrolment_not_committed error=%s", err)
            with contextlib.suppress(EdgeGateError):
                office.record(user, "enroll", f"not done: {err}", subject=recorded)
        raise
    kiosk.drop(cid)
    if key is not None:
        publish_enrollment(cfg, key, office.gallery_db, office.gallery_key, pid)
    return pid, n, key is not None


# --- people ----------------------------------------------------------------------------------


def people(office: Office, query: str = "", limit: int | None = None) -> tuple[int, list[dict]]:
    """Enrolled people at the office matching a name, pass or id fragment (case-insensitive):
    (how many match, the first `limit` of them)."""
    q = query.strip().lower()
    now = time.time()
    found = [
        {**p, "expired": p["valid_until"] is not None and p["valid_until"] < now}
        for p in office.people_rows()
        if not q or q in p["name"].lower() or q in p["pass"].lower() or q in p["id"].lower()
    ]
    return len(found), found[:limit] if limit is not None else found


def _file_stamp(db: Path) -> tuple:
    """Changes whenever the gallery file (or its write-ahead log) is written or replaced."""
    out: list[tuple[int, int, int] | None] = []
    for p in (db, db.with_name(db.name + "-wal")):
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def has_gallery(db: Path) -> bool:
    """A gallery file is at `db` (an empty file is none, as `Gallery` counts it)."""
    try:
        return db.stat().st_size > 0
    except OSError:
        return False


def _read_people(office: Office) -> list[dict[str, Any]]:
    if not office.check_gallery():
        return []
    with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
        everyone = g.people()
    return [
        {
            "id": p.id,
            "name": p.name,
            "pass": p.pass_ref,
            "valid_until": p.valid_until,
            "minor": p.minor,
            "templates": p.template_count,
            "intact": p.intact,
        }
        for p in everyone
    ]


def reveal(office: Office, user: str, person_id: str) -> str:
    """A person's name for a decision row; the reveal itself is audited."""
    if not office.check_gallery():  # a gallery deleted underneath says so, not "no person"
        raise ActionError(f"no person {person_id} in the office gallery")
    # a key file or gallery that cannot be opened says so, with its fix (not "no person")
    with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
        found = g.people(person_id)
    if not found:
        raise ActionError(f"no person {person_id} in the office gallery")
    name = found[0].name
    office.record(user, "reveal", "name shown on the decisions page", subject=person_id)
    return name


def forget(office: Office, user: str, person_id: str, reason: str) -> tuple[bool, bool | None]:
    """Erase at the office and publish the deletion to every lane; (was here, sent: True sent,
    False queued for the office's sync, None no fleet)."""
    reason = check_reason(reason, "the deletion's reason")
    if not person_id.isprintable() or not 0 < len(person_id) <= 64:  # recorded as it is
        raise ActionError(
            f"person id {person_id[:64]!r} holds a character that is not printable, or has no "
            "length or too much",
            "use the id the People page shows (P-...)",
        )
    cfg = office.cfg
    key = office.usable_issuer_key() if cfg.fleet.enabled else None  # before anything erased
    found = False
    if office.gallery_db.exists():
        try:
            with Gallery(office.gallery_db, load_key(office.gallery_key), create=False) as g:
                found = _erase_recorded(office, g, user, person_id, reason)
                if found or g.pending_erasure():  # after the record: its bytes leave the file
                    g.scrub()
        except ErasureIncomplete:
            office.record(user, "deletion", "erasure incomplete on disk", reason=reason)
            raise
        finally:
            office.drop_people()
    sent: bool | None = None
    if key is not None:  # also when already gone here: the lanes may still hold the person
        publish_person(cfg, key, person_id, "forget")
        sent = bool(wait_all_sent(cfg, "a deletion", SENT_WAIT_S))
    if not found:  # that it happened and why, never who (as a deletion found here)
        where = (
            "nothing sent (no fleet)"
            if sent is None
            else "sent to the lanes"
            if sent
            else "queued for the lanes"
        )
        office.record(user, "deletion", f"not at the office; {where}", reason=reason)
    return found, sent


def _erase_recorded(office: Office, g: Gallery, user: str, person_id: str, reason: str) -> bool:
    """Record the deletion, then delete the person's rows and key: a record that fails (a full
    or locked audit log) erases nothing; an erasure that fails after its record gets a second
    record saying it was not done. The erasure is the gallery's own transaction, never joined
    to another: it moves the gallery to a new generation and writes the forget list ahead of
    its commit, so a rollback after it would leave the gallery looking restored from an older
    copy (every person refused). Whether they were here."""
    if not g.people(person_id):
        return False
    office.record(user, "deletion", "key destroyed; file scrubbed", reason=reason)
    try:
        return g.forget(person_id, scrub=False)
    except EdgeGateError as e:
        log.error("console erasure_not_committed error=%s", e)
        with contextlib.suppress(EdgeGateError):
            office.record(user, "deletion", f"not done: {e}", reason=reason)
        raise


# --- overrides ---------------------------------------------------------------------------------


def override(office: Office, user: str, lane: str, reason: str) -> tuple[str, bool]:
    """Open one lane's turnstile once: signed and sent to that lane, recorded in the office
    audit log with the supervisor's name (the lane records its own decision); (id, sent)."""
    cfg = office.cfg
    if not cfg.fleet.enabled:
        raise ActionError("this office has no [fleet] section: no lane to open")
    reason = check_reason(reason, "the override's reason")
    key = office.usable_issuer_key()
    recorded: list[AuditRecord] = []

    def record(r: AuditRecord) -> None:
        a.record(r)
        recorded.append(r)

    with office.audit() as a:  # recorded before it is sent (publish_override)
        try:
            q, oid = publish_override(
                cfg, key, lane, reason, user, cfg.console.override_valid_s, record=record
            )
        except EdgeGateError as e:  # recorded, then not queued: the log says it never went
            if recorded:
                log.error("console override_not_sent lane=%s error=%s", lane, e)
                with contextlib.suppress(EdgeGateError):
                    detail = by(user, f"{lane}: not sent: {e}")[:300]
                    a.record(replace(recorded[0], t=time.time(), reason="not_sent", detail=detail))
            raise
    return oid, wait_sent(cfg, [q], min(5.0, cfg.console.override_valid_s))


def sent_override(office: Office, oid: str) -> tuple[float, str] | None:
    """(time, lane) of the override this office sent with this id, from its audit record (the
    console's memory of it is gone after a restart); None: no such override was sent here."""
    with office.audit() as a:
        for r in reversed(a.records("override")):
            if r.subject == oid:
                return float(r.t), override_lane(r)
    return None


# --- tickets -----------------------------------------------------------------------------------


def check_ticket(office: Office, text: str = "", image: bytes = b"") -> dict[str, Any]:
    """Signature, validity and revocation of one ticket, as `ticket verify` decides them."""
    if image:
        # zxing-cpp loads only when a photo of a ticket is checked
        from edge.tickets.qr import read_codes

        found = pick_ticket_text(
            read_codes(decode_image(image, office.cfg.vision.max_image_pixels))
        )
        if found is None:
            return {"valid": False, "reason": "malformed", "detail": "no code found"}
        text = found
    text = text.strip()
    if not text:
        raise ActionError("no ticket given", "type the code or upload a photo of it")
    cfg = office.cfg
    opts = DeskOptions(
        pubkeys=tuple(str(cfg.resolve(k)) for k in cfg.tickets.pubkeys),
        revocations=str(office.revocation_list) if office.revocation_list else None,
        products=cfg.gate.products,
    )
    if not opts.pubkeys:
        raise ActionError("the office config names no ticket public key", "set tickets.pubkeys")
    out = next(iter(verify_tickets(opts, [text], time.time())))
    out["reason"] = str(out["reason"])
    out.pop("input", None)
    return out


def revoke(office: Office, user: str, ids: list[str]) -> tuple[list[str], int | None, bool | None]:
    """Add ids to the office list and publish the whole list; (added, count of the list
    published, sent: True sent, False queued for the office's sync, None no fleet)."""
    if office.revocation_list is None:
        raise ActionError("the office config has no revocation list", "set tickets.revocation_list")
    key = office.usable_issuer_key() if office.cfg.fleet.enabled else None  # before any change
    added = tk.revoke(office.revocation_list, ids)
    try:
        office.record(user, "revoke", f"revoked {', '.join(added) or 'nothing new'}")
    except EdgeGateError:  # no revocation stands without its record: the ids come off again
        try:
            remove(office.revocation_list, added)
        except EdgeGateError as e:
            log.error("console revoke_unrecorded undo_failed error=%s", e)
        raise
    n, sent = None, None
    if key is not None:
        n = publish_revocations(office.cfg, key, tk.load_revocations(office.revocation_list))
        sent = bool(wait_all_sent(office.cfg, "revocations", SENT_WAIT_S))
    return added, n, sent


def unrevoke(office: Office, user: str, ids: list[str]) -> tuple[list[str], bool | None]:
    """Remove ids from the office list and lift them on every lane (a signed lift naming each
    revocation, docs/FLEET.md); (removed, sent: True sent, False queued, None no fleet)."""
    if office.revocation_list is None:
        raise ActionError("the office config has no revocation list", "set tickets.revocation_list")
    key = office.usable_issuer_key() if office.cfg.fleet.enabled else None  # before any change
    removed = remove(office.revocation_list, ids)
    try:
        office.record(user, "unrevoke", f"un-revoked {', '.join(removed) or 'nothing'}")
    except EdgeGateError:  # no ticket is let in again unrecorded: the ids go back on the list
        try:
            tk.revoke(office.revocation_list, removed)
        except EdgeGateError as e:
            log.error("console unrevoke_unrecorded undo_failed error=%s", e)
        raise
    sent = None
    if key is not None and removed:
        publish_unrevocations(office.cfg, key, removed)
        sent = bool(wait_all_sent(office.cfg, "lifted revocations", SENT_WAIT_S))
    return removed, sent
