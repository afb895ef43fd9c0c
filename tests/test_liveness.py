"""Presentation-attack detection: the crop, the plane cue, the policy rule, the model's loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge import config as config_mod
from edge.errors import ConfigError, ModelError
from edge.gate.policy import FaceSeen, Observation, Policy, PolicyParams
from edge.vision import liveness as lv

from .helpers import MODELS

# A head in 3-D (metres, camera axes): eyes, nose tip 3 cm ahead, mouth, ears 9 cm behind.
HEAD = np.array(
    [
        [-0.032, -0.03, 0.0],
        [0.032, -0.03, 0.0],
        [0.0, 0.0, -0.03],
        [0.0, 0.035, 0.0],
        [-0.07, -0.005, 0.09],
        [0.07, -0.005, 0.09],
    ]
)


def project(
    points: np.ndarray, yaw: float, pitch: float, shift=(0.0, 0.0), depth=0.8
) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array(
        [[1, 0, 0], [0, cp, -sp], [0, sp, cp]]
    )
    p = points @ r.T + np.array([shift[0], shift[1], depth])
    return 600 * p[:, :2] / p[:, 2:] + np.array([320, 240])


def track(points, poses, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([project(points, *pose) + rng.normal(0, jitter, (6, 2)) for pose in poses])


# A card or head 25 cm from the camera, tilted and turned (the distance a phone is held at).
TILTS = [
    (y, p, (0.0, 0.0), 0.25)
    for y, p in [(0, 0), (0.25, 0.1), (-0.25, 0.05), (0.15, -0.2), (-0.1, 0.25)]
]


def test_a_tilted_photo_is_flat_and_a_turning_head_is_not():
    flat = HEAD * np.array([1, 1, 0])  # the same face printed: every point on one plane
    assert lv.looks_flat(track(flat, TILTS, jitter=0.2))
    assert not lv.looks_flat(track(HEAD, TILTS, jitter=0.2))
    sim, hom = lv.plane_fit(track(flat, TILTS))
    assert hom.max() < 1e-6 < sim.max()  # exact for a plane, and the tilt is no similarity


def test_a_still_or_walking_visitor_gives_the_cue_nothing_to_say():
    still = [(0.0, 0.0)] * 5
    assert not lv.looks_flat(track(HEAD, still, jitter=0.5))
    walking = [(0.0, 0.0, (0.0, 0.0), d) for d in (1.2, 1.1, 1.0, 0.9, 0.8)]
    assert not lv.looks_flat(track(HEAD * np.array([1, 1, 0]), walking, jitter=0.2))
    assert not lv.looks_flat(track(HEAD, [(0.0, 0.0)]))  # one frame: nothing to compare


def test_homographies_recover_a_known_map():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 100, (4, 6, 2))
    h = np.array([[1.1, 0.1, 5], [-0.05, 0.9, 3], [1e-3, 2e-3, 1]])
    b = np.concatenate([a, np.ones((4, 6, 1))], 2) @ h.T
    b = b[..., :2] / b[..., 2:]
    got = lv.homographies(a, b)
    np.testing.assert_allclose(got / got[:, 2:, 2:], np.broadcast_to(h, got.shape), atol=1e-6)


def test_crop_for_pad_stays_inside_and_shrinks_to_fit():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100] = 255
    c = lv.crop_for_pad(img, np.array([5, 40, 25, 60]), 2.7, 32)  # near the left edge
    assert c.shape == (32, 32, 3)
    assert c.mean() == 255  # shifted right, still all inside the white half
    whole = lv.crop_for_pad(img, np.array([60, 0, 150, 95]), 2.7, 32)  # too big: the whole height
    assert whole.shape == (32, 32, 3)
    assert 0 < whole.mean() < 255


def seen(pid, live, t=0.0):
    return FaceSeen(pid, 0.97, 0.3, (0.5, 0.5), True, live=live)


def run(policy, verdicts, pid="P-1"):
    out = []
    for i, live in enumerate(verdicts):
        out += policy.step(Observation(i * 0.1, i, 0.0, (seen(pid, live),)))
    return out


def test_grant_needs_k_live_frames_of_the_matched_person():
    p = PolicyParams(liveness=True)
    d = run(Policy(p), [True, True, True])
    assert [(x.decision, x.reason, x.frame) for x in d] == [("grant", "ok", 2)]
    d = run(Policy(p), [True, None, True, True])  # an unjudged frame is not live: one frame later
    assert [(x.decision, x.frame) for x in d] == [("grant", 3)]
    d = run(Policy(p), [True, False, None, True])  # 2 live of 4: wait
    assert d == []


def test_attack_is_denied_once_per_episode_and_never_granted():
    d = run(Policy(PolicyParams(liveness=True)), [False] * 40)
    assert [(x.decision, x.reason, x.subject) for x in d] == [
        ("deny", "presentation_attack", "P-1")
    ]
    d = run(Policy(PolicyParams(liveness=True)), [None] * 10)  # PAD could not judge: no grant
    assert [x.reason for x in d] == ["presentation_attack"]
    pol = Policy(PolicyParams(liveness=True))
    run(pol, [False] * 5)
    later = [
        pol.step(Observation(10 + i * 0.1, 100 + i, 0.0, (seen("P-1", False),))) for i in range(5)
    ]
    assert [x.reason for step in later for x in step] == ["presentation_attack"]  # a new episode


def test_an_attack_verdict_holds_until_the_visitor_leaves():
    """A face that flickers between verdicts reaches k live frames in some window eventually."""
    flicker = [False, False, False, True, True, True, True, True]
    d = run(Policy(PolicyParams(liveness=True)), flicker)
    assert [(x.decision, x.reason) for x in d] == [("deny", "presentation_attack")]
    pol = Policy(PolicyParams(liveness=True))
    run(pol, flicker)
    back = [
        pol.step(Observation(10 + i * 0.1, 100 + i, 0.0, (seen("P-1", True),))) for i in range(3)
    ]
    assert [x.decision for step in back for x in step] == [
        "grant"
    ]  # left and came back: judged anew
    d = run(Policy(PolicyParams(liveness=True)), [True, True, True] + [False] * 5)
    assert [(x.decision, x.reason) for x in d] == [("grant", "ok"), ("deny", "presentation_attack")]


def test_liveness_off_keeps_the_old_rule():
    d = run(Policy(PolicyParams(liveness=False)), [None, None, None])
    assert [x.decision for x in d] == ["grant"]


def test_config_liveness_mode_is_checked(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('[liveness]\nmode = "maybe"\n')
    with pytest.raises(ConfigError, match="liveness.mode"):
        config_mod.load(p)
    p.write_text('[liveness]\nmode = "off"\n')
    cfg = config_mod.load(p)
    assert PolicyParams.from_config(cfg).liveness is False
    assert PolicyParams.from_config(config_mod.load(None)).liveness is True  # on by default


def test_a_model_kept_for_comparison_cannot_be_the_gates(tmp_path):
    """The Faceplugin MiniFASNet stays in the catalogue for `eval-pad --model` only: the gate
    and doctor refuse it by name, with the models a gate may use."""
    p = tmp_path / "g.toml"
    p.write_text('[liveness]\nmode = "model"\nmodel = "minifasnet_int8"\n')
    cfg = config_mod.load(p)
    with pytest.raises(ModelError, match="comparison only") as e:
        lv.LivenessJudge.from_config(cfg, MODELS)
    assert "silentface_int8" in (e.value.hint or "") and "minifasnet" not in (e.value.hint or "")
    assert lv.PadSpec.load(MODELS, "minifasnet_int8").name == "minifasnet_int8"  # eval-pad's way
    judge = lv.LivenessJudge.from_config(config_mod.load(None), MODELS)
    assert judge is not None and judge.model.spec.name == "silentface_int8"


def test_shipped_model_loads_and_judges_in_range():
    spec = lv.PadSpec.load(MODELS, "minifasnet_int8")
    assert 0 < spec.threshold < 1
    assert spec.crop_scale > 1
    m = lv.PadModel(spec, threads=1)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    p = m.live_probability(img, np.array([120, 80, 200, 170]))
    assert 0.0 <= p <= 1.0


def test_a_face_filling_the_frame_is_not_judged_and_not_live(tmp_path):
    spec = lv.PadSpec.load(MODELS, "minifasnet_int8")
    assert 1 < spec.min_crop_scale < spec.crop_scale
    m = lv.PadModel(spec, threads=1)
    img = np.full((240, 320, 3), 200, np.uint8)  # a flat bright frame the model may call live
    small = np.array([130, 90, 190, 150])  # 60 px: the 2.7x crop fits
    close = np.array([60, 20, 260, 230])  # 210 px high in 240: no room to look around it
    assert lv.context_scale(img.shape, small, spec.crop_scale) == spec.crop_scale
    assert lv.context_scale(img.shape, close, spec.crop_scale) < spec.min_crop_scale
    assert m.live_probability(img, close) == 0.0
    assert not m.is_live(m.live_probability(img, close))
    assert m.too_close == 2
    m.live_probability(img, small)
    assert m.too_close == 2  # judged by the model
    cat = json.loads((MODELS / "models.json").read_text())
    del cat["liveness"]["minifasnet_int8"]["min_crop_scale"]  # unmeasured: the whole crop
    models = tmp_path / "models"
    models.mkdir()
    (models / "models.json").write_text(json.dumps(cat))
    strict = lv.PadSpec.load(models, "minifasnet_int8")
    assert strict.min_crop_scale == strict.crop_scale


def _int8_pad_files() -> list:
    cat = json.loads((MODELS / "models.json").read_text())["liveness"]
    return sorted(
        {
            m["file"]
            for e in cat.values()
            if e.get("quantization") == "int8"
            for m in e.get("models", [e])
        }
    )


@pytest.mark.parametrize("file", _int8_pad_files())
def test_shipped_int8_model_is_one_xnnpack_graph(file):
    """A standalone int8 RELU (or any op XNNPACK refuses) splits the graph and costs ~5x."""
    import edge.vision.runtime as rt

    it = rt._Interpreter(model_path=str(MODELS / file), num_threads=1)
    it.allocate_tensors()
    names = [op["op_name"] for op in it._get_ops_details()]
    assert "RELU" not in names
    assert "PRELU" not in names
    assert names.count("DELEGATE") == 1
    d = rt.TFLiteModel(MODELS / file, 1).delegation()
    assert d.partitions == 1 and d.builtin == ("SOFTMAX",)  # every other op inside XNNPACK


def test_both_silentface_int8_files_are_covered():
    assert {"minifasnetv2_int8.tflite", "minifasnetv1se_int8.tflite"} <= set(_int8_pad_files())


def test_missing_or_corrupt_model_is_a_model_error(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("*float*", "dlib*", "faceres*"))
    spec = lv.PadSpec.load(models, "minifasnet_int8")
    spec.path.write_bytes(spec.path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="SHA-256"):
        lv.PadModel(spec)
    spec.path.unlink()
    with pytest.raises(ModelError, match="missing"):
        lv.PadModel(spec)
    cat = json.loads((models / "models.json").read_text())
    del cat["liveness"]["minifasnet_int8"]["threshold"]
    (models / "models.json").write_text(json.dumps(cat))
    with pytest.raises(ModelError, match="eval-pad"):
        lv.PadSpec.load(models, "minifasnet_int8")


def test_off_is_named_by_doctor_and_privacy_report(tmp_path):
    from edge.gallery.crypto import init_key
    from edge.gallery.privacy import privacy_report
    from edge.gallery.store import Gallery
    from edge.gate.doctor import Site, run_checks

    db, key = tmp_path / "g.db", tmp_path / "g.key"
    Gallery(db, init_key(key)).close()
    for mode, status in (("off", "warn"), ("model+motion", "ok")):
        p = tmp_path / f"{mode}.toml"
        p.write_text(f'[liveness]\nmode = "{mode}"\n')
        cfg = config_mod.load(p)
        (check,) = [c for c in run_checks(Site(cfg, db, key)) if "presentation" in c.check]
        assert check.status == status
        assert mode in check.detail
        said = privacy_report(cfg, db, key)["presentation_attack_detection"]
        assert said.startswith("OFF") == (mode == "off")


# --- too close, and what the visitor is told ------------------------------------------------------


def seen_pad(pid, live, pad="", quality=()):
    return FaceSeen(pid, 0.97, 0.3, (0.5, 0.5), live is not None or pid is not None,
                    live=live, pad=pad, quality=quality)  # fmt: skip


def steps(policy, faces, t0=0.0, f0=0):
    out = []
    for i, f in enumerate(faces):
        out += policy.step(Observation(t0 + i * 0.1, f0 + i, 0.0, (f,)))
    return out


def test_too_close_is_its_own_reason_and_the_visitor_may_step_back():
    pol = Policy(PolicyParams(liveness=True))
    close = [seen_pad("P-1", False, "too_close")] * 8
    d = steps(pol, close)
    assert [(x.decision, x.reason) for x in d] == [("deny", "too_close")]  # once, not an attack
    assert [(g.notice, g.reason, g.subject) for g in pol.take_guidance()] == [
        ("step_back", "too_close", "P-1")
    ]
    assert pol.take_guidance() == []  # taken once
    d = steps(pol, [seen_pad("P-1", True)] * 5, t0=0.8, f0=8)  # stepped back: judged live
    assert [(x.decision, x.reason) for x in d] == [("grant", "ok")]
    assert pol.take_guidance() == []  # step back is said once per visitor


def test_an_attack_is_still_an_attack_when_some_frames_were_too_close():
    pol = Policy(PolicyParams(liveness=True))
    mixed = [seen_pad("P-1", False, "too_close")] * 2 + [seen_pad("P-1", False, "model")] * 6
    d = steps(pol, mixed)
    assert [x.reason for x in d] == ["too_close", "presentation_attack"]
    d = steps(pol, [seen_pad("P-1", True)] * 5, t0=0.8, f0=8)
    assert d == []  # judged an attack: no grant until the visitor leaves


def test_hold_still_while_liveness_has_not_decided():
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    other = FaceSeen(None, 0.5, 0.3, (0.5, 0.5), True)  # frames that match nobody
    wavering = [seen_pad("P-1", True), seen_pad("P-1", False, "model"), other, other] * 4
    assert steps(pol, wavering) == []  # never k live, never k not live
    told = pol.take_guidance()
    assert [(g.notice, g.reason) for g in told] == [("hold_still", "not_yet_live")]
    assert told[0].t >= 1.0  # not before half a window: a quick grant is never preceded by it
    quick = Policy(PolicyParams(liveness=True))
    assert [x.decision for x in steps(quick, [seen_pad("P-1", True)] * 3)] == ["grant"]
    assert quick.take_guidance() == []


def test_come_closer_once_for_a_face_too_small_to_recognise():
    pol = Policy(PolicyParams(liveness=True, window_s=2.0))
    small = FaceSeen(None, 0.0, 0.06, (0.5, 0.5), False, quality=("too_small",))
    assert steps(pol, [small] * 40) == []
    assert [(g.notice, g.reason) for g in pol.take_guidance()] == [("come_closer", "too_small")]
    blurry = FaceSeen(None, 0.0, 0.2, (0.5, 0.5), False, quality=("blurry",))
    steps(pol, [blurry] * 40, t0=10.0)  # gone for longer than a window; other faults: nothing
    assert pol.take_guidance() == []
    steps(pol, [small] * 40, t0=20.0)  # a new visitor far away: told again
    assert [g.notice for g in pol.take_guidance()] == ["come_closer"]


# --- the Silent-Face pair: crops, floor, fusion, catalogue ---------------------------------------


def ramp(h: int = 240, w: int = 320) -> np.ndarray:
    """An image whose blue channel is x and green channel is y (mod 256): crops show where."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.arange(w)[None, :] % 256
    img[:, :, 1] = np.arange(h)[:, None] % 256
    return img


def test_upstream_crop_scales_about_the_centre_when_it_fits():
    img = ramp()
    box = np.array([140.0, 100.0, 180.0, 140.0])  # 40 px, centre (160, 120)
    crop, s = lv.crop_upstream(img, box, 2.7, 80)
    assert s == 2.7 and crop.shape == (80, 80, 3)
    # 108 px about the centre: x 106..214, y 66..174
    assert abs(int(crop[0, 0, 0]) - 106) <= 2 and abs(int(crop[-1, -1, 0]) - 213) <= 2
    assert abs(int(crop[0, 0, 1]) - 66) <= 2 and abs(int(crop[-1, -1, 1]) - 173) <= 2


def test_upstream_crop_shifts_inside_and_shrinks_to_fit():
    img = ramp()
    near_left = np.array([2.0, 100.0, 42.0, 140.0])
    crop, s = lv.crop_upstream(img, near_left, 2.7, 80)
    assert s == 2.7
    assert int(crop[0, 0, 0]) <= 1  # shifted right: starts at the frame's left edge
    near_bottom_right = np.array([280.0, 200.0, 318.0, 238.0])
    crop, s = lv.crop_upstream(img, near_bottom_right, 4.0, 80)
    assert s == 4.0 and int(crop[-1, -1, 0]) >= 316 % 256 and int(crop[-1, -1, 1]) >= 236
    close = np.array([60.0, 20.0, 260.0, 230.0])  # 210 px high in 240: s cut to 239/210
    crop, s = lv.crop_upstream(img, close, 4.0, 80)
    assert s == pytest.approx(239 / 210)
    assert s == lv.context_scale(img.shape, close, 4.0)
    assert crop.shape == (80, 80, 3)


def test_box_map_moves_and_scales_about_the_centre():
    bm = lv.BoxMap(dx=0.1, dy=-0.2, sw=0.5, sh=2.0)
    got = bm.apply(np.array([100.0, 100.0, 200.0, 150.0]))
    np.testing.assert_allclose(got, [135.0, 65.0, 185.0, 165.0])
    assert lv.BoxMap.from_dict(None) == lv.BoxMap()
    assert lv.BoxMap.from_dict(bm.as_dict()) == bm
    np.testing.assert_allclose(lv.BoxMap().apply(np.array([1, 2, 3, 4])), [1, 2, 3, 4])


@pytest.fixture(scope="module")
def silentface():
    return lv.PadModel(lv.PadSpec.load(MODELS, "silentface_int8"), threads=1)


def test_silentface_entry_is_two_networks_at_two_scales(silentface):
    spec = silentface.spec
    assert [(m.crop_scale, m.size, m.channels, m.live_index, m.crop) for m in spec.members] == [
        (2.7, 80, "BGR", 1, "upstream"),
        (4.0, 80, "BGR", 1, "upstream"),
    ]
    assert spec.crop_scale == 4.0
    assert 1.0 < spec.min_crop_scale < 2.7
    assert spec.box_map != lv.BoxMap()  # RetinaFace-style boxes, not BlazeFace's
    assert 0 < spec.threshold < 1


def test_fusion_is_the_mean_of_each_networks_live_probability(silentface):
    """Recomputed here from each member file on upstream's crop: p[1], averaged."""
    from edge.vision.runtime import TFLiteModel

    rng = np.random.default_rng(3)
    img = cv2_blur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    box = np.array([280.0, 180.0, 360.0, 260.0])  # context allows the full 4.0 of both
    got = silentface.score(img, box)
    mapped = silentface.model_box(box)  # the map, on a 1/64 px grid
    want = []
    for m in silentface.spec.members:
        crop, s = lv.crop_upstream(img, mapped, m.crop_scale, 80)
        assert s == m.crop_scale
        p = TFLiteModel(m.path, 1).run(crop.astype(np.float32)[None])[0].reshape(-1)
        want.append(p[1] / p.sum())
    assert not got.too_close
    assert got.scales == (2.7, 4.0)
    assert got.context == 4.0
    np.testing.assert_allclose(got.members, want, atol=1e-6)
    assert got.live == pytest.approx(float(np.mean(want)))
    assert silentface.live_probability(img, box) == got.live


@pytest.mark.parametrize(
    "rule, want",
    [
        ("mean", lambda p: np.mean(p)),
        ("max", lambda p: np.max(p)),
        ("min", lambda p: np.min(p)),
        ("geometric", lambda p: np.sqrt(p[0] * p[1])),
        ("logit", lambda p: 1 / (1 + np.exp(-np.mean(np.log(p / (1 - p)))))),
    ],
)
def test_each_fusion_rule_fuses_the_members_probabilities(silentface, rule, want):
    """The rules `eval-pad --fusion` measures: each from the same two member probabilities."""
    import dataclasses

    rng = np.random.default_rng(3)
    img = cv2_blur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    box = np.array([280.0, 180.0, 360.0, 260.0])
    model = lv.PadModel(dataclasses.replace(silentface.spec, fusion=rule))
    got = model.score(img, box)
    assert got.members == silentface.score(img, box).members
    assert got.live == pytest.approx(float(want(np.array(got.members))), abs=1e-9)
    assert lv.FUSIONS["min"](np.array(got.members)) <= got.live
    assert got.live <= lv.FUSIONS["max"](np.array(got.members))


def cv2_blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (7, 7), 2)


def test_a_close_face_is_judged_with_less_context_down_to_the_floor(silentface):
    """Each network uses what the frame allows (upstream shrinks the scale); below the floor
    the face is too close: not judged, not live, and the context is still reported."""
    spec = silentface.spec
    img = cv2_blur(np.random.default_rng(4).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    bm = spec.box_map

    def blaze_box(mapped_h: float) -> np.ndarray:  # a BlazeFace box whose mapped height is h
        bh, bw = mapped_h / bm.sh, mapped_h / bm.sh
        cx, cy = 320 - bm.dx * bw, 240 - bm.dy * bh
        return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])

    mid = silentface.score(img, blaze_box(479 / 3.0))  # room for 3.0: V2 full, V1SE cut
    assert not mid.too_close
    assert mid.context == pytest.approx(3.0, abs=1e-3)  # the box on a 1/64 px grid
    assert mid.scales == pytest.approx((2.7, 3.0), abs=1e-3)
    before = silentface.too_close
    edge_ = silentface.score(img, blaze_box(479 / (spec.min_crop_scale + 0.05)))
    assert not edge_.too_close and edge_.scales[0] < 2.7  # both networks shrink
    close = silentface.score(img, blaze_box(479 / (spec.min_crop_scale - 0.05)))
    assert close.too_close and close.live == 0.0 and close.members == ()
    assert close.context == pytest.approx(spec.min_crop_scale - 0.05, abs=1e-3)
    assert silentface.too_close == before + 1
    assert not silentface.is_live(close.live)


def test_context_is_counted_in_face_heights_on_both_axes():
    """The model-style box is narrower than tall; the frame's width must not be counted in those
    narrow widths. Landscape (height binds): context_scale of the mapped box. Portrait, width
    binding: the mapped height in the box's own proportions, so a face 0.65 of a phone frame's
    width leaves 1.5, not the 2.2 its narrow mapped widths would count."""
    bm = lv.BoxMap(dx=-0.05, dy=-0.1, sw=0.7, sh=0.9)
    land = np.array([270.0, 150.0, 370.0, 250.0])  # 100 px square in 640x480
    mapped = bm.apply(land)
    got = lv.judged_context((480, 640, 3), land, mapped, 99.0)
    assert got == pytest.approx(lv.context_scale((480, 640, 3), mapped, 99.0))
    assert got == pytest.approx(479 / 90)
    phone = np.array([190.0, 800.0, 890.0, 1500.0])  # 700 px square in 1080x1920
    mapped = bm.apply(phone)
    assert lv.context_scale((1920, 1080, 3), mapped, 99.0) == pytest.approx(1079 / 490)
    assert lv.judged_context((1920, 1080, 3), phone, mapped, 99.0) == pytest.approx(1079 / 630)
    assert lv.judged_context((1920, 1080, 3), phone, phone, 99.0) == pytest.approx(1079 / 700)
    assert lv.judged_context((1920, 1080, 3), phone, mapped, 1.2) == 1.2


def test_a_face_filling_a_portrait_frames_width_is_too_close(silentface):
    """A face 0.65 of a portrait frame's width, with room above and below: too close to judge
    (its narrow model-style widths alone would count 2.2, over the floor)."""
    spec = silentface.spec
    img = cv2_blur(np.random.default_rng(5).integers(0, 255, (1920, 1080, 3), dtype=np.uint8))
    box = np.array([190.0, 700.0, 890.0, 1400.0])
    mapped = silentface.model_box(box)
    assert lv.context_scale(img.shape, mapped, spec.crop_scale) > spec.min_crop_scale
    before = silentface.too_close
    s = silentface.score(img, box)
    assert s.too_close and s.live == 0.0 and silentface.too_close == before + 1
    assert s.context == pytest.approx(1079 / (mapped[3] - mapped[1]), rel=1e-6)
    assert s.context < spec.min_crop_scale


def test_catalogue_liveness_entries_are_complete_and_their_files_match():
    """Every liveness entry names files that exist with the recorded SHA-256, an input spec,
    a live index, a scale and (several networks) a known fusion; the default is one of them."""
    from edge.vision.models import file_sha256

    cat = json.loads((MODELS / "models.json").read_text())["liveness"]
    assert config_mod.load(None).liveness.model in cat
    for name, e in cat.items():
        spec = lv.PadSpec.load(MODELS, name)
        for m, row in zip(spec.members, e.get("models", [e]), strict=True):
            assert file_sha256(m.path) == row["sha256"] == m.sha256, name
            assert row["size"] == m.size and row["channels"] in ("BGR", "RGB")
            assert 0 <= m.live_index < row["classes"]
            assert m.crop_scale >= spec.min_crop_scale > 1
        if "models" in e:
            assert e["fusion"].startswith("mean")
            assert e["license"].startswith("Apache-2.0")
            assert set(e["box_map"]) == {"dx", "dy", "sw", "sh"}


def test_an_incomplete_or_unknown_fusion_entry_is_a_model_error(tmp_path):
    cat = json.loads((MODELS / "models.json").read_text())
    models = tmp_path / "models"
    models.mkdir()
    bad = json.loads(json.dumps(cat))
    bad["liveness"]["silentface_int8"]["fusion"] = "median of the members"
    (models / "models.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="fusion"):
        lv.PadSpec.load(models, "silentface_int8")
    bad = json.loads(json.dumps(cat))
    del bad["liveness"]["silentface_int8"]["models"][1]["sha256"]
    (models / "models.json").write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="incomplete"):
        lv.PadSpec.load(models, "silentface_int8")


def test_a_corrupt_member_file_is_refused(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("dlib*", "faceres*", "mobile*"))
    spec = lv.PadSpec.load(models, "silentface_int8")
    second = spec.members[1].path
    second.write_bytes(second.read_bytes()[:-1] + b"\0")
    with pytest.raises(ModelError, match="SHA-256"):
        lv.PadModel(spec)


@pytest.mark.heavy  # 4 min under emulation; the equivalence check compares the CPUs there
def test_float_and_int8_twins_agree_on_renderings(fixtures):
    """Not calibration data: faces of the faces/ fixtures, as they are and printed or on a
    screen (edge.lab.padsynth). The int8 pair follows the float pair within the measured bound
    (MODELS.md: median |delta| about 0.01, the largest about 0.4 near the decision's middle)."""
    import cv2

    from edge.lab.padsynth import render_print, render_screen
    from edge.vision.detector import BlazeFace

    det = BlazeFace(MODELS / "blazeface_short.tflite", "short", threads=1, min_score=0.5)
    f = lv.PadModel(lv.PadSpec.load(MODELS, "silentface_float"))
    q = lv.PadModel(lv.PadSpec.load(MODELS, "silentface_int8"))
    rng = np.random.default_rng(0)
    diffs, pairs = [], []
    for p in sorted((fixtures / "faces").glob("*/*"))[::4]:
        img = cv2.imread(str(p))
        if img is None:
            continue
        for im in (img, render_print(img, rng), render_screen(img, rng)):
            found = det.detect(im)
            if not found:
                continue
            box = max(found, key=lambda d: d.width).box
            a, b = f.score(im, box), q.score(im, box)
            assert a.too_close == b.too_close and a.context == b.context
            if not a.too_close:
                diffs.append(abs(a.live - b.live))
                pairs.append((a.live, b.live))
    d = np.array(diffs)
    assert len(d) >= 40
    assert np.median(d) < 0.03
    assert d.max() < 0.5
    assert np.corrcoef(np.array(pairs).T)[0, 1] > 0.95


def test_the_next_in_a_queue_is_judged_anew_after_an_attack_with_no_gap():
    """Before: a visit ended only after a window with no face, so a pass holder stepping up
    right behind a refused attack (faces in view all along) stayed in the attacker's visit and
    was never let in until they stepped away. Once the window holds only their frames, theirs is
    a new visit: judged live, granted."""
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    attack = steps(pol, [seen_pad("P-1", False, "model")] * 6)
    assert [(x.reason, x.subject) for x in attack] == [("presentation_attack", "P-1")]
    nxt = steps(pol, [seen_pad("P-2", True)] * 8, t0=0.6, f0=6)
    assert [(x.decision, x.subject) for x in nxt] == [("grant", "P-2")]
    assert nxt[0].frame == 6 + 4  # once none of P-1's frames is left in the window of 5


def test_a_screen_showing_two_enrolled_faces_in_turn_stays_one_visit():
    """The switch to another pass holder starts a new visit only once the last one's frames have
    left the window: faces alternating in it get no fresh verdict, so a replay flickering
    between two enrolled people and between verdicts is refused once and never let in."""
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    judged = [seen_pad(pid, False, "model") for pid in ("P-1", "P-2") * 3]
    flicker = [seen_pad(pid, True) for pid in ("P-1", "P-1", "P-1", "P-2") * 5]
    d = steps(pol, judged + flicker)
    assert [x.decision for x in d] == ["deny"], d
    assert d[0].reason == "presentation_attack"


def test_the_next_pass_holder_after_a_grant_is_told_to_step_back():
    """Let in, then the next in the queue steps up too close with no gap: before, they shared the
    last visitor's visit and heard nothing (a visitor let in is not guided on the way through)."""
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    assert [x.decision for x in steps(pol, [seen_pad("P-1", True)] * 4)] == ["grant"]
    pol.take_guidance()
    close = steps(pol, [seen_pad("P-2", False, "too_close")] * 8, t0=0.4, f0=4)
    assert [(x.reason, x.subject) for x in close] == [("too_close", "P-2")]
    assert [g.notice for g in pol.take_guidance()] == ["step_back"]


NOBODY = FaceSeen(None, 0.3, 0.3, (0.5, 0.5), True)  # a face in view that matches no one


@pytest.mark.parametrize(
    "between",
    [
        [seen_pad("P-2", False, "model")] * 5,  # another enrolled face shown, refused too
        [NOBODY] * 5 + [seen_pad("P-2", True)] * 3 + [NOBODY] * 5,  # the window flushed
        "two faces",  # one frame with two faces empties the window
        [(seen_pad("P-2", True), seen_pad("P-3", True))] * 25,  # two faces for over a window
    ],
    ids=["other-face", "flushed", "two-faces", "two-faces-long"],
)
def test_a_face_judged_an_attack_gets_no_retry_while_faces_stay_at_the_gate(between):
    """A replay refused as an attack, then another enrolled face (or faces matching nobody, or
    a frame with two faces) to move the window on, then the first face again on a screen
    flickering between verdicts: the first face gets no fresh verdict until the gate has been
    empty for a window, whatever visits came between (before, two faces in view for over a
    window also started a fresh visit)."""
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    faces = [seen_pad("P-1", False, "model")] * 4
    if between == "two faces":
        faces += [(seen_pad("P-2", True), seen_pad("P-3", True))] + [seen_pad("P-2", True)] * 3
        faces += [(seen_pad("P-2", True), seen_pad("P-3", True))]
    else:
        faces += between
    flicker = [seen_pad("P-1", live) for live in (True, False, True, False, True, True, True)]
    out = []
    for i, f in enumerate(faces + flicker * 2):
        out += pol.step(Observation(i * 0.1, i, 0.0, f if isinstance(f, tuple) else (f,)))
    assert not [d for d in out if d.decision == "grant" and d.subject == "P-1"], out
    assert ("presentation_attack", "P-1") in [(d.reason, d.subject) for d in out]
    gone = len(faces + flicker * 2) * 0.1 + 2.5  # the gate empty for more than a window
    back = [pol.step(Observation(gone + i * 0.1, 900 + i, 0.0, (seen_pad("P-1", True),)))
            for i in range(3)]  # fmt: skip
    assert [(d.decision, d.subject) for step in back for d in step] == [("grant", "P-1")]
