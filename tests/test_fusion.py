"""policy.fuse_frames: the k frames of one candidate decided once, on their mean embedding."""

from __future__ import annotations

from contextlib import closing

import numpy as np

from edge.gallery.matcher import Matcher, to_template_grid
from edge.gate.policy import DENY, FACE, GRANT, FaceSeen, Observation, Policy, PolicyParams

FPS = 10.0
DIM = 128


def unit(v):
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def gallery(seed=0):
    """Two enrolled people, three templates each, and the matcher the gate would hold."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((2, DIM)))
    rows = to_template_grid(unit(np.repeat(centres, 3, 0) + 0.02 * rng.standard_normal((6, DIM))))
    return rng, centres, Matcher(rows, np.array(list("AAABBB"), dtype=object), 0.8, 0.04)


def frames_of(m: Matcher, embs: np.ndarray, valid_until=None):
    """FaceSeen per frame exactly as the daemon builds them from the matcher's verdicts."""
    out = []
    for e, r in zip(embs, m.match_many(embs), strict=True):
        out.append(
            FaceSeen(r.person_id, r.score, 0.2, (0.5, 0.5), True, valid_until, "", r.candidate, e)
        )
    return out


def run(policy, faces, wall=1_800_000_000.0):
    out = []
    for i, f in enumerate(faces):
        out += policy.step(Observation(i / FPS, i, wall, (f,), ()))
    return out


def noisy(rng, centre, n, sigma):
    return unit(centre + sigma * rng.standard_normal((n, DIM)))


def test_fused_frames_grant_where_each_frame_alone_is_refused():
    rng, centres, m = gallery()
    pool = noisy(rng, centres[0], 200, 0.075)
    near = [r.candidate == "A" and 0.7 < r.score < 0.8 for r in m.match_many(pool)]
    embs = pool[np.array(near)][:12]  # each frame a little below the 0.8 threshold
    assert len(embs) == 12
    single = m.match_many(embs)
    assert all(r.person_id is None and r.candidate == "A" for r in single)
    assert m.match_fused(embs[:3]).person_id == "A"
    seen = frames_of(m, embs)
    assert run(Policy(PolicyParams(k=3, n=5)), seen) == []  # voting: never 3 matches
    ds = run(Policy(PolicyParams(k=3, n=5), fuse=m.match_fused), seen)
    assert [(d.decision, d.via, d.subject, d.frame) for d in ds] == [(GRANT, FACE, "A", 2)]
    assert ds[0].score == round(m.match_fused(embs[:3]).score, 4)


def test_fused_strangers_are_never_granted_and_still_reported():
    rng, _, m = gallery(1)
    strangers = unit(rng.standard_normal((60, DIM)))
    ds = run(
        Policy(PolicyParams(k=3, n=5, window_s=2.0), fuse=m.match_fused), frames_of(m, strangers)
    )
    assert [(d.decision, d.reason) for d in ds] == [(DENY, "not_enrolled")]


def test_fused_grant_still_checks_the_pass():
    rng, centres, m = gallery(2)
    seen = frames_of(m, noisy(rng, centres[1], 8, 0.05), valid_until=1_700_000_000)
    ds = run(Policy(PolicyParams(k=3, n=5), fuse=m.match_fused), seen)
    assert [(d.decision, d.subject, d.reason) for d in ds] == [(DENY, "B", "pass_expired")]


def test_match_fused_is_the_normalised_mean_and_refuses_non_finite():
    rng, centres, m = gallery(3)
    embs = noisy(rng, centres[0], 4, 0.1) * np.array([[1.0], [2.0], [0.5], [3.0]], np.float32)
    mean = unit(unit(embs).mean(axis=0))
    fused, direct = m.match_fused(embs), m.match(mean)
    assert fused.person_id == direct.person_id == "A"
    assert abs(fused.score - direct.score) < 1e-6
    bad = embs.copy()
    bad[1, 3] = np.nan
    assert m.match_fused(bad).person_id is None
    assert m.match_fused(np.zeros((3, DIM), np.float32)).person_id is None


def test_gate_with_fused_frames_on_recorded_video(tmp_path, fixtures, pipeline):
    """End to end: fuse_frames from gate.toml; Lin-Manuel granted, the mall's strangers not."""

    from gpiozero.pins.mock import MockFactory

    from edge import config as config_mod
    from edge import tickets as tk
    from edge.gallery.crypto import init_key
    from edge.gallery.store import Consent, Gallery
    from edge.gate.daemon import Gate
    from edge.vision.image import load_image

    tk.keygen(tmp_path / "office")
    (tmp_path / "gate.toml").write_text(
        '[gallery]\ndb = "g.db"\nkey_file = "g.key"\n[policy]\nfuse_frames = true\n'
        '[tickets]\npubkeys = ["office/issuer.pub"]\nledger = "ledger.db"\n'
        '[relay]\npin_factory = "mock"\n[audit]\npath = "audit.db"\n'
    )
    cfg = config_mod.load(tmp_path / "gate.toml")
    photo = fixtures / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"
    emb = to_template_grid(pipeline.embed_still(load_image(photo)).embedding)
    with closing(Gallery(tmp_path / "g.db", init_key(tmp_path / "g.key"))) as g:
        pid = g.add_person("Lin", Consent("v1"), [emb], pipeline.spec.name, "v")

    def run_clip(name):
        events = []
        clip = config_mod.override(
            cfg, camera={"source": str(fixtures / "video" / name), "realtime": False}
        )
        with Gate(clip, events.append, pin_factory=MockFactory()) as gate:
            assert gate.policy.fuse is not None
            assert gate.run() == 0
        return events

    grants = [e for e in run_clip("short_hamilton_clip.mp4") if e["decision"] == "grant"]
    assert grants
    assert all(e["via"] == "face" and e["person"] == pid for e in grants)
    assert not [e for e in run_clip("mall_walking.mp4") if e["decision"] == "grant"]
