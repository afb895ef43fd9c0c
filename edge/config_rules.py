"""The cross-field rules of a configuration: values that would make the gate unsafe or useless.

Kept apart from `edge.config` (which reads and types the file) so each stays one concept; every
rule raises a ConfigError naming the file, the key and the value.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.config import Config, FleetConfig

MODES = ("face-or-ticket", "ticket-only", "face-and-ticket")
LIVENESS_MODES = ("model+motion", "model", "off")
MATCH_THRESHOLD_RANGE = (0.3, 0.999)
MIN_MARGIN_RANGE = (0.0, 0.5)
CLOCK_SKEW_RANGE_S = (0.0, 3600.0)


def validate(cfg: Config) -> Config:
    """Check cross-field rules; raise ConfigError naming the key."""
    f = cfg.source_file or "<defaults>"
    if cfg.gate.mode not in MODES:
        raise ConfigError(
            f"{f}: key 'gate.mode' = {cfg.gate.mode!r} is not one of {', '.join(MODES)}"
        )
    p = cfg.policy
    if not (1 <= p.k <= p.n):
        raise ConfigError(f"{f}: keys 'policy.k' = {p.k} and 'policy.n' = {p.n} need 1 <= k <= n")
    if cfg.relay.pulse_s <= 0 or cfg.relay.pulse_s > 30:
        raise ConfigError(
            f"{f}: key 'relay.pulse_s' = {cfg.relay.pulse_s} must be in (0, 30] seconds"
        )
    if cfg.vision.threads < 0:
        raise ConfigError(f"{f}: key 'vision.threads' = {cfg.vision.threads} must be >= 0")
    _validate_matching(cfg, f)
    if cfg.liveness.mode not in LIVENESS_MODES:
        raise ConfigError(
            f"{f}: key 'liveness.mode' = {cfg.liveness.mode!r} is not one of "
            f"{', '.join(LIVENESS_MODES)}"
        )
    x0, y0, x1, y1 = p.zone
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ConfigError(
            f"{f}: key 'policy.zone' = {list(p.zone)} must be fractions x0<x1, y0<y1 in [0, 1]"
        )
    if cfg.gate.timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(cfg.gate.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{f}: key 'gate.timezone' = {cfg.gate.timezone!r} is not a known time zone",
                'use an IANA name such as "Europe/Madrid", or "" for the system zone',
            ) from None
    from edge.gate.audit import check_retention

    try:
        check_retention(cfg.audit.retention_days)
    except ConfigError as e:
        raise ConfigError(f"{f}: {e.args[0]}", e.hint) from None
    _validate_fleet(f, cfg.fleet)
    _validate_pretix(f, cfg)
    return cfg


def _validate_pretix(f: str, cfg: Config) -> None:
    """[pretix]: the token kind and periods; the sync-only keys are checked by `pretix sync`."""
    px = cfg.pretix
    if px.auth not in ("token", "device"):
        raise ConfigError(f"{f}: key 'pretix.auth' = {px.auth!r} is not 'token' or 'device'")
    if px.sync_every_s <= 0 or px.stale_after_s <= 0:
        raise ConfigError(
            f"{f}: keys 'pretix.sync_every_s' = {px.sync_every_s} and 'pretix.stale_after_s' = "
            f"{px.stale_after_s} must be > 0"
        )
    if px.checkin_list < 0 or px.gate < 0:
        raise ConfigError(f"{f}: keys 'pretix.checkin_list' and 'pretix.gate' must be >= 0")


def _validate_fleet(f: str, fl: FleetConfig) -> None:
    """A [fleet] section needs a broker URL, and a site and lane that are safe in MQTT topics."""
    if not fl.enabled:
        return
    if not re.fullmatch(r"mqtts?://[^/:\s]+(:\d{1,5})?/?", fl.broker):
        raise ConfigError(
            f"{f}: key 'fleet.broker' = {fl.broker!r} is not mqtt://host:port or mqtts://host:port"
        )
    for key in ("site", "lane"):
        v = getattr(fl, key)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
            raise ConfigError(
                f"{f}: key 'fleet.{key}' = {v!r} must be 1-64 letters, digits, '.', '_' or '-'",
                "MQTT topics are built from it",
            )
    if fl.offline not in ("local", "deny"):
        raise ConfigError(f"{f}: key 'fleet.offline' = {fl.offline!r} is not 'local' or 'deny'")


def _validate_matching(cfg: Config, f: str) -> None:
    """Thresholds, margins and timing that decide who gets in: sane ranges or refuse to load."""
    g, p, t = cfg.gallery, cfg.policy, cfg.tickets
    lo, hi = MATCH_THRESHOLD_RANGE
    if g.match_threshold != 0 and not lo <= g.match_threshold <= hi:
        raise ConfigError(
            f"{f}: key 'gallery.match_threshold' = {g.match_threshold} must be 0 (the embedder's"
            f" measured threshold) or a cosine similarity in [{lo}, {hi}]",
            "set 0, or a value from `edge-gate eval`",
        )
    lo, hi = MIN_MARGIN_RANGE
    if not lo <= g.min_margin <= hi:
        raise ConfigError(f"{f}: key 'gallery.min_margin' = {g.min_margin} must be in [{lo}, {hi}]")
    if g.purge_after_days < 0:
        raise ConfigError(
            f"{f}: key 'gallery.purge_after_days' = {g.purge_after_days} must be >= 0"
        )
    if p.window_s <= 0 or p.cooldown_s < 0:
        raise ConfigError(
            f"{f}: keys 'policy.window_s' = {p.window_s} and 'policy.cooldown_s' = {p.cooldown_s}"
            " need window_s > 0 and cooldown_s >= 0"
        )
    if p.anti_passback_s < p.cooldown_s:
        raise ConfigError(
            f"{f}: key 'policy.anti_passback_s' = {p.anti_passback_s} is shorter than"
            f" 'policy.cooldown_s' = {p.cooldown_s}",
            "anti-passback must last at least as long as the cooldown",
        )
    lo, hi = CLOCK_SKEW_RANGE_S
    if not lo <= t.clock_skew_s <= hi:
        raise ConfigError(
            f"{f}: key 'tickets.clock_skew_s' = {t.clock_skew_s} must be in "
            f"[{lo:g}, {hi:g}] seconds",
            "a larger skew lets expired tickets in; fix the gate's clock instead",
        )
