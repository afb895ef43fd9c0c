"""`edge-gate eval`: accuracy of the face pipeline on a labelled folder DIR/<identity>/<images>."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeGateError, ImageError
from edge.gallery.matcher import Matcher
from edge.lab import openset
from edge.lab.metrics import pair_scores, summarise
from edge.progress import progress
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


@dataclass
class Embedded:
    """Every image of a folder embedded once (None: unreadable or no face), in protocol order."""

    labels: list[str]
    embeddings: list[np.ndarray | None]
    ms: list[float]
    unreadable: int = 0
    no_face: int = 0
    low_quality: int = 0
    _matrix: tuple[np.ndarray, np.ndarray] | None = None

    def matrix(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """All embeddings as one (N, dim) matrix (zeros where none) and which rows exist."""
        if self._matrix is None:
            ok = np.array([v is not None for v in self.embeddings], dtype=bool)
            x = np.zeros((len(ok), dim), dtype=np.float32)
            if ok.any():
                x[ok] = np.stack([v for v in self.embeddings if v is not None])
            self._matrix = (x, ok)
        return self._matrix


def embed_folder(pipe: FacePipeline, root: Path) -> Embedded:
    """Embed the largest face of every image under DIR/<person>/ once, timing each."""
    out = Embedded([], [], [])
    for person, path in progress(identity_images(root), f"eval {root.name}", unit="image"):
        out.labels.append(person)
        try:
            img = load_image(path, pipe.max_image_pixels)
        except ImageError as e:
            log.warning("eval skip unreadable=%s reason=%s", path, e)
            out.unreadable += 1
            out.embeddings.append(None)
            continue
        t0 = time.perf_counter()
        obs = pipe.embed_still(img)
        out.ms.append((time.perf_counter() - t0) * 1000)
        if obs is None:
            out.no_face += 1
            out.embeddings.append(None)
            continue
        out.low_quality += not obs.quality.ok
        out.embeddings.append(obs.embedding)
    if all(v is None for v in out.embeddings):  # 0 identities: no figure means anything
        raise EdgeGateError(
            f"{root}: no usable face in any of its {len(out.labels)} image(s) "
            f"({out.no_face} without a face, {out.unreadable} unreadable): nothing to measure",
            "pass a folder of DIR/<person>/<photo> with one face per photo",
        )
    return out


def evaluate_folder(pipe: FacePipeline, root: Path) -> dict:
    """Embed every image, score all pairs, report the verification metrics."""
    e = embed_folder(pipe, root)
    keep = [i for i, v in enumerate(e.embeddings) if v is not None]
    embs = [e.embeddings[i] for i in keep]
    labels = [e.labels[i] for i in keep]
    result = {
        "embedder": pipe.spec.name,
        "detector": "blazeface_" + ("full" if pipe.detector.size == 192 else "short"),
        "images": len(e.labels),
        "embedded": len(embs),
        "no_face": e.no_face,
        "unreadable": e.unreadable,
        "below_quality_gate": int(e.low_quality),
        "identities": len(set(labels)),
    }
    if len(embs) >= 2:
        result.update(summarise(pair_scores(np.array(embs), labels)))
    result["median_ms_per_image"] = round(float(np.median(e.ms)), 2) if e.ms else None
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


def write_threshold(
    models_dir: Path,
    embedder: str,
    threshold: float,
    source: str,
    floor: tuple[float, str] | None = None,
) -> None:
    """Record a measured threshold in models/models.json, where the matcher reads it; with
    `floor` (value, source) also the same-person floor enrollment holds a person's faces to."""
    f = models_dir / "models.json"
    cat = load_catalogue(models_dir)
    cat["embedders"][embedder]["threshold"] = round(threshold, 4)
    cat["embedders"][embedder]["threshold_source"] = source
    if floor is not None:
        cat["embedders"][embedder]["same_person_floor"] = round(floor[0], 4)
        cat["embedders"][embedder]["same_person_floor_source"] = floor[1]
    f.write_text(json.dumps(cat, indent=2) + "\n")


def floor_source(folder: str, result: dict) -> str:
    """Where a same-person floor comes from: the 1% impostor point of `eval` on `folder`."""
    return (
        f"edge-gate eval {folder}: threshold_at_far_1pct, 1% of {result['impostor_pairs']} "
        "impostor pairs at or above it (faces enrolled as one person must link above it)"
    )


# --- open-set 1:N identification (`eval --open-set`) -----------------------------------------

TARGET_FPIR = 1e-3  # the shipped rule: at most one stranger in a thousand let in
CALIBRATION_SIZES = (100, 1000, 0)  # gallery sizes (people) the rule is written for; 0 = all
REPORT_SIZES = (100, 1000, 0)  # gallery sizes the gate's own rule is reported for


def _searches(e: Embedded, gallery: np.ndarray, mated: np.ndarray, nonmated: np.ndarray, dim: int):
    """Build the matcher for these gallery items and search every probe once."""
    x, ok = e.matrix(dim)
    labels = np.asarray(e.labels, dtype=object)
    g = gallery[ok[gallery]]
    matcher = Matcher(x[g], labels[g], threshold=1.0, min_margin=0.0)
    out = []
    for idx in (mated, nonmated):
        s = openset.search(matcher, x[idx])
        out.append(openset.Search(np.where(ok[idx], s.best, -1), s.score, s.second))
    people = np.asarray(matcher.people, dtype=object)
    pos = np.clip(np.searchsorted(people, labels[mated]), 0, max(len(people) - 1, 0))
    found = (people[pos] == labels[mated]) if len(people) else np.zeros(len(mated), bool)
    truth = np.where(found, pos, -2)
    return matcher, out[0], truth, out[1], len(g)


def evaluate_open_set(
    e: Embedded, k: int, dim: int, rule: Callable[[int], tuple[float, float, str]]
) -> dict:
    """The issue-11 protocol on embedded images; `rule(n_people)` gives the gate's rule then."""
    sp = openset.split(e.labels, k)
    matcher, mated, truth, nonmated, n_templates = _searches(
        e, sp.gallery, sp.mated, sp.nonmated, dim
    )
    n_people = len(matcher.people)
    threshold, margin, source = rule(n_people)
    fpir, fnir = openset.rates(mated, truth, nonmated, threshold, margin)
    result = {
        "templates_per_person": k,
        "gallery_people": n_people,
        "gallery_templates": n_templates,
        "mated_probes": len(sp.mated),
        "nonmated_probes": len(sp.nonmated),
        "no_face": e.no_face,
        "unreadable": e.unreadable,
        "rank1": openset.none_if_nan(float((mated.best == truth).mean()) if len(truth) else None),
        "threshold": openset.none_if_nan(threshold),
        "min_margin": openset.none_if_nan(margin),
        "rule_source": source,
        "fpir": openset.none_if_nan(fpir, 5),
        "fnir": openset.none_if_nan(fnir),
    }
    # strangers filed under another spelling of an enrolled name (same person): shown apart
    clean = _not_aliases(e, sp.gallery, sp.nonmated)
    kept = nonmated.take(clean)
    result["nonmated_name_aliases"] = int((~clean).sum())
    result["fpir_without_aliases"] = openset.none_if_nan(
        openset.rates(mated, truth, kept, threshold, margin)[0], 5
    )
    for target, key in ((0.01, "0_01"), (0.001, "0_001")):
        r = openset.rule_at_fpir(mated, truth, nonmated, target)
        result[f"fnir_at_fpir_{key}"] = openset.none_if_nan(r["fnir"])
        result[f"threshold_at_fpir_{key}"] = openset.none_if_nan(r["threshold"])
        r = openset.rule_at_fpir(mated, truth, kept, target)
        result[f"fnir_at_fpir_{key}_without_aliases"] = openset.none_if_nan(r["fnir"])
    result["by_gallery_size"] = rates_by_size(e, sp, dim, rule)
    result["median_ms_per_image"] = round(float(np.median(e.ms)), 2) if e.ms else None
    return result


def rates_by_size(
    e: Embedded, sp: openset.OpenSetSplit, dim: int, rule, draws: int = 5
) -> list[dict]:
    """The gate's rule for each report size, FPIR and FNIR pooled over the size's draws.

    Beyond the protocol's people, one-image identities are enrolled too (never probed), so the
    strangers are fewer and a few same-person pairs filed under two names count against FPIR.
    """
    out = []
    for size in REPORT_SIZES:
        galleries = openset.sized_galleries(e.labels, sp, size, draws, enroll_strangers=True)
        people = galleries[0].people
        if any(r["gallery_people"] == people for r in out):
            continue
        threshold, margin, source = rule(people)
        mated, truth, nonmated, clean = _pooled(e, galleries, dim)
        fpir, fnir = openset.rates(mated, truth, nonmated, threshold, margin)
        kept = nonmated.take(clean)
        out.append(
            {
                "gallery_people": people,
                "draws": len(galleries),
                "threshold": openset.none_if_nan(threshold),
                "min_margin": openset.none_if_nan(margin),
                "rule_source": source,
                "mated_probes": len(truth),
                "nonmated_probes": len(nonmated.best),
                "fpir": openset.none_if_nan(fpir, 5),
                "fpir_without_aliases": openset.none_if_nan(
                    openset.rates(mated, truth, kept, threshold, margin)[0], 5
                ),
                "fnir": openset.none_if_nan(fnir),
            }
        )
    return out


def calibrate_sizes(e: Embedded, k: int, dim: int, draws: int = 5) -> list[dict]:
    """The decision rule at FPIR 1e-3 for each calibration size, with and without a margin."""
    sp = openset.split(e.labels, k)
    table = []
    for size in CALIBRATION_SIZES:
        galleries = openset.sized_galleries(e.labels, sp, size, draws)
        people = galleries[0].people
        if any(t["gallery_people"] == people for t in table):
            continue  # this folder cannot make a gallery that large: the size is already in
        mated, truth, nonmated, clean = _pooled(e, galleries, dim)
        nonmated = nonmated.take(clean)  # a name alias never decides a threshold
        why = openset.enough_data(len(truth), len(nonmated.best), TARGET_FPIR)
        best, tried = openset.best_rule(mated, truth, nonmated, TARGET_FPIR)
        table.append(
            {
                "gallery_people": people,
                "templates_per_person": k,
                "target_fpir": TARGET_FPIR,
                "threshold": openset.none_if_nan(best["threshold"], 4),
                "min_margin": best["margin"],
                "fpir": openset.none_if_nan(best["fpir"], 5),
                "fnir": openset.none_if_nan(best["fnir"]),
                "mated_probes": len(truth),
                "nonmated_probes": len(nonmated.best),
                "draws": len(galleries),
                "margins_tried": [
                    {
                        "min_margin": r["margin"],
                        "threshold": openset.none_if_nan(r["threshold"]),
                        "fnir": openset.none_if_nan(r["fnir"]),
                    }
                    for r in tried
                ],
                "too_little_data": why,
            }
        )
    return table


def _not_aliases(e: Embedded, gallery: np.ndarray, strangers: np.ndarray) -> np.ndarray:
    """Per stranger: not filed under another spelling of an enrolled name (same person)."""
    return np.isin(strangers, openset.drop_aliases(e.labels, gallery, strangers))


def _pooled(e: Embedded, galleries: list, dim: int):
    """Every draw searched, pooled: mated, their truth, strangers, and which are no alias."""
    parts = [(_searches(e, g.gallery, g.mated, g.nonmated, dim), g) for g in galleries]
    mated = _concat([s[1] for s, _ in parts])
    truth = np.concatenate([s[2] for s, _ in parts])
    nonmated = _concat([s[3] for s, _ in parts])
    clean = np.concatenate([_not_aliases(e, g.gallery, g.nonmated) for _, g in parts])
    return mated, truth, nonmated, clean


def _concat(searches: list) -> openset.Search:
    return openset.Search(
        *(np.concatenate([getattr(s, f) for s in searches]) for f in ("best", "score", "second"))
    )


def write_rules(models_dir: Path, embedder: str, table: list[dict], source: str) -> None:
    """Record the per-gallery-size decision rules in models/models.json for the gate to use."""
    f = models_dir / "models.json"
    cat = load_catalogue(models_dir)
    keep = ("gallery_people", "templates_per_person", "target_fpir", "threshold", "min_margin")
    keep += ("fpir", "fnir", "mated_probes", "nonmated_probes", "draws")
    cat["embedders"][embedder]["thresholds"] = [{k: e[k] for k in keep} for e in table]
    cat["embedders"][embedder]["thresholds_source"] = source
    f.write_text(json.dumps(cat, indent=2) + "\n")
