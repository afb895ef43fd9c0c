"""`edge-gate eval`: accuracy of the face pipeline on a labelled folder `DIR/<identity>/<images>`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from edge.errors import EdgeGateError, ImageError
from edge.measure.metrics import pair_scores, summarise
from edge.vision.image import load_image
from edge.vision.models import load_catalogue
from edge.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)
# A threshold "above every impostor pair" says FAR < 1/N only with N impostor pairs, and the TAR
# it costs is only known with enough genuine pairs: below these, no threshold is written.
MIN_IMPOSTOR_PAIRS = 1000
MIN_GENUINE_PAIRS = 50
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def identity_images(root: Path) -> list[tuple[str, Path]]:
    """DIR/<person>/<image> -> [(person, path)], sorted for repeatable runs."""
    if not root.is_dir():
        raise EdgeGateError(
            f"{root} is not a folder", "pass a folder laid out as DIR/<person>/<image>"
        )
    out = [
        (d.name, f)
        for d in sorted(root.iterdir())
        if d.is_dir()
        for f in sorted(d.iterdir())
        if f.suffix.lower() in IMAGE_EXT
    ]
    if not out:
        raise EdgeGateError(f"{root} holds no DIR/<person>/<image> files")
    return out


def evaluate_folder(pipe: FacePipeline, root: Path) -> dict:
    """Embed every image, score all pairs, report the verification metrics."""
    embs, labels, ms, no_face, unreadable, low_quality = [], [], [], 0, 0, 0
    for person, path in identity_images(root):
        try:
            img = load_image(path)
        except ImageError as e:
            log.warning("eval skip unreadable=%s reason=%s", path, e)
            unreadable += 1
            continue
        t0 = time.perf_counter()
        obs = pipe.embed_still(img)
        ms.append((time.perf_counter() - t0) * 1000)
        if obs is None:
            no_face += 1
            continue
        low_quality += not obs.quality.ok
        embs.append(obs.embedding)
        labels.append(person)
    result = {
        "embedder": pipe.spec.name,
        "detector": "blazeface_" + ("full" if pipe.detector.size == 192 else "short"),
        "images": len(ms) + unreadable,
        "embedded": len(embs),
        "no_face": no_face,
        "unreadable": unreadable,
        "below_quality_gate": int(low_quality),
        "identities": len(set(labels)),
    }
    if len(embs) >= 2:
        result.update(summarise(pair_scores(np.array(embs), labels)))
    result["median_ms_per_image"] = round(float(np.median(ms)), 2) if ms else None
    return result


def json_ready(result: dict) -> dict:
    """The result with undefined figures (NaN, inf) as None, so `--json` is valid JSON."""
    return {
        k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in result.items()
    }


def check_threshold_evidence(result: dict) -> None:
    """Refuse to derive a gate threshold from too few pairs, saying how many are needed."""
    gen, imp = result.get("genuine_pairs", 0), result.get("impostor_pairs", 0)
    if gen < MIN_GENUINE_PAIRS or imp < MIN_IMPOSTOR_PAIRS or result.get("impostor_max") is None:
        raise EdgeGateError(
            f"too little data to set a threshold: {gen} genuine and {imp} impostor pairs; "
            f"need at least {MIN_GENUINE_PAIRS} genuine and {MIN_IMPOSTOR_PAIRS} impostor pairs",
            "use a folder with more people (impostor pairs) and several photos each (genuine"
            " pairs); nothing was written",
        )


def write_threshold(models_dir: Path, embedder: str, threshold: float, source: str) -> None:
    """Record a measured threshold in models/models.json, where the matcher reads it."""
    f = models_dir / "models.json"
    cat = load_catalogue(models_dir)
    cat["embedders"][embedder]["threshold"] = round(threshold, 4)
    cat["embedders"][embedder]["threshold_source"] = source
    f.write_text(json.dumps(cat, indent=2) + "\n")
