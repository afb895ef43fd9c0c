"""Comparing two machines' equivalence runs: per-image cosines, pairwise drift, gate decisions.

Pure functions over the JSON `edge.lab.equivalence run` writes on each machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import PROJECT_ROOT
from edge.vision.models import load_catalogue

MIN_COSINE = 0.999
CLIP = Path("video") / "short_hamilton_clip.mp4"
EVENT_KEYS = ("frame", "decision", "via", "reason", "enrolled", "score")
BOUND_KEY = "cross_cpu_min_cosine"  # a model's own bound in models.json, when it has measured one


@dataclass
class Report:
    """What `compare` found: printable lines, figures for MODELS.md, and the failures."""

    lines: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _rows(a: list[dict], b: list[dict]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Vectors present on both sides, and the indices present on one side only."""
    both = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x["vector"] and y["vector"]]
    one = [
        i
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if bool(x["vector"]) != bool(y["vector"])
    ]
    va = np.array([a[i]["vector"] for i in both], dtype=np.float64)
    vb = np.array([b[i]["vector"] for i in both], dtype=np.float64)
    return va, vb, one


def cosines(va: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    num = (va * vb).sum(axis=1)
    den = np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1)
    return num / np.maximum(den, 1e-30)


def pairwise_delta(va: np.ndarray, vb: np.ndarray) -> float:
    """Largest change of any pairwise similarity between photos, one side to the other."""
    if len(va) < 2:
        return 0.0
    na = va / np.linalg.norm(va, axis=1, keepdims=True)
    nb = vb / np.linalg.norm(vb, axis=1, keepdims=True)
    iu = np.triu_indices(len(va), k=1)
    return float(np.abs((na @ na.T)[iu] - (nb @ nb.T)[iu]).max())


def compare(ref: dict, other: dict, min_cosine: float = MIN_COSINE) -> Report:
    """Compare two `run` results; any failure means the other machine must not be trusted."""
    r = Report()
    r.lines.append(
        f"reference {ref['machine']} py{ref['python']} | other {other['machine']} "
        f"py{other['python']} QEMU_CPU={other['qemu_cpu'] or '-'} | {len(ref['photos'])} photos"
    )
    if ref["photos"] != other["photos"] or ref["catalogue"] != other["catalogue"]:
        r.failures.append("the two runs used different photos or model catalogues")
        return r
    cat = load_catalogue(PROJECT_ROOT / "models")
    for section in ("embedders", "models"):
        for name in sorted(ref[section]):
            a, b = ref[section][name], other[section].get(name)
            if b is None:
                r.failures.append(f"{name}: missing on the other side")
                continue
            va, vb, one = _rows(a, b)
            if one:
                r.failures.append(f"{name}: a face on one side only for photos {one}")
            if not len(va):
                r.failures.append(f"{name}: no photo measured on both sides")
                continue
            cos = cosines(va, vb)
            fig = {
                "images": len(va),
                "min_cosine": round(float(cos.min()), 6),
                "max_cosine": round(float(cos.max()), 6),
                "max_abs_diff": round(float(np.abs(va - vb).max()), 6),
            }
            line = f"{name:<24} n={len(va):<3} cosine min {cos.min():.6f} max {cos.max():.6f}"
            if section == "embedders":
                fig["max_pairwise_delta"] = round(pairwise_delta(va, vb), 6)
                fig["threshold"] = cat["embedders"].get(name, {}).get("threshold", 0.0)
                line += f"  max |Δ pairwise sim| {fig['max_pairwise_delta']:.6f}"
            else:
                line += f"  max |Δ output| {fig['max_abs_diff']:.6f}"
            group, _, key = name.rpartition("/")
            bound = float(cat.get(group or section, {}).get(key, {}).get(BOUND_KEY, min_cosine))
            fig["bound"] = bound
            r.lines.append(
                line + (f"  (bound {bound} from models.json)" if bound != min_cosine else "")
            )
            r.figures[name] = fig
            if cos.min() < bound:
                worst = ref["photos"][int(np.argmin(cos))] if not one else "?"
                r.failures.append(f"{name}: cosine {cos.min():.6f} < {bound} (e.g. {worst})")
    for name in sorted(ref["detectors"]):
        a, b = ref["detectors"][name], other["detectors"][name]
        va, vb, one = _rows(a, b)
        dcount = sum(x["faces"] != y["faces"] for x, y in zip(a, b, strict=True))
        dscore = max(
            (
                abs(x["score"] - y["score"])
                for x, y in zip(a, b, strict=True)
                if x["score"] is not None and y["score"] is not None
            ),
            default=0.0,
        )
        dbox = float(np.abs(va - vb).max()) if len(va) else 0.0
        r.figures[name] = {"max_box_px": round(dbox, 3), "max_score_diff": round(dscore, 6),
                           "face_count_differs": dcount}  # fmt: skip
        r.lines.append(
            f"{name:<24} max |Δ box| {dbox:.3f} px  max |Δ score| {dscore:.6f}  "
            f"face count differs on {dcount} photo(s)"
        )
    gate_compare(ref.get("gate"), other.get("gate"), r)
    return r


def gate_compare(a: dict | None, b: dict | None, r: Report) -> None:
    """Every decision on the clip must be the same: frame, outcome, way in, reason, person."""
    if a is None and b is None:
        return
    if a is None or b is None:
        r.failures.append("gate clip run on one side only")
        return
    da = [tuple(e[k] for k in EVENT_KEYS[:-1]) for e in a["events"]]  # all but the score
    db = [tuple(e[k] for k in EVENT_KEYS[:-1]) for e in b["events"]]
    grants = [e for e in a["events"] if e["decision"] == "grant"]
    dscore = max(
        (abs(x["score"] - y["score"]) for x, y in zip(a["events"], b["events"], strict=False)),
        default=0.0,
    )
    r.figures["gate"] = {"frames": a["frames"], "decisions": len(da), "grants": len(grants),
                         "same": da == db and a["frames"] == b["frames"],
                         "max_score_diff": round(dscore, 6)}  # fmt: skip
    r.lines.append(
        f"gate on {CLIP.name} ({a['embedder']}): {a['frames']} frames, {len(da)} decisions, "
        f"{len(grants)} grants (first at frame {grants[0]['frame'] if grants else '-'}), "
        f"max |Δ score| {dscore:.4f}: {'identical' if r.figures['gate']['same'] else 'DIFFERENT'}"
    )
    if not r.figures["gate"]["same"]:
        diff = next(
            (i for i, (x, y) in enumerate(zip(da, db, strict=False)) if x != y),
            min(len(da), len(db)),
        )
        r.failures.append(
            f"gate decisions differ at decision {diff}:"
            f" {da[diff : diff + 1]} vs {db[diff : diff + 1]}"
            f" ({a['frames']} vs {b['frames']} frames, {len(da)} vs {len(db)} decisions)"
        )
    if not grants:
        r.failures.append("the reference gate granted nobody on the clip: nothing was compared")
