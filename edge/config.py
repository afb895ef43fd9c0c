"""One frozen dataclass tree read from TOML; each key declares its own rule on its field.

A key's type is its annotation. What else it accepts (a range, choices, a shape), its unit and
what it means are given once, by `setting(...)` on the field: the loader enforces them and the
error quotes them. Rules that tie several keys of one section together are that section's
`check()`. A field declared without `setting` is still type-checked. Every error names the file,
the key and the value, because the operator reads it on a gate at 7 a.m. with visitors waiting.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, get_type_hints

from edge.errors import ConfigError
from edge.timeutil import known_zone, site_zone

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "firmware_config" / "gate.toml"

T = TypeVar("T")


class Removed(NamedTuple):
    """A key that is no longer read: why, and the key that replaced it if it was renamed."""

    why: str
    new_key: str = ""


# Keys a config may still hold from an older edge-gate: loading refuses them and says what to do.
REMOVED_KEYS: dict[str, Removed] = {
    "gallery.audit_retention_days": Removed(
        "it was never used; audit.retention_days sets audit retention"
    ),
    "tickets.antipassback_s": Removed(
        "renamed, spelled like policy.anti_passback_s", "tickets.anti_passback_s"
    ),
    "fleet.clock_skew_s": Removed(
        "renamed: it is this lane's clock against the fleet's, while tickets.clock_skew_s is the"
        " ticket office's clock against this gate's",
        "fleet.max_clock_offset_s",
    ),
}


# --- how a key declares its rule ----------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What one key accepts besides its type, in what unit, and what it means.

    `ge`/`gt`/`le` bound a number, `choices` list the accepted values, `pattern` (with `shape`,
    its wording) constrains a string; `also` names values accepted outside those (e.g. 0 = "the
    model's own"); `check` returns what is wrong with a value that no range can describe.
    For a list key the rule applies to each item.
    """

    doc: str = ""
    unit: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] = ()
    pattern: str = ""
    shape: str = ""
    also: tuple[tuple[Any, str], ...] = ()
    check: Callable[[Any], str] | None = None
    fix: str = ""

    def allowed(self) -> str:
        """The accepted values in words, e.g. "0.0 (the model's) or in [0.3, 0.999]"."""
        unit = f" {self.unit}" if self.unit else ""
        low = ""
        if self.ge is not None or self.gt is not None:
            low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.pattern or self.shape:
            text = self.shape or f"matching {self.pattern}"
        elif low and self.le is not None:
            text = f"in {low}, {self.le:g}]{unit}"
        elif low:
            text = f"{'>=' if low[0] == '[' else '>'} {low[1:]}{unit}"
        else:
            text = f"<= {self.le:g}{unit}" if self.le is not None else ""
        special = " or ".join(f"{v!r} ({meaning})" for v, meaning in self.also)
        return " or ".join(t for t in (special, text) if t)

    def problem(self, value: Any) -> str:
        """What is wrong with `value` ("" when it is accepted)."""
        if isinstance(value, tuple):
            return next((p for p in map(self.problem, value) if p), "")
        if any(value == v and not isinstance(value, bool) for v, _ in self.also):
            return ""
        if self.check is not None and (why := self.check(value)):
            return why
        inside = (
            (not self.choices or value in self.choices)
            and (not self.pattern or re.fullmatch(self.pattern, value) is not None)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
        )
        return "" if inside else f"must be {self.allowed()}"


MAX_THREADS = 64  # [vision] threads and --threads: more is a typo, never a speed-up


def setting(default: T, doc: str = "", **rule: Any) -> T:
    """A config field with its rule, e.g. `pulse_s: float = setting(1.0, "...", gt=0, le=30)`."""
    return field(default=default, metadata={"rule": Rule(doc, **rule)})


def rule_of(f: dataclasses.Field) -> Rule | None:
    """The rule a field declared with `setting`, or None (type checks only)."""
    return f.metadata.get("rule")


def _zone_problem(name: str) -> str:
    return "" if not name or known_zone(name) else "is not a known time zone"


MODES = ("face-or-ticket", "ticket-only", "face-and-ticket")
LIVENESS_MODES = ("model+motion", "model", "off")
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "native")
MIN_AUDIT_RETENTION_DAYS = 7  # below this, a misconfiguration or an intruder could erase evidence
MAX_JUNK_WINDOW_S = 3600.0  # junk codes folded per window: at most an hour per record
NAME_IN_TOPICS = r"[A-Za-z0-9_.-]{1,64}"
NO_PIN = (-1, "none")
SCREEN_LANGUAGES = ("zh-CN", "en")  # the languages the lane screen has its sentences in


# --- the sections -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateConfig:
    """[gate]: which lane this is and what it admits (face, ticket or both)."""

    id: str = setting("gate-1", "name written to every audit record and event line")
    # A gate that lets people in by face must also accept tickets; see policy.check_mode.
    mode: str = setting("face-or-ticket", "what opens the gate", choices=MODES)
    products: tuple[str, ...] = setting((), "ticket products accepted here; () = every product")
    timezone: str = setting(
        "",
        "the site's IANA time zone; days and typed dates are counted in it",
        also=(("", "this machine's zone"),),
        check=_zone_problem,
        shape='an IANA time zone name such as "Europe/Madrid"',
        fix='use an IANA name such as "Europe/Madrid", or "" for the system zone',
    )

    @property
    def zone(self) -> dt.tzinfo:
        """The site's time zone: dates typed without an offset and per-day limits use it."""
        return site_zone(self.timezone)


@dataclass(frozen=True)
class CameraConfig:
    """[camera]: where frames come from, and how long to wait before reconnecting."""

    source: str = setting("demo", '"demo", a file path, "/dev/videoN" or "picamera2"')
    width: int = setting(640, "capture width asked of a live camera", unit="pixels", ge=1)
    height: int = setting(480, "capture height asked of a live camera", unit="pixels", ge=1)
    fps: float = setting(15.0, "capture rate asked of a live camera", unit="frames/s", gt=0)
    realtime: bool = setting(True, "replay files at their recorded rate")
    reconnect_max_s: float = setting(
        30.0, "longest wait between camera reconnect attempts", unit="seconds", gt=0
    )


@dataclass(frozen=True)
class VisionConfig:
    """[vision]: which models run and which faces are good enough to match."""

    models_dir: str = setting("", 'folder of the .tflite files and models.json; "" = shipped')
    detector: str = setting("blazeface_short", "face detector from models.json")
    embedder: str = setting("mobilefacenet_float", "face embedder from models.json")
    # at most MAX_THREADS: the interpreter makes them all (a Pi has 4 cores; tens of thousands
    # crashed or hung every face command with no message)
    threads: int = setting(0, "interpreter threads; 0 = all cores", ge=0, le=MAX_THREADS)
    min_score: float = setting(0.6, "minimum detector confidence", ge=0, le=1)
    min_face_px: int = setting(48, "smallest face side", unit="pixels", ge=1)
    min_sharpness: float = setting(20.0, "least variance of the Laplacian", ge=0)
    max_yaw: float = setting(0.45, "largest |yaw|", unit="inter-eye distances", ge=0)
    min_brightness: float = setting(40.0, "darkest accepted mean brightness", ge=0, le=255)
    max_brightness: float = setting(220.0, "brightest accepted mean brightness", ge=0, le=255)
    face_enabled: bool = setting(True, "false = never run the face models (ticket-only)")
    max_image_pixels: int = setting(
        100_000_000,
        "largest image decoded (width x height), read from its header first: a small file "
        "claiming 30,000 x 30,000 pixels must not make a Pi allocate gigabytes",
        unit="pixels",
        ge=1_000_000,
        fix="a camera frame must fit: at least 1,000,000",
    )

    def check(self) -> None:
        """The brightness range is not empty."""
        if self.min_brightness > self.max_brightness:
            raise ConfigError(
                f"keys 'vision.min_brightness' = {self.min_brightness} and "
                f"'vision.max_brightness' = {self.max_brightness} need min <= max"
            )


@dataclass(frozen=True)
class GalleryConfig:
    """[gallery]: where enrolled templates live, when they match, when they expire."""

    db: str = setting("var/gallery.db", "encrypted SQLite gallery")
    key_file: str = setting("var/gallery.key", "key-encryption key file (0600)")
    match_threshold: float = setting(
        0.0,
        "cosine similarity needed for a match",
        ge=0.3,
        le=0.999,
        also=((0.0, "the embedder's rule from models.json for the gallery's size"),),
        fix="set 0, or a value from `edge-gate eval`",
    )
    min_margin: float = setting(
        0.04, "lead of the best person over the second (with a set match_threshold)", ge=0, le=0.5
    )
    purge_after_days: int = setting(
        30, "`purge` removes people whose pass expired this long ago", unit="days", ge=0
    )
    purge_max_clock_jump_days: int = setting(
        30,
        "`purge` erases nothing when the clock moved this much (or the purge's own days, if "
        "fewer) further than the time that elapsed since the first purge of the same boot "
        "(a clock set forward)",
        unit="days",
        ge=0,
        also=((0, "no such check"),),
    )


@dataclass(frozen=True)
class PolicyConfig:
    """[policy]: how many frames must agree before the gate opens, and for whom."""

    k: int = setting(3, "frames of the n that must match the same person", ge=1)
    n: int = setting(5, "face frames looked at", ge=1)
    window_s: float = setting(2.0, "the k matches must fall within", unit="seconds", gt=0)
    cooldown_s: float = setting(5.0, "no second grant for one person", unit="seconds", ge=0)
    anti_passback_s: float = setting(
        60.0, "no second face grant at this gate for one person", unit="seconds", ge=0
    )
    min_face_fraction: float = setting(
        0.04, 'face width / frame width to count as "at the gate"', ge=0, le=1
    )
    zone: tuple[float, float, float, float] = setting(
        (0.0, 0.0, 1.0, 1.0), "x0, y0, x1, y1 of the gate zone, fractions of the frame"
    )
    fuse_frames: bool = setting(False, "decide on the mean embedding of one candidate's k frames")

    def check(self) -> None:
        """k of n, anti-passback at least the cooldown, and a zone inside the frame."""
        if not self.k <= self.n:
            raise ConfigError(
                f"keys 'policy.k' = {self.k} and 'policy.n' = {self.n} need 1 <= k <= n"
            )
        if self.anti_passback_s < self.cooldown_s:
            raise ConfigError(
                f"key 'policy.anti_passback_s' = {self.anti_passback_s} is shorter than"
                f" 'policy.cooldown_s' = {self.cooldown_s}",
                "anti-passback must last at least as long as the cooldown",
            )
        x0, y0, x1, y1 = self.zone
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ConfigError(
                f"key 'policy.zone' = {list(self.zone)} must be fractions x0<x1, y0<y1 in [0, 1]"
            )


@dataclass(frozen=True)
class TicketsConfig:
    """[tickets]: which issuers to trust and how a ticket is checked and redeemed."""

    pubkeys: tuple[str, ...] = setting((), "issuer public keys (several for rotation)")
    ledger: str = setting("var/ledger.db", "redemption ledger (SQLite)")
    revocation_list: str = setting("", "revoked ticket ids, one per line")
    clock_skew_s: float = setting(
        300.0,
        "the ticket office's clock against this gate's: slack on a ticket's validity window",
        unit="seconds",
        ge=0,
        le=3600,
        fix="a larger skew lets expired tickets in; fix the gate's clock instead",
    )
    anti_passback_s: float = setting(
        60.0, "a ticket just used at this gate is refused again", unit="seconds", ge=0
    )
    scan_every: int = setting(
        1,
        "decode codes on every Nth frame (ticket QR codes; other formats on every 5th of those)",
        ge=1,
    )


@dataclass(frozen=True)
class RelayConfig:
    """[relay]: the GPIO wiring of the lock, door contact and exit button."""

    pin_factory: str = setting("mock", "gpiozero pin factory", choices=PIN_FACTORIES)
    pin: int = setting(17, "BCM pin driving the turnstile relay", ge=0)
    active_high: bool = setting(True, "pin high = relay energised (gate open)")
    pulse_s: float = setting(1.0, "relay held open per grant", unit="seconds", gt=0, le=30)
    door_pin: int = setting(-1, "door contact (BCM pin)", ge=0, also=(NO_PIN,))
    exit_button_pin: int = setting(-1, "exit button (BCM pin)", ge=0, also=(NO_PIN,))
    held_open_s: float = setting(10.0, "a door open longer is held open", unit="seconds", gt=0)


@dataclass(frozen=True)
class LivenessConfig:
    """[liveness]: how the gate refuses photos and screens held up to the camera.

    "off" means no presentation-attack detection: a printed photo of a pass holder opens the
    gate; `doctor` and `privacy-report` say so. "model+motion" adds the keypoint-plane veto: on
    the recorded clips it fired on a live visitor and never refused an attack the model passed
    (MODELS.md), so "model" is the default.
    """

    mode: str = setting("model", "presentation-attack detection", choices=LIVENESS_MODES)
    model: str = setting("silentface_int8", 'a model of the "liveness" group in models.json')
    threshold: float = setting(
        0.0,
        "live-probability threshold",
        gt=0,
        le=1,
        also=((0.0, "the model's measured threshold from models.json"),),
    )
    # The frame and surround cues (edge/vision/cues.py) veto a face the model judged live when a
    # print's border or a screen's bezel surrounds it, or it is a head with no body on a plain
    # surface (MODELS.md gives what they cost in live visitors refused).
    cues: bool = setting(True, "the frame and surround cues beside the liveness model")
    # A face that has not moved by a third of a pixel since it came (edge/vision/stillness.py)
    # is not judged live until it does, and is refused as a picture after 1.5 s (MODELS.md
    # gives what it costs in live visitors waited for or refused).
    stillness: bool = setting(True, "refuse a face that does not move at all (a propped photo)")


@dataclass(frozen=True)
class AuditConfig:
    """[audit]: where the tamper-evident audit log lives and how long it is kept."""

    path: str = setting("var/audit.db", "append-only, hash-chained decision log")
    retention_days: int = setting(
        90,
        "records older than this are purged (a hashed checkpoint stays)",
        unit="days",
        ge=MIN_AUDIT_RETENTION_DAYS,
        fix=f"set it to at least {MIN_AUDIT_RETENTION_DAYS}",
    )
    evidence_key: str = setting(
        "",
        "HMAC key of the audit and ledger chains (0600; only the gate and `audit verify` read it);"
        ' "" = evidence.key beside the audit log',
    )
    junk_window_s: float = setting(
        60.0,
        "unreadable or invalid codes are folded into one audit record per window, with a count",
        unit="seconds",
        ge=0,
        le=MAX_JUNK_WINDOW_S,
        also=((0.0, "every code recorded"),),
        fix="set it to 60 (the default), or 0 to record every code",
    )


@dataclass(frozen=True)
class FleetConfig:
    """[fleet]: how this lane joins a multi-lane site over MQTT, and what to do offline."""

    broker: str = setting(
        "",
        "the park's MQTT broker",
        pattern=r"mqtts?://[^/:\s]+(:\d{1,5})?/?",
        shape="mqtt://host:port or mqtts://host:port",
        also=(("", "this gate works alone"),),
    )
    site: str = setting(
        "",
        "the park's name in MQTT topics",
        pattern=NAME_IN_TOPICS,
        shape="1-64 letters, digits, '.', '_' or '-'",
        also=(("", "no fleet"),),
        fix="MQTT topics are built from it",
    )
    lane: str = setting(
        "",
        "this lane's name in MQTT topics",
        pattern=NAME_IN_TOPICS,
        shape="1-64 letters, digits, '.', '_' or '-'",
        also=(("", "no fleet"),),
        fix="MQTT topics are built from it",
    )
    credentials_file: str = setting("", '0600 file "username:password"; or a systemd credential')
    tls_ca_file: str = setting("", "CA bundle trusted for mqtts://")
    tls_cert_file: str = setting("", "client certificate for mqtts://")
    tls_key_file: str = setting("", "client certificate's key")
    site_key_file: str = setting("", "site key that opens enrollment records from the office")
    offline: str = setting("local", "while cut off from the broker", choices=("local", "deny"))
    offline_after_s: float = setting(
        15.0, "cut off after this long without the broker", unit="seconds", gt=0
    )
    max_clock_offset_s: float = setting(
        5.0,
        "refuse tickets, and purge nothing, when this lane's clock is further off the fleet's",
        unit="seconds",
        ge=0,
    )
    heartbeat_s: float = setting(5.0, "sync's heartbeat period", unit="seconds", gt=0)
    state_db: str = setting("var/fleet.db", "sync state (SQLite) read by the gate")
    keys_dir: str = setting("var/fleet-keys", "ticket public keys received from the office")
    lane_key_file: str = setting(
        "var/lane.key", "this lane's Ed25519 key (0600, made by `fleet join`): signs what it sends"
    )
    roster_file: str = setting(
        "var/fleet-roster.json", "office only: the lanes' names and public keys it publishes"
    )

    @property
    def enabled(self) -> bool:
        """A [fleet] broker is configured: `edge-gate sync` links this lane to the park."""
        return bool(self.broker)

    def check(self) -> None:
        """A lane in a fleet has a site and a lane name."""
        for key in ("site", "lane"):
            if self.enabled and not getattr(self, key):
                raise ConfigError(
                    f"key 'fleet.{key}' = '' must be 1-64 letters, digits, '.', '_' or '-'",
                    f"a lane with a fleet.broker needs a fleet.{key}",
                )


# --- staff console, lane screen, visitor signal (docs/CONSOLE.md) -------------------------------


@dataclass(frozen=True)
class ConsoleConfig:
    """[console]: the office's staff web app (`edge-gate console`)."""

    listen: str = "127.0.0.1:8088"  # host:port; park network only behind a TLS proxy
    users_db: str = "var/console.db"
    secret_file: str = "var/console.secret"  # signs session cookies; created 0600 on first start
    issuer_key: str = ""  # issuer.key that signs what the console publishes; "" = no publishing
    consent_version: str = ""  # the notice version visitors accept at the enrollment kiosk
    notice_file: str = ""  # the consent notice (English)
    notice_file_zh: str = ""  # the consent notice (zh-CN)
    session_hours: float = setting(12.0, "a login lasts this long", unit="hours", gt=0)
    secure_cookies: bool = False  # true behind TLS (the proxy): cookies only over https
    login_attempts: int = setting(5, "failed logins per user and per address ...", ge=1)
    login_window_s: float = setting(
        300.0, "... within this window, then refused until it passes", unit="seconds", gt=0
    )
    override_valid_s: float = setting(
        30.0, "a supervisor's override is refused by the lane after", unit="seconds", gt=0, le=120
    )
    max_connections: int = setting(
        64, "connections served at once; more are answered 503 (busy)", ge=1
    )
    max_per_address: int = setting(
        16, "... and from one client address (the local TLS proxy: no limit of its own)", ge=1
    )


@dataclass(frozen=True)
class ScreenConfig:
    """[screen]: the visitor screen beside the lane (`edge-gate screen`) and the gate's socket."""

    socket: str = ""  # unix socket the gate sends notices to; "" = no lane screen
    listen: str = "127.0.0.1:8089"  # the page the kiosk browser shows
    languages: tuple[str, ...] = setting(
        ("zh-CN", "en"), "shown together, the first largest", choices=SCREEN_LANGUAGES
    )
    show_names: bool = False  # a visitor's name on the screen only if the park turns it on
    hold_s: float = setting(
        4.0, "how long a notice stays before the screen returns to idle", unit="seconds", gt=0
    )

    def check(self) -> None:
        """The screen shows at least one language."""
        if not self.languages:
            raise ConfigError(
                "key 'screen.languages' = [] must name at least one of "
                + ", ".join(SCREEN_LANGUAGES)
            )


@dataclass(frozen=True)
class SignalConfig:
    """[signal]: optional buzzer and LEDs driven by the lane screen process (gpiozero)."""

    pin_factory: str = setting("mock", "gpiozero pin factory", choices=PIN_FACTORIES)
    buzzer_pin: int = setting(-1, "buzzer (BCM pin)", ge=0, also=(NO_PIN,))
    green_pin: int = setting(-1, "green LED (BCM pin)", ge=0, also=(NO_PIN,))
    red_pin: int = setting(-1, "red LED (BCM pin)", ge=0, also=(NO_PIN,))


@dataclass(frozen=True)
class PretixConfig:
    """[pretix]: tickets sold in a pretix shop, decided offline from a folder that sync fills."""

    dir: str = setting(
        "", "the folder the lane decides pretix tickets from", also=(("", "no pretix"),)
    )
    url: str = setting("", "the shop's base URL (only `pretix sync` uses it)")
    organizer: str = setting("", "the organizer's short name in pretix")
    event: str = setting("", "the event's short name in pretix")
    checkin_list: int = setting(0, "the id of this lane's check-in list", ge=0)
    token_file: str = setting("", "0600 file with the API token (or credential pretix.token)")
    auth: str = setting("token", "the token's kind", choices=("token", "device"))
    gate: int = setting(0, "pretix gate id for check-in rules on `gate`", ge=0)
    sync_every_s: float = setting(60.0, "pull and upload period", unit="seconds", gt=0)
    stale_after_s: float = setting(
        3600.0, "`doctor` warns when the data is older", unit="seconds", gt=0
    )
    tls_ca_file: str = setting("", "a private CA for the shop's HTTPS")

    @property
    def enabled(self) -> bool:
        """A [pretix] folder is configured: the lane decides pretix secrets."""
        return bool(self.dir)


@dataclass(frozen=True)
class Config:
    """The whole edge-gate.toml, so every command reads the same validated settings."""

    gate: GateConfig = field(default_factory=GateConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    pretix: PretixConfig = field(default_factory=PretixConfig)
    source_file: str = ""  # where it was read from; relative paths resolve against its folder
    # (section, key, value) set by override(), e.g. command-line flags; reload() applies them again
    overrides: tuple[tuple[str, str, Any], ...] = ()

    def resolve(self, path: str) -> Path:
        """Resolve a path from the config: relative to the config file's folder.

        The shipped default config (no --config) means the current working directory, like
        paths given on the command line, so one command never splits its files between the
        working directory and the checkout.
        """
        p = Path(os.path.expandvars(os.path.expanduser(path)))
        if p.is_absolute():
            return p
        return (self.base_dir() / p).resolve()

    def base_dir(self) -> Path:
        """Where this config's relative paths start."""
        if not self.source_file or Path(self.source_file).resolve() == DEFAULT_CONFIG.resolve():
            return Path.cwd()
        return Path(self.source_file).parent


BOOKKEEPING = ("source_file", "overrides")  # fields of Config that are not keys of the file


def sections(cfg: Config) -> Iterator[tuple[str, Any]]:
    """Each [section] of a config as (name, its dataclass instance)."""
    for f in dataclasses.fields(cfg):
        if f.name not in BOOKKEEPING:
            yield f.name, getattr(cfg, f.name)


def validate(cfg: Config) -> Config:
    """Every key's rule, then each section's own cross-key rules; ConfigError names the key."""
    try:
        for name, section in sections(cfg):
            for f in dataclasses.fields(section):
                rule = rule_of(f)
                value = getattr(section, f.name)
                if rule is not None and (why := rule.problem(value)):
                    raise ConfigError(f"key '{name}.{f.name}' = {value!r} {why}", rule.fix or None)
            if hasattr(section, "check"):
                section.check()
    except ConfigError as e:
        raise ConfigError(f"{cfg.source_file or '<defaults>'}: {e.args[0]}", e.hint) from None
    return cfg


def models_path(cfg: Config) -> Path:
    """Where the .tflite files and models.json are: vision.models_dir, or the shipped models/."""
    return cfg.resolve(cfg.vision.models_dir) if cfg.vision.models_dir else PROJECT_ROOT / "models"


def _coerce(file: str, key: str, value: Any, typ: Any) -> Any:
    origin = getattr(typ, "__origin__", None)
    where = f"{file}: key '{key}' = {value!r}"
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(
                f"{where} must be true or false", "write true or false without quotes"
            )
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number", "write a number without quotes")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number", "write a number without quotes")
        if not math.isfinite(value):  # TOML allows nan and inf; every comparison would lie
            raise ConfigError(f"{where} must be a finite number", "write an ordinary number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string", "put the value in double quotes")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list", "write it as [a, b, ...]")
        args = typ.__args__
        inner = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(file, key, v, inner) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items")
        return tuple(_coerce(file, key, v, t) for v, t in zip(value, args, strict=True))
    raise ConfigError(f"{where}: unsupported type {typ}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], file: str, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if cls is Config:  # its bookkeeping fields are no keys of the file (refused below)
        names -= set(BOOKKEEPING)
    unknown = sorted(set(data) - names)
    for key in unknown:
        if gone := REMOVED_KEYS.get(prefix + key):
            raise ConfigError(
                f"{file}: key '{prefix}{key}' was removed: {gone.why}",
                f"write {gone.new_key} = {json.dumps(data[key])} instead"
                if gone.new_key
                else "delete it",
            )
    if unknown:
        raise ConfigError(
            f"{file}: unknown key '{prefix}{unknown[0]}'",
            f"remove it or check the spelling; known keys: {', '.join(sorted(names))}",
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        typ = hints[name]
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: '{prefix}{name}' must be a [table]")
            kwargs[name] = _build(typ, value, file, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(file, prefix + name, value, typ)
    return cls(**kwargs)


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read a TOML config; None reads the shipped default."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", "pass --config with an existing file"
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not a TOML statement
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path}: not valid TOML: {e}", "fix the line named in the message"
        ) from None
    cfg = _build(Config, data, str(path), "")
    return validate(dataclasses.replace(cfg, source_file=str(path.resolve())))


def override(cfg: Config, **sections: dict[str, Any]) -> Config:
    """Return a copy with some keys replaced, e.g. override(cfg, camera={"source": "x.mp4"}).

    None means "not given" (a flag left out keeps the file's value). The overrides are kept in
    the copy, so reload() re-applies them to the re-read file.
    """
    changes: dict[str, Any] = {}
    applied = list(cfg.overrides)
    for name, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            changes[name] = dataclasses.replace(getattr(cfg, name), **values)
            applied += [(name, k, v) for k, v in values.items()]
    return validate(dataclasses.replace(cfg, **changes, overrides=tuple(applied)))


def reload(cfg: Config) -> Config:
    """Read cfg's file again and re-apply its overrides (SIGHUP); defaults stay defaults."""
    if not cfg.source_file:
        return cfg
    fresh = load(cfg.source_file)
    sections: dict[str, dict[str, Any]] = {}
    for name, key, value in cfg.overrides:
        sections.setdefault(name, {})[key] = value
    return override(fresh, **sections)


def fixtures_dir() -> Path:
    """The shared recorded fixtures: $EDGE_FIXTURES, else ../shared/fixtures beside the project."""
    env = os.environ.get("EDGE_FIXTURES")
    return Path(env) if env else (PROJECT_ROOT.parent / "shared" / "fixtures")
