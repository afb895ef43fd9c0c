"""Start-up validation shared by `run` and `doctor`, so the two can never disagree.

Each function raises the typed error that makes `run` refuse to start, or returns what the
gate will run with; `doctor` calls the same functions and prints their outcome.
"""

from __future__ import annotations

from edge import config as config_mod
from edge import tickets as tk
from edge.errors import ConfigError, KeyFileError, ModelError
from edge.fleet.state import fleet_pubkey_paths
from edge.gate.desk import configured_revocations
from edge.gate.policy import check_non_face_way_in
from edge.keyfiles import credential_path
from edge.vision.models import detector_spec, embedder_spec

# Errors that mean the operator's settings are wrong: the gate refuses to start with them.
# Anything else found while loading the face path is a fault of files at run time: ticket-only.
REFUSE_TO_START: tuple[type[Exception], ...] = (ConfigError, KeyFileError)


def ticket_keys(cfg: config_mod.Config) -> list:
    """The issuer public keys (and, in a fleet, those the office published); a gate must always
    have a non-face way in."""
    paths = [cfg.resolve(p) for p in cfg.tickets.pubkeys] + fleet_pubkey_paths(cfg)
    keys = [tk.load_public(p) for p in paths]
    check_non_face_way_in(cfg.gate.mode, len(keys) + int(cfg.pretix.enabled))  # or pretix's
    return keys


def revocations(cfg: config_mod.Config) -> frozenset[str]:
    """The revoked ticket ids; an unreadable list is an error, never "nothing revoked"."""
    return configured_revocations(cfg)


def faces_wanted(cfg: config_mod.Config) -> bool:
    """Whether the configuration asks for the face path at all."""
    return cfg.gate.mode != "ticket-only" and cfg.vision.face_enabled


def faces_off_reason(cfg: config_mod.Config) -> str:
    """Why the face path is not set up yet, or "" when it can be loaded.

    Raises ConfigError for settings that can never work: a models folder without models.json,
    an unknown detector or embedder, a gallery or key path that is a directory, a key file
    missing while its gallery exists.
    """
    mdir = config_mod.models_path(cfg)
    if not (mdir / "models.json").is_file():
        raise ConfigError(
            f"vision.models_dir {mdir} has no models.json",
            "point vision.models_dir at a folder built by scripts/build_models.py,"
            " or leave it empty",
        )
    try:
        detector_spec(mdir, cfg.vision.detector)
        embedder_spec(mdir, cfg.vision.embedder)
    except ModelError as e:
        raise ConfigError(f"vision.detector / vision.embedder: {e}") from None
    db, key = cfg.resolve(cfg.gallery.db), cfg.resolve(cfg.gallery.key_file)
    for name, p in (("gallery.db", db), ("gallery.key_file", key)):
        if p.is_dir():
            raise ConfigError(f"{name} {p} is a directory", f"set {name} to a file path")
    if not key.exists():
        if credential_path(key).exists():
            return ""  # the key arrives as a systemd credential
        if db.exists():
            raise ConfigError(
                f"gallery.key_file {key} does not exist but the gallery {db} does",
                "set gallery.key_file to the key this gallery was created with",
            )
        return (
            f"faces not set up yet: no gallery key at {key} "
            "(run `edge-gate keys init --config C`, then enroll)"
        )
    return ""
