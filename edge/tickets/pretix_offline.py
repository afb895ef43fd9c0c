"""pretix tickets decided offline, in pretixSCAN's order and with its reason words.

The lane's pretix folder (DIR, kept by `edge-gate pretix sync` or filled by hand) holds what the
pretix REST API returns: `event.json` (the event detail, with `valid_keys` and `timezone`),
`checkinlist.json` (this lane's check-in list), `revokedsecrets.json` and `blockedsecrets.json`
(lists of the API's objects), and, when sync wrote it, `items.json` (the event's products).
`decide` follows libpretixsync's decision for a secret it has no
order data for (AsyncCheckProvider.checkOfflineWithoutData):

    invalid (no key verifies it) → revoked → blocked → invalid_time (validFrom/validUntil)
    → product (item not on the list) → invalid (another date of a series)
    → product (item unknown to the event, when items.json is there) → rules
    → already_redeemed (allow_multiple_entries, allow_entry_after_exit) → valid

`pretix_reason` is pretix's word; `reason` is edge-gate's own (the gate's audit log, events and
`ticket verify` use it). Two differences from pretixSCAN, both refusals: a check-in rule this lane
cannot evaluate exactly is refused (`rules_unsupported`), and only the canonical spelling of a
secret is genuine (see pretix_sig1). Pure: no I/O in `decide`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import ConfigError, TicketError
from edge.tickets import pretix_rules
from edge.tickets.format import PREFIX, Kind, Reason, Ticket
from edge.tickets.pretix_sig1 import (
    Sig1Invalid,
    Sig1Ticket,
    canonical,
    load_keys,
    split_secret,
    verify_secret,
)

FILES = ("event.json", "checkinlist.json", "revokedsecrets.json", "blockedsecrets.json")
ITEMS = "items.json"  # optional: the event's products; sync writes it (pretixSCAN checks it too)
SYNC_STATE = "sync-state.json"  # written by `edge-gate pretix sync`: when it last pulled
MULTI_ENTRY_COUNT = 0xFFFF  # what the ledger counts against on a list with multiple entries
# The largest file of the folder a lane reads (~300 000 revoked secrets): a damaged or runaway
# file is refused with its size instead of filling the memory of the gate.
MAX_FILE = 64 << 20

# pretix's reason words (checkinrpc/redeem, failed_checkins), as pretixSCAN uses them offline.
VALID = "valid"
INVALID = "invalid"
REVOKED = "revoked"
BLOCKED = "blocked"
INVALID_TIME = "invalid_time"
PRODUCT = "product"
RULES = "rules"
ALREADY_REDEEMED = "already_redeemed"
ERROR = "error"
PRETIX_REASONS = (VALID, INVALID, REVOKED, BLOCKED, INVALID_TIME, PRODUCT, RULES, ALREADY_REDEEMED)

_SAFE_SEED = re.compile(r"[A-Za-z0-9]{1,32}")
_FIX = "run `edge-gate pretix sync --config C --once`, or write the file from the pretix API"


@dataclass(frozen=True)
class PretixEvent:
    """The event as far as offline checks need it: keys, time zone and dates (for rules)."""

    slug: str
    tz: ZoneInfo
    keys: tuple[Ed25519PublicKey, ...]
    times: dict[str, dt.datetime | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckinList:
    """One pretix check-in list: which products and date it admits, how often, its rules."""

    id: int
    name: str = ""
    all_products: bool = True
    limit_products: frozenset[int] = frozenset()
    subevent: int | None = None
    allow_multiple_entries: bool = False
    allow_entry_after_exit: bool = True
    rules: Any = None


@dataclass(frozen=True)
class PretixData:
    """Everything in a lane's pretix folder, read and checked once."""

    event: PretixEvent
    checkin_list: CheckinList
    revoked: frozenset[str]
    blocked: frozenset[str]
    items: frozenset[int] | None = None  # the event's product ids; None = not known here


@dataclass(frozen=True)
class PretixDecision:
    """The offline decision on one secret: pretix's word, edge-gate's reason, the ticket."""

    pretix_reason: str
    reason: str
    sig1: Sig1Ticket | None = None
    detail: str = ""

    @property
    def valid(self) -> bool:
        """True when pretix would let this entry in."""
        return self.pretix_reason == VALID


# --- reading the folder --------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """One JSON file of the folder; ConfigError when it is missing, larger than MAX_FILE, or
    not JSON (nested too deep and numbers too long to convert included)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(f"pretix data {path} does not exist", _FIX) from None
    except OSError as e:
        raise ConfigError(f"pretix data {path} cannot be read: {e.strerror or e}", _FIX) from None
    if len(raw) > MAX_FILE:
        raise ConfigError(
            f"pretix data {path} is larger than {MAX_FILE >> 20} MiB, more than a lane reads",
            "check the file (a damaged copy?), then run "
            "`edge-gate pretix sync --config C --once` again",
        )
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, a number of 4300+ digits
        raise ConfigError(f"pretix data {path} cannot be read: {e}", _FIX) from None
    except RecursionError:
        raise ConfigError(f"pretix data {path} cannot be read: nested too deep", _FIX) from None


def finite_time(value: Any) -> float | None:
    """A Unix time read from a file, or None when it is not a finite number."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _ids(value: Any, what: str, path: Path) -> frozenset[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"pretix data {path}: {what} is not a list of ids", _FIX)
    return frozenset(value)


def parse_event(obj: Any, path: Path) -> PretixEvent:
    """event.json -> PretixEvent; ConfigError naming the file when a needed field is wrong."""
    if not isinstance(obj, dict):
        raise ConfigError(f"pretix data {path} is not an event object", _FIX)
    try:
        tz = ZoneInfo(str(obj.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"pretix data {path}: unknown timezone {obj.get('timezone')!r}") from None
    try:
        keys = load_keys(obj.get("valid_keys") or {})
    except TicketError as e:
        raise ConfigError(f"pretix data {path}: {e}", _FIX) from None
    if not keys:
        raise ConfigError(
            f"pretix data {path} has no valid_keys.pretix_sig1: every ticket would be invalid",
            "set the event's ticket code generator to 'pretix signature scheme 1' in pretix, "
            "then sync again",
        )
    times = {k: _time(obj.get(k)) for k in ("date_from", "date_to", "date_admission")}
    return PretixEvent(str(obj.get("slug", "")), tz, tuple(keys), times)


def parse_checkin_list(obj: Any, path: Path) -> CheckinList:
    """checkinlist.json -> CheckinList."""
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), int):
        raise ConfigError(f"pretix data {path} is not a check-in list object (no id)", _FIX)
    sub = obj.get("subevent")
    if isinstance(sub, dict):  # ?expand=subevent
        sub = sub.get("id")
    return CheckinList(
        id=obj["id"],
        name=str(obj.get("name", "")),
        all_products=_flag(obj, "all_products", False, path),
        limit_products=_ids(obj.get("limit_products", []), "limit_products", path),
        subevent=sub if isinstance(sub, int) and sub > 0 else None,
        allow_multiple_entries=_flag(obj, "allow_multiple_entries", False, path),
        allow_entry_after_exit=_flag(obj, "allow_entry_after_exit", True, path),
        rules=obj.get("rules") or None,
    )


def _flag(obj: dict, key: str, default: bool, path: Path) -> bool:
    """A check-in list's yes/no setting, absent or null: `default`. Anything but a JSON boolean
    is refused: the string "false" would read as true (every product, entries without limit)."""
    v = obj.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ConfigError(f"pretix data {path}: {key} is {v!r}, not true or false", _FIX)
    return v


def _secrets(obj: Any, path: Path, blocked: bool) -> frozenset[str]:
    if isinstance(obj, dict) and "results" in obj:  # one API page saved as it came
        obj = obj["results"]
    if not isinstance(obj, list):
        raise ConfigError(f"pretix data {path} is not a list of secrets", _FIX)
    out = set()
    for item in obj:
        if not isinstance(item, dict) or not isinstance(item.get("secret"), str):
            raise ConfigError(f"pretix data {path}: an entry has no secret", _FIX)
        if not blocked or item.get("blocked") is True:
            out.add(canonical(item["secret"]))
    return frozenset(out)


def _items(obj: Any, path: Path) -> frozenset[int]:
    if isinstance(obj, dict) and "results" in obj:
        obj = obj["results"]
    if not isinstance(obj, list) or not all(
        isinstance(i, dict) and isinstance(i.get("id"), int) for i in obj
    ):
        raise ConfigError(f"pretix data {path} is not a list of products with ids", _FIX)
    return frozenset(i["id"] for i in obj)


def load_dir(path: str | Path) -> PretixData:
    """Read a lane's pretix folder; a missing or damaged file is a ConfigError (never "none").

    The four files are required; `items.json` is read when present (a folder written by hand
    may leave it out: then a product unknown to the event cannot be told from a known one).
    """
    d = Path(path)
    if not d.is_dir():
        raise ConfigError(f"pretix folder {d} does not exist", _FIX)
    items = _items(read_json(d / ITEMS), d / ITEMS) if (d / ITEMS).exists() else None
    return PretixData(
        parse_event(read_json(d / "event.json"), d / "event.json"),
        parse_checkin_list(read_json(d / "checkinlist.json"), d / "checkinlist.json"),
        _secrets(read_json(d / "revokedsecrets.json"), d / "revokedsecrets.json", False),
        _secrets(read_json(d / "blockedsecrets.json"), d / "blockedsecrets.json", True),
        items,
    )


def check_configured(data: PretixData, path: str | Path, event: str, list_id: int) -> None:
    """ConfigError when the folder holds another event or check-in list than the lane is
    configured for (`pretix.event`, `pretix.checkin_list`; "" and 0: not set): a lane moved to
    another event or list never decides by the old one's keys and products."""
    if event and data.event.slug != event:
        held, wanted = f"event {data.event.slug!r}", f"pretix.event {event!r}"
    elif list_id and data.checkin_list.id != list_id:
        held, wanted = f"check-in list {data.checkin_list.id}", f"pretix.checkin_list {list_id}"
    else:
        return
    raise ConfigError(
        f"pretix data {path} holds {held}, the lane is configured for {wanted}",
        "run `edge-gate pretix sync --config C --once` (it pulls the configured event and list), "
        "or set the configured one back",
    )


def dir_stamp(path: str | Path) -> tuple:
    """Changes whenever sync replaces a file: the gate re-reads the folder when it does."""
    out: list[tuple] = []
    for name in (*FILES, ITEMS):
        try:
            st = os.stat(Path(path) / name)
            out.append((name, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size))
        except OSError:
            out.append((name, None))
    return tuple(out)


def data_time(path: str | Path) -> float | None:
    """When the folder's data was last known good: sync's last complete pull, else the oldest
    file's time (a folder filled by hand); None when there is no data."""
    d = Path(path)
    with contextlib.suppress(ConfigError):
        state = read_json(d / SYNC_STATE)
        t = finite_time(state.get("pulled_at")) if isinstance(state, dict) else None
        if t is not None:
            return t
    try:
        return min(os.stat(d / name).st_mtime for name in FILES)
    except OSError:
        return None


# --- the decision --------------------------------------------------------------------------------


def _aware(now: float | dt.datetime) -> dt.datetime:
    if isinstance(now, dt.datetime):
        return now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(now, dt.UTC)


def check_secret(data: PretixData, secret: str, now: float | dt.datetime) -> PretixDecision:
    """Everything that does not depend on earlier entries: signature, lists, time, product."""
    try:
        t = verify_secret(secret, data.event.keys)
    except Sig1Invalid as e:
        reason = Reason.MALFORMED if e.malformed else Reason.INVALID_SIGNATURE
        return PretixDecision(INVALID, reason, detail=str(e))
    text = canonical(secret)
    if text in data.revoked:
        return PretixDecision(REVOKED, Reason.REVOKED, t)
    if text in data.blocked:
        return PretixDecision(BLOCKED, Reason.BLOCKED, t)
    ts = _aware(now).timestamp()
    if t.valid_from is not None and t.valid_from > ts:
        return PretixDecision(INVALID_TIME, Reason.NOT_YET_VALID, t)
    if t.valid_until is not None and t.valid_until < ts:
        return PretixDecision(INVALID_TIME, Reason.EXPIRED, t)
    cl = data.checkin_list
    if not cl.all_products and t.item not in cl.limit_products:
        return PretixDecision(PRODUCT, Reason.WRONG_GATE, t, f"product {t.item}")
    if cl.subevent is not None and cl.subevent != t.subevent:
        return PretixDecision(INVALID, Reason.WRONG_GATE, t, f"date {t.subevent}")
    if data.items is not None and t.item not in data.items:  # pretixSCAN: "Item not found"
        return PretixDecision(PRODUCT, Reason.WRONG_GATE, t, f"product {t.item} not in the event")
    return PretixDecision(VALID, Reason.OK, t)


def decide(
    data: PretixData,
    secret: str,
    now: float | dt.datetime,
    entries: Sequence[float] = (),
    gate: int | None = None,
) -> PretixDecision:
    """pretixSCAN's offline decision; `entries` are earlier entries of this ticket on this list
    (Unix times, from the ledger: this lane's and the other lanes')."""
    first = check_secret(data, secret, now)
    if not first.valid or first.sig1 is None:
        return first
    return decide_entry(data, first.sig1, now, entries, gate)


def decide_entry(
    data: PretixData,
    t: Sig1Ticket,
    now: float | dt.datetime,
    entries: Sequence[float] = (),
    gate: int | None = None,
) -> PretixDecision:
    """The part that depends on earlier entries: the list's rules, then how often it admits."""
    cl = data.checkin_list
    if cl.rules:
        ctx = pretix_rules.RuleContext(
            now=_aware(now),
            tz=data.event.tz,
            product=t.item,
            variation=t.variation or None,
            entries=tuple(entries),
            gate=gate,
            event_times=data.event.times if not t.subevent else {},
        )
        try:
            if not pretix_rules.allows(cl.rules, ctx):
                return PretixDecision(RULES, Reason.RULES, t)
        except pretix_rules.Unsupported as e:
            return PretixDecision(RULES, Reason.RULES_UNSUPPORTED, t, str(e))
        except Exception as e:  # noqa: BLE001 - as pretixSCAN: a rule that fails refuses
            return PretixDecision(RULES, Reason.RULES_UNSUPPORTED, t, f"rule failed: {e}")
    # The lane records entries only (no exit scans), so allow_entry_after_exit never applies.
    if entries and not cl.allow_multiple_entries:
        return PretixDecision(ALREADY_REDEEMED, Reason.ALREADY_USED, t, "no entries left")
    return PretixDecision(VALID, Reason.OK, t)


def ticket_id(list_id: int, t: Sig1Ticket) -> str:
    """The id the ledger, the fleet and the audit log use: the check-in list and the random
    seed, never the secret itself (the secret opens the gate, the seed alone does not). Entries
    count per list, as in pretix, where check-in lists are independent of each other."""
    if _SAFE_SEED.fullmatch(t.seed):
        return f"pretix-{list_id}-{t.seed}"
    return f"pretix-{list_id}-" + t.seed.encode("utf-8").hex()[:32]


def ledger_ticket(data: PretixData, t: Sig1Ticket) -> Ticket:
    """The edge-gate ticket the ledger counts (and the fleet shares) for a pretix secret."""
    multi = data.checkin_list.allow_multiple_entries
    return Ticket(
        ticket_id=ticket_id(data.checkin_list.id, t),
        product=f"pretix-item-{t.item}",
        valid_from=t.valid_from or 0,
        valid_until=t.valid_until or 0,
        kind=Kind.ENTRIES if multi else Kind.ONE_TIME,
        count=MULTI_ENTRY_COUNT if multi else 1,
    )


def is_pretix_text(text: str) -> bool:
    """Route a scanned code: pretix's unless it is an edge-gate ticket (`EG…`, base32).

    A pretix secret can begin with "EG" too (one in 4096), so the shape decides: a text that
    splits as a sig1 secret is pretix's; anything else starting with the edge-gate prefix is not.
    """
    if not text.strip().startswith(PREFIX):
        return True
    try:
        split_secret(text)
    except Sig1Invalid:
        return False
    return True


_ID = re.compile(r"pretix-(\d+)-(.+)")


def proof_ticket(data: PretixData, secret: str, claimed_id: str) -> Ticket:
    """What another lane's redemption of a pretix secret proves (fleet): the secret, verified
    with this event's keys, counted under the sender's check-in list (named in the id it
    claims). Raises ValueError (Sig1Invalid) when it proves nothing or names another ticket.

    On a lane of the same list the entry counts against this list's setting; a redemption on
    another list is kept under that list's id, which this lane never counts (pretix's lists are
    independent), and is never taken for a double use.
    """
    t = verify_secret(secret, data.event.keys)
    m = _ID.fullmatch(claimed_id or "")
    if m is None or ticket_id(int(m.group(1)), t) != claimed_id:
        raise ValueError(f"redemption names {claimed_id!r} but proves pretix seed {t.seed!r}")
    if int(m.group(1)) == data.checkin_list.id:
        return ledger_ticket(data, t)
    return Ticket(claimed_id, f"pretix-item-{t.item}", kind=Kind.ENTRIES, count=MULTI_ENTRY_COUNT)


_CACHE: dict[str, tuple[tuple, PretixData]] = {}


def load_dir_cached(path: str | Path) -> PretixData:
    """load_dir, read again only when sync replaced a file (for checks made per message)."""
    key, stamp = str(path), dir_stamp(path)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    data = load_dir(path)
    _CACHE[key] = (stamp, data)
    return data


def lane_proof(cfg: Any, secret: str, claimed_id: object) -> Ticket:
    """`proof_ticket` against this lane's own pretix folder (for `edge-gate sync`); ValueError
    when it proves nothing, or the folder cannot be read."""
    try:
        data = load_dir_cached(cfg.resolve(cfg.pretix.dir))
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return proof_ticket(data, secret, str(claimed_id))
