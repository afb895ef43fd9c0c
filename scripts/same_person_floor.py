"""What the same-person floor does on labelled faces: python scripts/same_person_floor.py [DIR].

DIR holds DIR/<person>/<image> (default: the shared fixtures' lfw/, $EDGE_FIXTURES). For every
person with 2 or more photos (up to 5, as enrollment takes them), the faces are checked as
enrollment checks a new person's faces (`edge.gallery.enroll.split_faces`): how many people's
own photos do not form one group (they would be refused), and of sets made of two photos of one
person and one of another, how many still form one group (they would be enrolled as one). At the
embedder's floor from models.json and, for comparison, at its strict 1:1 threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.scripting import needs_modules, run  # noqa: E402

with needs_modules(__file__):
    import numpy as np

    from edge import config as config_mod
    from edge.errors import EdgeGateError, ImageError
    from edge.gallery.enroll import split_faces
    from edge.progress import progress
    from edge.vision.image import load_image
    from edge.vision.pipeline import FacePipeline

PHOTOS = 5  # per person, as enrollment keeps at most 5 templates by default
MIXED = 2000  # sets of two photos of one person and one of another


def embed_people(pipe: FacePipeline, root: Path) -> dict[str, np.ndarray]:
    """Unit embeddings (up to PHOTOS) of every person with 2 or more usable photos."""
    if not root.is_dir():
        raise EdgeGateError(
            f"{root}: no such folder", "pass DIR/<person>/<image>, or set EDGE_FIXTURES"
        )
    people = [d for d in sorted(root.iterdir()) if d.is_dir()]
    out = {}
    for d in progress(people, "people"):
        embs = []
        for f in sorted(d.iterdir())[:PHOTOS]:
            try:
                seen = pipe.embed_still(load_image(f))
            except ImageError:
                continue
            if seen is not None and seen.embedding is not None:
                embs.append(seen.embedding / np.linalg.norm(seen.embedding))
        if len(embs) >= 2:
            out[d.name] = np.stack(embs)
    return out


def mixed_whole(people: dict[str, np.ndarray], floor: float, one: int, other: int) -> int:
    """Of MIXED sets of `one` photos of a person and `other` of another (people with that many
    photos), how many form one group: they would be enrolled as one person."""
    a_side = sorted(n for n in people if len(people[n]) >= one)
    b_side = sorted(n for n in people if len(people[n]) >= other)
    rng = np.random.default_rng(0)
    whole = 0
    for _ in range(MIXED):
        a, b = a_side[rng.integers(len(a_side))], b_side[rng.integers(len(b_side))]
        while b == a:
            b = b_side[rng.integers(len(b_side))]
        whole += split_faces(np.concatenate([people[a][:one], people[b][:other]]), floor) is None
    return whole


def measure(people: dict[str, np.ndarray], floor: float) -> dict:
    """Own photos split (refused) and mixed sets kept whole (enrolled as one), at `floor`."""
    split = [n for n in sorted(people) if split_faces(people[n], floor) is not None]
    return {
        "floor": floor,
        "people": len(people),
        "own_photos_not_one_group": len(split),
        "mixed_sets": MIXED,
        "mixed_sets_one_group_2_and_1": mixed_whole(people, floor, 2, 1),
        "mixed_sets_one_group_3_and_2": mixed_whole(people, floor, 3, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, help="DIR/<person>/<image> (default lfw/)")
    ap.add_argument("--debug", action="store_true", help="traceback of an internal error")
    args = ap.parse_args()
    cfg = config_mod.load(None)
    pipe = FacePipeline.from_config(cfg)
    people = embed_people(pipe, args.folder or config_mod.fixtures_dir() / "lfw")
    spec = pipe.spec
    rows = [measure(people, f) for f in (spec.same_person_floor, spec.threshold)]
    print(json.dumps({"embedder": spec.name, "at_floor": rows[0], "at_threshold": rows[1]}))
    return 0


if __name__ == "__main__":
    run(main)
