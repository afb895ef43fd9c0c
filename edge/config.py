"""One frozen dataclass tree read from TOML.

Every error names the file, the key and the value, because the operator reads it on a
gate at 7 a.m. with visitors waiting.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from edge.config_rules import LIVENESS_MODES as LIVENESS_MODES
from edge.config_rules import MODES as MODES
from edge.config_rules import validate
from edge.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "firmware_config" / "gate.toml"
# Cosine similarity: below this almost any two faces match; 1.0 and above nobody ever does.
REMOVED_KEYS = {
    "gallery.audit_retention_days": "it was never used; audit.retention_days sets audit retention"
}


@dataclass(frozen=True)
class GateConfig:
    """[gate]: which lane this is and what it admits (face, ticket or both)."""

    id: str = "gate-1"
    mode: str = "face-or-ticket"
    # A gate that lets people in by face must also accept tickets; see policy.check_mode.
    products: tuple[str, ...] = ()
    timezone: str = ""  # IANA name, e.g. "America/Los_Angeles"; "" = the system's local zone


@dataclass(frozen=True)
class CameraConfig:
    """[camera]: where frames come from, and how long to wait before reconnecting."""

    source: str = "demo"  # "demo", a file path, "/dev/videoN", "picamera2"
    width: int = 640
    height: int = 480
    fps: float = 15.0
    realtime: bool = True
    reconnect_max_s: float = 30.0


@dataclass(frozen=True)
class VisionConfig:
    """[vision]: which models run and which faces are good enough to match."""

    models_dir: str = ""  # "" = the models shipped with edge-gate
    detector: str = "blazeface_short"
    embedder: str = "mobilefacenet_float"
    threads: int = 0  # 0 = all cores
    min_score: float = 0.6
    min_face_px: int = 48
    min_sharpness: float = 20.0
    max_yaw: float = 0.45
    min_brightness: float = 40.0
    max_brightness: float = 220.0
    face_enabled: bool = True


@dataclass(frozen=True)
class GalleryConfig:
    """[gallery]: where enrolled templates live, when they match, when they expire."""

    db: str = "var/gallery.db"
    key_file: str = "var/gallery.key"
    # 0 = the embedder's rule from models.json for the gallery's size (threshold and margin)
    match_threshold: float = 0.0
    min_margin: float = 0.04  # used with a configured match_threshold
    purge_after_days: int = 30


@dataclass(frozen=True)
class PolicyConfig:
    """[policy]: how many frames must agree before the gate opens, and for whom."""

    k: int = 3
    n: int = 5
    window_s: float = 2.0
    cooldown_s: float = 5.0
    anti_passback_s: float = 60.0
    min_face_fraction: float = 0.04  # face width / frame width to count as "at the gate"
    zone: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # x0, y0, x1, y1 (fractions)
    fuse_frames: bool = False  # decide on the mean embedding of the k frames of one candidate


@dataclass(frozen=True)
class TicketsConfig:
    """[tickets]: which issuers to trust and how a ticket is checked and redeemed."""

    pubkeys: tuple[str, ...] = ()
    ledger: str = "var/ledger.db"
    revocation_list: str = ""
    clock_skew_s: float = 300.0
    antipassback_s: float = 60.0
    scan_every: int = 1  # decode QR on every Nth frame


@dataclass(frozen=True)
class RelayConfig:
    """[relay]: the GPIO wiring of the lock, door contact and exit button."""

    pin_factory: str = "mock"  # "mock", "lgpio", "rpigpio", "native"
    pin: int = 17
    active_high: bool = True
    pulse_s: float = 1.0
    door_pin: int = -1  # -1 = no door contact
    exit_button_pin: int = -1
    held_open_s: float = 10.0


@dataclass(frozen=True)
class LivenessConfig:
    # "model" (default), "model+motion" (adds the keypoint-plane veto: on the real clips it
    # fired on a live visitor and never refused an attack the model passed; MODELS.md), or
    # "off" (no presentation-attack detection: a printed photo of a pass holder opens the gate;
    # `doctor` and `privacy-report` say so)
    """[liveness]: how the gate refuses photos and screens held up to the camera."""

    mode: str = "model"
    model: str = "minifasnet_int8"
    threshold: float = 0.0  # 0 = the model's measured threshold from models.json
    # The frame and surround cues (edge/vision/cues.py) veto a face the model judged live when a
    # print's border or a screen's bezel surrounds it, or it is a head with no body on a plain
    # surface (MODELS.md gives what they cost in live visitors refused).
    cues: bool = True


@dataclass(frozen=True)
class AuditConfig:
    """[audit]: where the tamper-evident audit log lives and how long it is kept."""

    path: str = "var/audit.db"
    retention_days: int = 90


@dataclass(frozen=True)
class FleetConfig:
    """[fleet]: how this lane joins a multi-lane site over MQTT, and what to do offline."""

    broker: str = ""  # "" = this gate works alone; "mqtt://host:port" or "mqtts://host:port"
    site: str = ""
    lane: str = ""
    credentials_file: str = ""  # 0600 file "username:password"; or a systemd credential
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    site_key_file: str = ""
    offline: str = "local"  # "local" | "deny"
    offline_after_s: float = 15.0
    clock_skew_s: float = 5.0
    heartbeat_s: float = 5.0
    state_db: str = "var/fleet.db"
    keys_dir: str = "var/fleet-keys"

    @property
    def enabled(self) -> bool:
        """A [fleet] broker is configured: `edge-gate sync` links this lane to the park."""
        return bool(self.broker)


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
    session_hours: float = 12.0
    secure_cookies: bool = False  # true behind TLS (the proxy): cookies only over https
    login_attempts: int = 5  # failed logins per user and per address ...
    login_window_s: float = 300.0  # ... within this window, then refused until it passes


@dataclass(frozen=True)
class ScreenConfig:
    """[screen]: the visitor screen beside the lane (`edge-gate screen`) and the gate's socket."""

    socket: str = ""  # unix socket the gate sends notices to; "" = no lane screen
    listen: str = "127.0.0.1:8089"  # the page the kiosk browser shows
    languages: tuple[str, ...] = ("zh-CN", "en")  # shown together, the first largest
    show_names: bool = False  # a visitor's name on the screen only if the park turns it on
    hold_s: float = 4.0  # how long a notice stays before the screen returns to idle


@dataclass(frozen=True)
class SignalConfig:
    """[signal]: optional buzzer and LEDs driven by the lane screen process (gpiozero)."""

    pin_factory: str = "mock"  # "mock", "lgpio", "rpigpio", "native"
    buzzer_pin: int = -1  # -1 = none
    green_pin: int = -1
    red_pin: int = -1


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
    unknown = sorted(set(data) - names)
    for key in unknown:
        if prefix + key in REMOVED_KEYS:
            raise ConfigError(
                f"{file}: key '{prefix}{key}' was removed: {REMOVED_KEYS[prefix + key]}",
                "delete that line",
            )
    if unknown:
        raise ConfigError(
            f"{file}: unknown key '{prefix}{unknown[0]}'",
            f"remove it or check the spelling; known keys: {', '.join(sorted(names))}",
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if cls is Config and name in ("source_file", "overrides"):
            raise ConfigError(f"{file}: unknown key '{name}'", "remove it")
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
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
        data = tomllib.loads(raw.decode("utf-8"))
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
