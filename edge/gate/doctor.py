"""`edge-gate doctor`: the installer's checklist as small check records that tests can read.

The checks call the same validation `run` makes at start (edge/gate/checks.py, the relay's
pin check): a setting that makes `run` refuse to start fails here, and one that makes `run` go
ticket-only is a warning here.

Each check is a function of a `Site` (the configuration and the paths in use) that returns a
detail string for "ok", returns a `Check` for "warn" (or a richer "ok"), or raises an
`EdgeGateError` whose fix becomes the record's fix. `run_checks` never raises. A check imports
what it checks (the runtime, the models, the gallery) inside its function, so a module that
cannot load fails that one check instead of the whole checklist.
"""

from __future__ import annotations

import os
import stat
import time

from edge import config as config_mod
from edge.errors import EdgeGateError
from edge.gallery.crypto import load_key
from edge.gate import checks, doctor_site
from edge.gate.checklist import Check, Site, registry
from edge.keyfiles import credential_path
from edge.timeutil import kernel_clock_synced
from edge.vision.models import (
    catalogue_files,
    detector_spec,
    embedder_spec,
    load_catalogue,
    verify_file,
)

OWN_CHECKS, check = registry()


def doctor_checks(cfg: config_mod.Config) -> list[Check]:
    """Every check on the configuration as `run` would use it (flags already applied)."""
    return run_checks(Site(cfg, cfg.resolve(cfg.gallery.db), cfg.resolve(cfg.gallery.key_file)))


def run_checks(site: Site) -> list[Check]:
    """Run every registered check; an unexpected exception is a failed check, never a crash."""
    out = []
    for name, fn in CHECKS:
        try:
            res = fn(site)
            out.append(res if isinstance(res, Check) else Check("ok", name, res or ""))
        except EdgeGateError as e:
            out.append(Check("fail", name, e.args[0] if e.args else str(e), e.hint))
        except Exception as e:  # noqa: BLE001 - a broken check must not hide the others
            out.append(Check("fail", name, f"{type(e).__name__}: {e}"))
    return out


@check("config")
def _config(site: Site) -> str:
    return f"{site.cfg.source_file or 'defaults'}; mode {site.cfg.gate.mode}"


@check("tflite runtime")
def _runtime(site: Site) -> str:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.vision import runtime

    if not runtime.RUNTIME:
        raise EdgeGateError("no TFLite runtime installed", "pip install ai-edge-litert")
    return runtime.RUNTIME


@check("models (SHA-256)")
def _models(site: Site) -> str:
    mdir = config_mod.models_path(site.cfg)
    files = sorted(set(catalogue_files(load_catalogue(mdir))))
    for f, digest in files:
        verify_file(mdir / f, digest)
    n = len(files)
    d = detector_spec(mdir, site.cfg.vision.detector)
    e = embedder_spec(mdir, site.cfg.vision.embedder)
    return f"{n} files match models.json; using {d.name} + {e.name}"


@check("face path")
def _faces(site: Site) -> str | Check:
    if not checks.faces_wanted(site.cfg):
        return f"off by configuration (mode {site.cfg.gate.mode})"
    why = checks.faces_off_reason(site.cfg)  # raises for settings that refuse to start
    if why:
        return Check(
            "warn", "face path", f"run goes ticket-only: {why}", "`edge-gate keys init --config C`"
        )
    return "settings valid"


@check("presentation-attack detection")
def _liveness(site: Site) -> str | Check:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.vision.liveness import PadModel, PadSpec

    lv = site.cfg.liveness
    if lv.mode == "off":
        return Check(
            "warn",
            "presentation-attack detection",
            "[liveness] mode = off:"
            " a printed photo or a phone showing a pass holder opens the gate",
            'set [liveness] mode = "model" unless every lane is supervised',
        )
    spec = PadSpec.load(config_mod.models_path(site.cfg), lv.model, for_gate=True)
    PadModel(spec, threads=1)  # a missing or corrupt model fails here, as the gate's face path does
    return f"mode {lv.mode}; {spec.name}, threshold {lv.threshold or spec.threshold}"


@check("match threshold")
def _matching(site: Site) -> str:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.gallery.matcher import resolve_threshold

    cfg = site.cfg
    e = embedder_spec(config_mod.models_path(cfg), cfg.vision.embedder)
    g, p = cfg.gallery, cfg.policy
    t = resolve_threshold(g.match_threshold, e.threshold)
    src = "gallery.match_threshold" if g.match_threshold > 0 else f"measured for {e.name}"
    # Two thresholds can be in force: say which applies where, so no figure stands unexplained.
    rule = f"gate and enrollment: cosine >= {t} ({src}), lead >= {g.min_margin}"
    if g.match_threshold <= 0 and e.thresholds:
        rule = (
            f"gate: the threshold and lead per gallery size from models.json ({e.name}; see "
            "decision rule); enrollment's checks (already enrolled? the same person?): "
            f"cosine >= {t} ({src})"
        )
    return (
        f"{rule}; {p.k} of {p.n} frames in"
        f" {p.window_s} s, cooldown {p.cooldown_s} s, anti-passback {p.anti_passback_s} s"
    )


@check("cpu and kernels")
def _cpu(site: Site) -> str | Check:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.vision.cpu import read_cpu
    from edge.vision.runtime import TFLiteModel

    cpu = read_cpu()
    spec = embedder_spec(config_mod.models_path(site.cfg), site.cfg.vision.embedder)
    d = TFLiteModel(spec.path, site.cfg.vision.threads).delegation()
    detail = f"{cpu.summary()}; {spec.name}: {d.summary()}"
    if d.ops and not d.partitions:
        return Check(
            "warn", "cpu and kernels", detail,
            "install ai-edge-litert: its XNNPACK delegate holds the fast int8 kernels",
        )  # fmt: skip
    return detail


@check("gallery key file")
def _keyfile(site: Site) -> str | Check:
    if not checks.faces_wanted(site.cfg) and not credential_path(site.key).exists():
        return f"none at {site.key}: not needed, this gate admits no one by face"
    if checks.faces_wanted(site.cfg) and not credential_path(site.key).exists():
        checks.faces_off_reason(site.cfg)  # fails if the gallery exists and needs this key
        return Check(
            "warn",
            "gallery key file",
            f"{site.key} does not exist yet",
            "`edge-gate keys init --config C`",
        )
    k = load_key(site.key)
    real = credential_path(site.key)
    mode = oct(stat.S_IMODE(os.stat(real).st_mode))
    return f"{real} mode {mode}, key id {k.kid}"


@check("gallery database")
def _gallery(site: Site) -> str | Check:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.gallery.store import Gallery

    if not site.db.exists():
        if not checks.faces_wanted(site.cfg):
            return f"none at {site.db}: not needed, this gate admits no one by face"
        return Check(
            "warn",
            "gallery database",
            f"{site.db} does not exist yet (created at first enrollment)",
        )
    with Gallery(site.db, load_key(site.key), create=False) as g:
        s = g.stats()
        ok = g.conn.execute("PRAGMA quick_check").fetchone()[0]
        restored = g.forget_state().reason
        overdue = len(g.due_for_purge(time.time(), site.cfg.gallery.purge_after_days))
    if ok != "ok":
        raise EdgeGateError(f"{site.db}: integrity {ok}", "restore the gallery from a backup")
    if restored:  # the gate runs ticket-only on it (edge/gate/faces.py)
        return Check(
            "fail",
            "gallery database",
            f"{restored}; nobody is admitted by face",
            "`edge-gate forget --replay --config C` (with the office's list: --replay FILE), "
            "then systemctl reload edge-gate",
        )
    if s["pending_erasure"]:
        return Check(
            "warn",
            "gallery database",
            f"{site.db}: an erasure is still pending on disk (a reader kept old pages)",
            "run `edge-gate purge --config C` when no other process holds the gallery",
        )
    if overdue:
        return Check(
            "warn",
            "gallery database",
            f"{site.db}: {overdue} people kept past retention (pass expired more than "
            f"{site.cfg.gallery.purge_after_days} days ago, or validity unreadable)",
            "run `edge-gate purge --config C`; check that edge-gate-purge.timer is enabled",
        )
    return (
        f"{site.db}: {s['people']} people, {s['templates']} templates, schema {s['schema_version']}"
    )


@check("decision rule")
def _rule(site: Site) -> str:
    # a check imports what it checks: a module that cannot load fails only this check
    from edge.gallery.rules import describe, expected_for

    people = 0
    if site.db.exists():  # an unreadable gallery is the "gallery database" check's to report
        # a check imports what it checks: a module that cannot load fails only this check
        from edge.gallery.store import Gallery

        try:
            with Gallery(site.db, load_key(site.key), create=False) as g:
                people = g.stats()["people"]
        except EdgeGateError:
            people = 0
    return "gate: " + describe(expected_for(site.cfg, people))


@check("time sync")
def _time_sync(site: Site) -> str | Check:
    synced = kernel_clock_synced()
    if synced:
        return "the kernel reports the clock synchronised"
    return Check(
        "warn",
        "time sync",
        "the clock is not synchronised"
        if synced is False
        else "cannot tell if the clock is synced",
        "enable NTP (systemd-timesyncd) or fit an RTC; edge-gate.service waits for "
        "systemd-time-wait-sync, and tickets are refused while the clock is behind the ledger",
    )


# Every check in the order doctor prints them: these, then the lane's own (tickets, ledger,
# camera, GPIO, clock, disk, fleet: doctor_site.py).
CHECKS = [*OWN_CHECKS, *doctor_site.SITE_CHECKS]
