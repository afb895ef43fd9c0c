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


def write_threshold(models_dir: Path, embedder: str, threshold: float, source: str) -> None:
    """Record a measured threshold in models/models.json, where the matcher reads it."""
    f = models_dir / "models.json"
    cat = load_catalogue(models_dir)
    cat["embedders"][embedder]["threshold"] = round(threshold, 4)
    cat["embedders"][embedder]["threshold_source"] = source
    f.write_text(json.dumps(cat, indent=2) + "\n")
