"""Does fusing one visitor's frames beat k-of-n voting? FNIR at the same FPIR on recorded video.

Every usable face (quality gate passed) in the clips is embedded once and linked into tracks
(nearest centre in the previous frame). Each run of n consecutive observations of a track is
one decision window, decided four ways, each with the configured margin to the second person:
  vote         the gate today: the same person best in >= k of the n frames; statistic = the
               k-th highest of that person's frame scores (grant when >= threshold)
  score_mean   every person's score averaged over the n frames; best person and margin on it
  emb_mean     the n embeddings averaged (then normalised) and matched once
  matched_mean the embeddings of the frames whose best person is the window's most frequent
               best person (>= k of them) averaged and matched once
  cand_mean    those same frames' scores and margins averaged (what a pure policy can do with
               each frame's best candidate, score and margin)
A clip given as CLIP=NAME shows the enrolled person NAME (frames with exactly one usable
face): its windows are mated searches against the whole gallery, and non-mated searches
against the gallery without NAME (leave-one-out). Every face in a clip given without a name
is a stranger. A non-mated window is a false grant when its statistic reaches the threshold;
a mated window is a miss unless it grants the right person.

    python scripts/measure_fusion.py --db G.db --key-file G.key \
        --clip hamilton.mp4=NAME --clip mall.mp4 [--config gate.toml] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge import config as config_mod  # noqa: E402
from edge.gallery.crypto import load_key  # noqa: E402
from edge.gallery.matcher import Matcher, resolve_threshold  # noqa: E402
from edge.gallery.store import Gallery  # noqa: E402
from edge.vision.image import to_bgr8  # noqa: E402
from edge.vision.pipeline import FacePipeline  # noqa: E402

RULES = ("vote", "cand_mean", "score_mean", "emb_mean", "matched_mean")


def tracks(pipe: FacePipeline, clip: Path, single_only: bool) -> list[np.ndarray]:
    """Embeddings of usable faces, linked into tracks by nearest centre frame to frame."""
    cap = cv2.VideoCapture(str(clip))
    done: list[list[np.ndarray]] = []
    live: list[tuple[np.ndarray, list[np.ndarray]]] = []  # (last centre, embeddings)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frame = to_bgr8(frame)
        w = frame.shape[1]
        faces = [f for f in pipe.analyze(frame) if f.embedding is not None]
        if single_only and len(faces) != 1:
            faces = []
        nxt = []
        for f in faces:
            b = f.detection.box
            c = np.array([b[0] + b[2], b[1] + b[3]]) / (2 * w)
            dist = [np.linalg.norm(c - lc) for lc, _ in live]
            if dist and min(dist) < 0.1:
                _, embs = live.pop(int(np.argmin(dist)))
            else:
                embs = []
            nxt.append((c, embs + [f.embedding]))
        done += [e for _, e in live]  # tracks not seen in this frame end
        live = nxt
    cap.release()
    return [np.stack(e) for e in done + [e for _, e in live] if e]


def decide(m: Matcher, emb: np.ndarray, min_margin: float) -> tuple[int, float]:
    """(person index, statistic) of one fused embedding; statistic -inf when ambiguous."""
    per = m.person_scores(emb / np.linalg.norm(emb))[0]
    return _best(per, min_margin)


def _best(per: np.ndarray, min_margin: float) -> tuple[int, float]:
    order = np.argsort(-per)[:2]
    margin = per[order[0]] - per[order[1]] if len(order) > 1 else 1.0
    return int(order[0]), float(per[order[0]]) if margin >= min_margin else float("-inf")


def windows(m: Matcher, track: np.ndarray, n: int, k: int, min_margin: float) -> list[dict]:
    """Each rule's (person, statistic) for every window of n consecutive observations."""
    per = m.person_scores(track)  # (T, P) exact person scores, computed once per frame
    frames = [_best(row, min_margin) for row in per]
    best_any = per.argmax(axis=1)
    out = []
    for s in range(0, len(track) - n + 1):
        w = slice(s, s + n)
        r = {"score_mean": _best(per[w].mean(axis=0), min_margin)}
        r["emb_mean"] = decide(m, track[w].mean(axis=0), min_margin)
        votes: dict[int, list[float]] = {}
        for p, stat in frames[w]:
            votes.setdefault(p, []).append(stat)
        r["vote"] = max(
            ((p, sorted(v)[-k]) for p, v in votes.items() if len(v) >= k),
            key=lambda x: x[1],
            default=(-1, float("-inf")),
        )
        top = np.bincount(best_any[w]).argmax()
        mine = best_any[w] == top
        r["matched_mean"] = (
            decide(m, track[w][mine].mean(axis=0), min_margin)
            if mine.sum() >= k
            else (-1, float("-inf"))
        )
        cand = per[w][mine]
        top2 = -np.sort(-cand, axis=1)[:, :2]
        if mine.sum() >= k and (top2[:, 0] - top2[:, 1]).mean() >= min_margin:
            r["cand_mean"] = (int(top), float(top2[:, 0].mean()))
        else:
            r["cand_mean"] = (-1, float("-inf"))
        out.append(r)
    return out


def summarise(mated: list[tuple[dict, int]], strangers: list[dict], threshold: float) -> dict:
    """Per rule: FPIR and FNIR at the configured threshold and at the strictest stranger."""
    res = {}
    for rule in RULES:
        st = np.array([w[rule][1] for w in strangers])
        ok = np.array([w[rule][0] == target for w, target in mated])
        ms = np.array([w[rule][1] for w, _ in mated])
        t0 = float(np.nextafter(st.max(), np.inf)) if np.isfinite(st).any() else -np.inf
        res[rule] = {
            "fpir_at_threshold": round(float((st >= threshold).mean()), 4) if len(st) else None,
            "fnir_at_threshold": round(float(1 - (ok & (ms >= threshold)).mean()), 4),
            "threshold_fpir_0": round(t0, 4) if np.isfinite(t0) else None,
            "fnir_at_fpir_0": round(float(1 - (ok & np.isfinite(ms) & (ms >= t0)).mean()), 4),
            "mated_stat_median": round(float(np.median(ms[ok & np.isfinite(ms)])), 4)
            if (ok & np.isfinite(ms)).any()
            else None,
        }
    return res


def without(t, person_id: str, threshold: float, min_margin: float) -> Matcher:
    """The gallery's matcher with one person left out (non-mated searches of their clip)."""
    keep = t.person_ids != person_id
    return Matcher(t.matrix[keep], t.person_ids[keep], threshold, min_margin)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--db", required=True)
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--clip", action="append", required=True, help="CLIP=NAME or CLIP")
    ap.add_argument("--min-margin", type=float, help="override gallery.min_margin")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = config_mod.load(args.config)
    pipe = FacePipeline.from_config(cfg)
    g = Gallery(args.db, load_key(Path(args.key_file)), create=False)
    try:
        t = g.templates(pipe.spec.name)
        ids = {p.name: p.id for p in g.people()}
    finally:
        g.close()
    threshold = resolve_threshold(cfg.gallery.match_threshold, pipe.spec.threshold)
    mm = cfg.gallery.min_margin if args.min_margin is None else args.min_margin
    n, k = cfg.policy.n, cfg.policy.k
    m = Matcher(t.matrix, t.person_ids, threshold, mm)
    mated, strangers = [], []
    for spec in args.clip:
        clip, _, name = spec.partition("=")
        if name and name not in ids:
            raise SystemExit(f"{name!r} is not enrolled in {args.db}")
        trs = tracks(pipe, Path(clip), single_only=bool(name))
        if name:
            target = int(np.flatnonzero(m.people == ids[name])[0])
            for tr in trs:
                mated += [(w, target) for w in windows(m, tr, n, k, mm)]
            left_out = without(t, ids[name], threshold, mm)
            strangers += [w for tr in trs for w in windows(left_out, tr, n, k, mm)]
        else:
            strangers += [w for tr in trs for w in windows(m, tr, n, k, mm)]
    report = {
        "embedder": pipe.spec.name,
        "gallery_people": len(m.people),
        "gallery_templates": len(m),
        "threshold": threshold,
        "min_margin": mm,
        "k_of_n": [k, n],
        "mated_windows": len(mated),
        "nonmated_windows": len(strangers),
        "rules": summarise(mated, strangers, threshold),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print({k: v for k, v in report.items() if k != "rules"})
        for rule, r in report["rules"].items():
            print(f"  {rule:<13} " + "  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
