"""What a lane runs, as its heartbeat tells the office: the models and the configuration.

The office's Lanes page shows them per lane, so a lane left on an old model or an old
configuration stands out. Models are named with the SHA-256 that models.json records for them
(the gate refuses a file that does not match it); the configuration's version is a hash of the
settings in force (after command-line overrides and reloads), with the member's own names left
out, so lanes configured alike show the same version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from edge.config import Config, models_path
from edge.vision.models import load_catalogue

SHORT = 12  # hex digits shown


def model_versions(cfg: Config, face_on: bool) -> dict[str, str]:
    """Model name -> the first hex digits of its models.json SHA-256, for each model the face
    path runs (detector, embedder, liveness); {} for a ticket-only gate."""
    if not face_on:
        return {}
    picks = [("detectors", cfg.vision.detector), ("embedders", cfg.vision.embedder)]
    if cfg.liveness.mode != "off":
        picks.append(("liveness", cfg.liveness.model))
    cat = load_catalogue(models_path(cfg))
    out = {}
    for group, name in picks:
        e = cat.get(group, {}).get(name)
        if e is None:
            continue
        shas = [str(m["sha256"]) for m in e.get("models", [e])]  # a fused pair: both files
        out[name] = (shas[0] if len(shas) == 1 else _sha("".join(shas)))[:SHORT]
    return out


def config_version(cfg: Config) -> str:
    """A short hash of the settings in force, without the member's own names (gate.id,
    fleet.lane) or where the file was read from."""
    d = dataclasses.asdict(cfg)
    d.pop("source_file", None)
    d.pop("overrides", None)
    d["gate"]["id"] = ""
    d["fleet"]["lane"] = ""
    return _sha(json.dumps(d, sort_keys=True, default=str))[:SHORT]


def lane_versions(cfg: Config, face_on: bool) -> dict[str, object]:
    """The heartbeat's `models` and `config_version` fields; a models.json that cannot be read
    is reported, never raised (the face path has already said what is wrong with it)."""
    try:
        models: dict[str, str] | str = model_versions(cfg, face_on)
    except Exception as e:
        models = f"unknown: {e}"[:120]
    return {"models": models, "config_version": config_version(cfg)}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
