"""The model catalogue: models/models.json, written by scripts/build_models.py.

One place for model facts (file, SHA-256, input spec, alignment template, threshold) so the
pipeline, `doctor` and MODELS.md never disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelError


@dataclass(frozen=True)
class EmbedderSpec:
    """What models.json records for an embedder: file, checksum, alignment and thresholds."""

    name: str
    path: Path
    sha256: str
    size: int
    dim: int
    template: np.ndarray
    threshold: float  # cosine similarity; 0 when never measured
    quantization: str
    # decision rules per gallery size from `eval --open-set --write-threshold` (models.json)
    thresholds: tuple[dict, ...] = ()
    # faces of one person enrolled together link above this (99% of impostor pairs lie below
    # it: `eval --write-threshold`); 0 when never measured (the check is then not made)
    same_person_floor: float = 0.0


@dataclass(frozen=True)
class DetectorSpec:
    """What models.json records for a face detector: file, checksum and anchor layout."""

    name: str
    path: Path
    sha256: str
    kind: str


def load_catalogue(models_dir: Path) -> dict:
    """Read models.json, the single record of shipped models, with a fix if it is missing."""
    f = models_dir / "models.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"{f} is missing", "run scripts/build_models.py or reinstall the package"
        ) from None
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{f} is unreadable: {e}", "restore it from the release") from None


def _entry(models_dir: Path, group: str, name: str) -> dict:
    cat = load_catalogue(models_dir)
    try:
        return cat[group][name]
    except KeyError:
        known = ", ".join(sorted(cat.get(group, {})))
        raise ModelError(
            f"no {group[:-1]} named {name!r} in {models_dir / 'models.json'}",
            f"choose one of: {known}",
        ) from None


def embedder_spec(models_dir: Path, name: str) -> EmbedderSpec:
    """The embedder named in the config, as measured and recorded in models.json."""
    e = _entry(models_dir, "embedders", name)
    return EmbedderSpec(
        name,
        models_dir / e["file"],
        e["sha256"],
        int(e["size"]),
        int(e["dim"]),
        np.array(e["template"], dtype=np.float32),
        float(e.get("threshold", 0.0)),
        e["quantization"],
        tuple(e.get("thresholds", ())),
        float(e.get("same_person_floor", 0.0)),
    )


def detector_spec(models_dir: Path, name: str) -> DetectorSpec:
    """The detector named in the config, as recorded in models.json."""
    e = _entry(models_dir, "detectors", name)
    return DetectorSpec(name, models_dir / e["file"], e["sha256"], e["kind"])


def catalogue_files(cat: dict) -> list[tuple[str, str]]:
    """(file, SHA-256) of every model file in the catalogue, including each network of a
    liveness entry that fuses several (`models`)."""
    out = []
    for entries in cat.values():
        for e in entries.values():
            for m in e.get("models", [e]):
                out.append((m["file"], m["sha256"]))
    return out


def file_sha256(path: Path) -> str:
    """Checksum a model file in 1 MiB blocks, so a corrupt or swapped model is refused."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected: str) -> None:
    """Raise ModelError when a model file is missing or not the one the catalogue names."""
    if not path.is_file():
        raise ModelError(
            f"model file {path} is missing", "reinstall the package or run scripts/build_models.py"
        )
    got = file_sha256(path)
    if got != expected:
        raise ModelError(
            f"model file {path} has SHA-256 {got[:12]}…, expected {expected[:12]}…",
            "the file is corrupt or replaced; reinstall it",
        )
