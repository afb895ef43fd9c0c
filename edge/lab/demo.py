"""`edge-gate demo`: a fresh workspace, a ticket office, tickets held to a camera, and, where the
shared recorded fixtures exist, an enrolled pass holder on a real stage clip.
"""

from __future__ import annotations

import base64
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import EdgeGateError
from edge.gallery.crypto import init_key
from edge.gallery.enroll import enroll
from edge.gallery.store import Consent, Gallery
from edge.lab.synth import Segment, write_clip
from edge.tickets.ledger import init_ledger

# Marks a folder the demo made: only such a folder is emptied by the next run.
MARKER = ".edge-gate-demo"
MARKER_TEXT = (
    "This folder was made by edge-gate's demo, which deletes it and starts afresh on every run.\n"
    "Keep nothing else here.\n"
)


@dataclass(frozen=True)
class Scene:
    """One demo clip: what it shows and which decisions to expect."""

    title: str
    clip: Path
    expected: list[tuple[str, str, str]]  # (decision, via, reason), in order; empty = no check


def ticket_scene(office: Path, out: Path, now: float, seed: int = 1, prefix: str = "DAY") -> Scene:
    """Valid, forged, expired, foreign code, replayed: printed and on a phone, held at angles."""
    key = tk.load_private(office / "issuer.key")

    def issue(tid, **kw):
        return tk.sign(tk.Ticket(tid, "day", int(now - 3600), int(now + 86400), **kw), key)

    valid = issue(f"{prefix}-0001")
    payload, sig = tk.split_text(issue(f"{prefix}-0002"))
    forged = tk.PREFIX + base64.b32encode(
        payload + sig[:-1] + bytes([sig[-1] ^ 0x55])
    ).decode().rstrip("=")
    expired = tk.sign(
        tk.Ticket(f"{prefix}-0003", "day", int(now - 3 * 86400), int(now - 2 * 86400)), key
    )
    segments = [
        Segment(0.8),
        Segment(1.5, valid, "print", "valid day ticket"),
        Segment(1.0),
        Segment(1.5, forged, "phone", "forged signature"),
        Segment(1.0),
        Segment(1.5, expired, "print", "expired ticket"),
        Segment(1.0),
        Segment(1.5, "https://example.org/menu", "phone", "a restaurant QR code"),
        Segment(1.0),
        Segment(1.5, valid, "phone", "the valid ticket again (replay)"),
        Segment(0.6),
    ]
    write_clip(out, segments, fps=10.0, seed=seed)
    expected = [
        ("grant", "ticket", "ok"),
        ("deny", "ticket", "invalid_signature"),
        ("deny", "ticket", "expired"),
        ("deny", "ticket", "malformed"),
        ("deny", "ticket", "already_used"),
    ]
    return Scene(
        "tickets held to the camera: valid, forged, expired, foreign QR, replay", out, expected
    )


def enroll_person(cfg, pipe, name: str, photos: list[Path]) -> str:
    """Create the workspace's gallery key and enroll one consenting person from photos."""
    with Gallery(cfg.resolve(cfg.gallery.db), init_key(cfg.resolve(cfg.gallery.key_file))) as g:
        pid, _ = enroll(
            g,
            pipe,
            name,
            Consent("demo-notice-v1", operator="demo"),
            [str(p) for p in photos],
            threshold=pipe.spec.threshold,
            min_templates=1,  # the demo enrolls from whatever photos it is given, even one
        )
    return pid


def prepare(
    workdir: Path, fixtures: Path | None, now: float | None = None
) -> tuple[Path, list[Scene]]:
    """Create the demo workspace; returns (config path, scenes)."""
    now = now or time.time()
    fresh_workdir(workdir)
    tk.keygen(workdir / "office")
    scenes = []
    cfg = workdir / "gate.toml"
    cfg.write_text(
        '[gate]\nid = "demo-gate"\n\n[camera]\nrealtime = true\n\n'
        '[gallery]\ndb = "gallery.db"\nkey_file = "gallery.key"\n\n'
        '[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        'revocation_list = "revoked.txt"\n\n'
        '[relay]\npin_factory = "mock"\npulse_s = 1.0\n\n[audit]\npath = "audit.db"\n'
    )
    demo_state(config_mod.load(cfg))
    if fixtures is not None and (fixtures / "video" / "short_hamilton_clip.mp4").is_file():
        scenes.append(
            Scene(
                "stage clip, Lin-Manuel Miranda enrolled: grants for him only",
                fixtures / "video" / "short_hamilton_clip.mp4",
                [],
            )
        )
        scenes.append(
            Scene(
                "a stranger (nobody enrolled looks like him): never granted",
                fixtures / "video" / "elon-musk-smoke.gif",
                [],
            )
        )
    scenes.append(ticket_scene(workdir / "office", workdir / "tickets.mp4", now))
    return cfg, scenes


def demo_state(cfg) -> list[str]:
    """The demo's ledger (`edge-gate ledger init`) and empty revocation list, if absent."""
    done = []
    rev = cfg.resolve(cfg.tickets.revocation_list) if cfg.tickets.revocation_list else None
    if rev is not None and not rev.exists():
        rev.parent.mkdir(parents=True, exist_ok=True)
        rev.touch()
        done.append(f"created empty revocation list {rev}")
    path, created = init_ledger(cfg.resolve(cfg.tickets.ledger))
    if created:
        done.append(f"ledger init: created {path}")
    return done


def demo_source(workdir: Path, now: float | None = None) -> tuple[Path, Path]:
    """For `camera.source = "demo"`: a fresh ticket clip and its office's public key.

    Ticket ids carry the time, so a rerun against the same ledger starts with a valid ticket.
    """
    now = now or time.time()
    fresh_workdir(workdir)
    tk.keygen(workdir / "office")
    scene = ticket_scene(
        workdir / "office", workdir / "tickets.mp4", now, prefix=f"RUN{int(now) % 100000:05d}"
    )
    return scene.clip, workdir / "office" / "issuer.pub"


def fresh_workdir(workdir: Path) -> None:
    """An empty folder for a demo run: new, empty, or one an earlier demo made (emptied now).

    A folder holding anything the demo did not make is refused, never deleted: `--workdir` may
    be mistyped as a folder the user keeps things in.
    """
    if workdir.exists() and not workdir.is_dir():
        raise EdgeGateError(f"--workdir {workdir} is a file", "give a new or empty folder")
    if workdir.is_dir() and any(workdir.iterdir()):
        if not (workdir / MARKER).is_file():
            raise EdgeGateError(
                f"--workdir {workdir} is not empty and no demo made it: refusing to delete what "
                "it holds",
                "give a new or empty folder (the demo deletes only folders it made itself)",
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text(MARKER_TEXT)
