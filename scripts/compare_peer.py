"""Side-by-side accuracy and speed: edge-gate vs the `face_recognition` library (dlib).

The peer is a benchmark dependency only. Install it offline-capable from PyPI into its own venv:
    python -m venv /tmp/peer
    /tmp/peer/bin/pip install dlib-bin face-recognition-models==0.3.0 numpy pillow click
    /tmp/peer/bin/pip install --no-deps face_recognition==1.3.0
Run (the peer's Python, our CLI):
    /tmp/peer/bin/python scripts/compare_peer.py ../shared/fixtures/faces \
        --edge-gate .venv/bin/edge-gate
Both sides embed every image of DIR/<person>/<image>, score all pairs, and report the same metrics;
per-image time is wall time for detection + landmarks + embedding on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.lab.evaluation import identity_images  # noqa: E402
from edge.lab.metrics import pair_scores, summarise  # noqa: E402  (pure numpy, no models)


def run_peer(root: Path) -> dict:
    import face_recognition as fr

    embs, labels, ms, no_face = [], [], [], 0
    for person, path in identity_images(root):
        img = fr.load_image_file(str(path))
        t0 = time.perf_counter()
        locs = fr.face_locations(img, number_of_times_to_upsample=1)
        if not locs:  # the peer's own second try for small faces
            locs = fr.face_locations(img, number_of_times_to_upsample=2)
        encs = fr.face_encodings(img, known_face_locations=locs[:1]) if locs else []
        ms.append((time.perf_counter() - t0) * 1000)
        if not encs:
            no_face += 1
            continue
        e = np.asarray(encs[0], dtype=np.float32)
        embs.append(
            e / np.linalg.norm(e)
        )  # cosine, like ours; dlib's own distance ranks identically
        labels.append(person)
    result = {
        "embedder": "face_recognition 1.3.0 (dlib HOG + 5pt + ResNet)",
        "images": len(ms),
        "embedded": len(embs),
        "no_face": no_face,
    }
    result.update(summarise(pair_scores(np.array(embs), labels)))
    result["median_ms_per_image"] = round(float(np.median(ms)), 2)
    return result


def run_ours(root: Path, edge_gate: str, embedder: str) -> dict:
    out = subprocess.run(
        [edge_gate, "eval", str(root), "--json", "--threads", "1", "--embedder", embedder],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dir", type=Path)
    ap.add_argument("--edge-gate", default="edge-gate", help="path to our CLI")
    ap.add_argument("--embedders", nargs="+", default=["dlib_resnet_int8", "dlib_resnet_float"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cols = {"peer": run_peer(args.dir)}
    for e in args.embedders:
        cols[e] = run_ours(args.dir, args.edge_gate, e)
    if args.json:
        print(json.dumps(cols))
        return
    keys = [
        "images",
        "no_face",
        "genuine_pairs",
        "impostor_pairs",
        "auc",
        "tar_at_far_1pct",
        "tar_at_far_0_1pct",
        "threshold_at_far_0_1pct",
        "median_ms_per_image",
    ]
    names = list(cols)
    print(f"{'metric':<26}" + "".join(f"{n:>22}" for n in names))
    for k in keys:
        print(f"{k:<26}" + "".join(f"{str(cols[n].get(k)):>22}" for n in names))
    peer_ms = cols["peer"]["median_ms_per_image"]
    for n in names[1:]:
        print(
            f"speed-up of {n} over the peer (median per image, 1 thread):"
            f" {peer_ms / cols[n]['median_ms_per_image']:.1f}x"
        )


if __name__ == "__main__":
    main()
