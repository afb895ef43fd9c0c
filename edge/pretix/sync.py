"""`edge-gate pretix sync`: keep the lane's pretix folder in step with the shop, send check-ins.

A separate process (systemd/edge-gate-pretix-sync.service, network to the shop only), never the
gate. Each round, as pretixSCAN does: upload first, then download.

Upload: the ledger's upload outbox, oldest first. An entry the lane granted goes to
`checkinrpc/redeem` with `force` (it happened offline, whatever pretix now thinks), the scan's
own `datetime` and the nonce chosen when it was decided; a refused scan goes to the list's
`failed_checkins`, with the same nonce (and as X-Idempotency-Key). A row is deleted only once
pretix answered; killed before that, it is sent again and pretix's nonce handling keeps it one
check-in. Answers that can never change (400, 404) are logged and dropped, as pretixSCAN does.

Download: the event detail (`valid_keys`, `timezone`), its products' ids, this lane's
check-in list, and the
revoked and blocked secrets: in full the first time, then only what changed
(`revokedsecrets/?created_since=`, `blockedsecrets/?updated_since=`, newest first, the newest
timestamp of the first page kept as the next starting point, like libpretixsync). Every file is
replaced atomically (temp, fsync, rename); `sync-state.json` goes last, saying when the folder
was last complete. While the shop is unreachable the folder keeps its last good data and the
lane keeps deciding from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import files
from edge.config import Config
from edge.errors import ConfigError, EdgeGateError, Unforeseen
from edge.pretix.api import (
    NOT_PRETIX,
    PretixAPIError,
    PretixClient,
    PretixUnreachable,
    read_token,
)
from edge.tickets import pretix_offline as po
from edge.tickets.ledger import Ledger
from edge.tickets.pretix_desk import FAILED, REDEEM

log = logging.getLogger(__name__)
UPLOAD_BATCH = 50


@dataclass
class SyncState:
    """What sync remembers between rounds, kept in the folder's sync-state.json."""

    pulled_at: float | None = None  # when the folder was last complete
    revoked_since: str | None = None  # newest `created` seen in revokedsecrets
    blocked_since: str | None = None  # newest `updated` seen in blockedsecrets
    source: str | None = None  # the shop, organizer and event those stamps are of
    last_error: str = ""
    last_attempt: float | None = None
    uploaded: int = 0  # check-ins sent since this process started (not persisted meaning)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> SyncState:
        """The state sync left, or a fresh one (a full download follows); a field of the wrong
        type counts as missing, so a damaged file costs a full download, never a crash."""
        try:
            raw = po.read_json(folder / po.SYNC_STATE)
        except ConfigError:
            return cls()
        if not isinstance(raw, dict):
            return cls()

        def text(key: str) -> str | None:
            v = raw.get(key)
            return v if isinstance(v, str) and v else None

        return cls(
            pulled_at=po.finite_time(raw.get("pulled_at")),
            revoked_since=text("revoked_since"),
            blocked_since=text("blocked_since"),
            source=text("source"),
            last_error=str(raw.get("last_error") or "")[:300],
            last_attempt=po.finite_time(raw.get("last_attempt")),
        )

    def as_json(self) -> dict[str, Any]:
        """The persisted fields."""
        return {
            "pulled_at": self.pulled_at,
            "revoked_since": self.revoked_since,
            "blocked_since": self.blocked_since,
            "source": self.source,
            "last_error": self.last_error,
            "last_attempt": self.last_attempt,
        }


def write_atomic(path: Path, obj: Any) -> None:
    """Replace a JSON file whole-or-nothing: the gate never reads half a file."""
    write_text(path, json.dumps(obj, separators=(",", ":")))


def write_text(path: Path, text: str) -> None:
    """Replace a file of the folder whole-or-nothing."""
    files.make_private_dirs(path.parent)
    files.write_atomic(path, text, 0o644)


def _read_list(path: Path) -> list[dict] | None:
    """The secrets a file of the folder holds, as sync wrote them; None when it is missing or
    does not read as such a list (damaged, cut short, edited): a full download then replaces it,
    never only what changed since the last pull merged into nothing."""
    try:
        obj = po.read_json(path)
    except ConfigError:
        return None
    if not isinstance(obj, list) or not all(
        isinstance(o, dict) and isinstance(o.get("secret"), str) for o in obj
    ):
        return None
    return obj


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Objects by id, a newer copy replacing an older one."""
    by_id = {o.get("id"): o for o in old}
    for o in new:
        by_id[o.get("id")] = o
    return sorted(by_id.values(), key=lambda o: (str(o.get("id")),))


def _upload_row(raw: Any) -> dict | None:
    """A queued check-in as pretix_desk wrote it ({list, event, body}), or None."""
    try:
        row = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    ok = (
        isinstance(row, dict)
        and isinstance(row.get("body"), dict)
        and isinstance(row.get("list"), int)
        and isinstance(row.get("event"), str)
    )
    return row if ok else None


class PretixSync:
    """One lane's link to its pretix shop; `step()` is one round, `run()` loops until stopped."""

    def __init__(self, cfg: Config, client: PretixClient | None = None, ledger=None):
        px = cfg.pretix
        missing = [k for k in ("dir", "url", "organizer", "event") if not getattr(px, k)]
        if not px.checkin_list:
            missing.append("checkin_list")
        if not px.token_file and client is None:
            missing.append("token_file")
        if missing:
            raise ConfigError(
                f"[pretix] needs {', '.join('pretix.' + k for k in missing)} for `pretix sync`",
                "see the [pretix] section in firmware_config/gate.toml",
            )
        self.cfg, self.px = cfg, px
        self.folder = cfg.resolve(px.dir)
        ca = str(cfg.resolve(px.tls_ca_file)) if px.tls_ca_file else ""
        self.client = client or PretixClient(
            px.url, read_token(cfg.resolve(px.token_file)), px.auth, ca
        )
        self._ledger = ledger
        self._own_ledger = ledger is None
        self.state = SyncState.load(self.folder)
        self.stop = threading.Event()
        self.reachable: bool | None = None
        self._unforeseen_seen = Unforeseen()

    # --- paths -----------------------------------------------------------------------------------

    @property
    def event_path(self) -> str:
        """The event's API path."""
        return f"organizers/{self.px.organizer}/events/{self.px.event}/"

    # --- download --------------------------------------------------------------------------------

    def _since_pages(self, resource: str, stamp_field: str, since_param: str, since: str | None):
        params: dict[str, Any] = {"ordering": f"-{stamp_field}"}
        if since:
            params[since_param] = since
        newest, items = None, []
        for page in self.client.pages(self.event_path + resource + "/", params):
            if not all(isinstance(o, dict) and isinstance(o.get("secret"), str) for o in page):
                raise PretixAPIError(  # never a list with holes: a secret left out would pass
                    f"pretix {resource}: an entry without a secret", 200, None, NOT_PRETIX
                )
            if newest is None and page and isinstance(page[0].get(stamp_field), str):
                newest = page[0][stamp_field]
            items += page
        return items, newest

    def _checkin_list(self) -> dict:
        """The lane's check-in list, from the list of lists: a pretixSCAN device (security
        profile `pretixscan`) may read that list, not one list's own detail view."""
        want = self.px.checkin_list
        for page in self.client.pages(self.event_path + "checkinlists/"):
            for clist in page:
                if isinstance(clist, dict) and clist.get("id") == want:
                    return clist
        raise PretixAPIError(
            f"pretix event {self.px.event} has no check-in list {want}",
            404,
            None,
            "check pretix.checkin_list (the id in the list's address in pretix's back office)",
        )

    def pull(self) -> None:
        """Download everything the offline decision needs and replace the folder's files."""
        event = self.client.get(self.event_path)
        if not isinstance(event, dict) or event.get("slug") != self.px.event:
            raise PretixAPIError(f"pretix event {self.px.event}: unexpected answer", 200, None)
        po.parse_event(event, self.folder / "event.json")  # refuse to write an unusable event
        clist = self._checkin_list()
        po.parse_checkin_list(clist, self.folder / "checkinlist.json")
        items = [o for page in self.client.pages(self.event_path + "items/") for o in page]
        rev_path, blk_path = (
            self.folder / "revokedsecrets.json",
            self.folder / "blockedsecrets.json",
        )
        old_revoked, old_blocked = _read_list(rev_path), _read_list(blk_path)
        # the stamps of another shop, organizer or event say nothing of this one's secrets
        source = f"{self.px.url.rstrip('/')} {self.px.organizer}/{self.px.event}"
        moved = self.state.source != source
        full = self.state.pulled_at is None or moved or old_revoked is None or old_blocked is None
        revoked, rev_new = self._since_pages(
            "revokedsecrets", "created", "created_since", None if full else self.state.revoked_since
        )
        blocked, blk_new = self._since_pages(
            "blockedsecrets", "updated", "updated_since", None if full else self.state.blocked_since
        )
        if old_revoked is not None and old_blocked is not None and not full:
            revoked = _merge(old_revoked, revoked)
            blocked = _merge(old_blocked, blocked)
        elif self.state.pulled_at is not None and not moved:
            log.warning(
                "pretix revoked or blocked secrets in %s did not read; downloaded in full",
                self.folder,
            )
        blocked = [o for o in blocked if o.get("blocked") is True]  # unblocked ones: forgotten
        ids = [
            {"id": o["id"]} for o in items if isinstance(o, dict) and isinstance(o.get("id"), int)
        ]
        out = {
            self.folder / po.ITEMS: ids,
            self.folder / "event.json": event,
            self.folder / "checkinlist.json": clist,
            rev_path: revoked,
            blk_path: blocked,
        }
        texts = {path: json.dumps(obj, separators=(",", ":")) for path, obj in out.items()}
        for path, text in texts.items():  # all or none: the gate would refuse a larger file
            if len(text.encode("utf-8")) > po.MAX_FILE:
                raise ConfigError(
                    f"pretix sync: {path.name} would be larger than {po.MAX_FILE >> 20} MiB, "
                    "more than a lane reads; the folder keeps its last data",
                    "check what the shop answers for this event (its revoked or blocked secrets)",
                )
        for path, text in texts.items():
            try:
                write_text(path, text)
            except OSError as e:  # a full disk, no permission, a file turned into a folder
                raise ConfigError(
                    f"pretix sync cannot write {path}: {e.strerror or e}",
                    "give `pretix sync`'s user a writable [pretix] dir with room, holding only "
                    "its files",
                ) from None
        if full:  # never a stamp of the data replaced (another event's, say)
            self.state.revoked_since, self.state.blocked_since = rev_new, blk_new
        else:
            self.state.revoked_since = rev_new or self.state.revoked_since
            self.state.blocked_since = blk_new or self.state.blocked_since
        self.state.source = source
        self.state.pulled_at = time.time()

    # --- upload ----------------------------------------------------------------------------------

    def ledger(self):
        """The gate's ledger (its upload outbox), opened on first use."""
        if self._ledger is None:
            self._ledger = Ledger(self.cfg.resolve(self.cfg.tickets.ledger), self.cfg.gate.id)
        return self._ledger

    def _send(self, kind: str, row: dict) -> tuple[bool, str]:
        """(done, note): done means pretix has it, or never will (dropped, logged)."""
        body = row["body"]
        if kind == REDEEM:
            r = self.client.post(f"organizers/{self.px.organizer}/checkinrpc/redeem/", body)
            status = r.body.get("status") if isinstance(r.body, dict) else None
            if status == "ok":
                return True, "ok"
        elif kind == FAILED:
            path = f"organizers/{self.px.organizer}/events/{row['event']}/checkinlists/"
            r = self.client.post(f"{path}{row['list']}/failed_checkins/", body, body.get("nonce"))
            if r.status in (200, 201) and r.is_json and isinstance(r.body, dict):
                return True, "ok"
        else:
            return True, f"unknown upload kind {kind!r} dropped"
        if not r.is_json:  # a proxy's or another server's page: pretix has not answered yet
            return False, f"pretix answered {r.status} with something other than JSON"
        if r.status in (400, 404):  # it will not change on a later try (pretixSCAN drops these)
            reason = r.body.get("reason") if isinstance(r.body, dict) else r.body
            return True, f"pretix answered {r.status} {reason!s:.120}; dropped"
        return False, f"pretix answered {r.status}"

    def upload(self) -> int:
        """Send queued check-ins, oldest first; stops at the first that must be retried."""
        led, sent = self.ledger(), 0
        while not self.stop.is_set():
            rows = led.upload_batch(UPLOAD_BATCH)
            if not rows:
                break
            for row_id, _t, kind, raw in rows:
                row = _upload_row(raw)
                if row is None:  # written by this lane, so damaged: it can never be sent
                    log.error("pretix upload row=%d unreadable; dropped", row_id)
                    led.upload_done(row_id)
                    continue
                try:
                    done, note = self._send(kind, row)
                except PretixAPIError as e:  # 401/403: a setup fault, keep the row
                    led.upload_failed(row_id, str(e))
                    raise
                if not done:
                    led.upload_failed(row_id, note)
                    return sent
                if note != "ok":
                    log.warning("pretix upload row=%d kind=%s %s", row_id, kind, note)
                led.upload_done(row_id)
                sent += 1
        self.state.uploaded += sent
        return sent

    # --- the loop --------------------------------------------------------------------------------

    def step(self) -> bool:
        """One round: upload, then download. True when the shop was reached and the folder
        is complete; an upload that fails for a reason of its own (the ledger missing, a
        refused token) does not hold the download back."""
        self.state.last_attempt = time.time()
        ok, error, n = False, "", 0
        try:
            try:
                n = self.upload()
            except PretixUnreachable:
                raise
            except EdgeGateError as e:
                error = f"upload: {e}"
                log.error("pretix upload error=%s", e)
            self.pull()
            ok = True
        except PretixUnreachable as e:
            error = str(e)
        except EdgeGateError as e:  # refused by the shop, unusable data
            error = str(e)
            log.error("pretix sync error=%s", e)
        self._link(ok, error)
        with contextlib.suppress(OSError):
            write_atomic(self.folder / po.SYNC_STATE, self.state.as_json())
        if n:
            log.info("pretix uploaded check-ins=%d", n)
        return ok

    def _link(self, ok: bool, error: str) -> None:
        """Remember the last error; log when the shop comes and goes, not every round."""
        self.state.last_error = error
        if ok != self.reachable:
            if ok:
                log.info("pretix reachable url=%s", self.px.url)
            else:
                log.warning("pretix unreachable; the lane decides from its last data: %s", error)
            self.reachable = ok

    def run(self, clock: Callable[[], float] = time.monotonic) -> int:
        """Loop until SIGTERM/SIGINT: a round every pretix.sync_every_s."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
            signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        try:
            while not self.stop.is_set():
                t0 = clock()
                try:
                    self.step()
                except Exception as e:  # a round failing as no step foresaw: the next one runs
                    self._unforeseen(e)
                self.stop.wait(max(0.0, self.px.sync_every_s - (clock() - t0)))
        finally:
            self.close()
        return 0

    def _unforeseen(self, e: Exception) -> None:
        """A round that raised what no step expects: logged (its traceback the first time that
        error is seen), the link said to be down, the ledger opened afresh for the next round.
        The folder is written only by whole files, so the gate goes on with its last data."""
        kind, first, unsaid = self._unforeseen_seen.seen(e)
        if unsaid is not None:  # the same error at most once a minute, with the count since
            log.error(
                "pretix sync round failed error=%s%s (fix: `edge-gate --debug pretix sync --once "
                "--config ...` shows it; report it as a bug; the lane decides from its last data "
                "and the next round runs in pretix.sync_every_s)",
                kind,
                f" ({unsaid} more times since its last line)" if unsaid else "",
                exc_info=first,
            )
        self._link(False, f"internal error: {kind}")
        with contextlib.suppress(Exception):  # the state itself may be what failed
            write_atomic(self.folder / po.SYNC_STATE, self.state.as_json())
        if self._own_ledger:
            self.close()

    def close(self) -> None:
        """Close the ledger if this sync opened it."""
        if self._ledger is not None:
            with contextlib.suppress(EdgeGateError, OSError):
                self._ledger.close()
            self._ledger = None
