"""The stillness cue: a face that never moves is a picture propped up; a visitor always moves."""

from __future__ import annotations

import cv2
import numpy as np

from edge.gate import policy
from edge.gate.policy import FaceSeen, Observation, Policy, PolicyParams
from edge.vision import liveness
from edge.vision.stillness import (
    MAX_TRACKS,
    MOVED,
    MOVING,
    NOT_YET,
    STILL,
    STILL_S,
    Stillness,
    change,
    patch,
)

FPS = 15.0
BOX = np.array([200.0, 120.0, 320.0, 260.0])  # a face-sized box in a 640x480 frame


def scene(seed: int = 0) -> np.ndarray:
    """A textured 640x480 frame: edges at every scale, like a face and its surroundings."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (480, 640, 3)).astype(np.float32), (0, 0), 3.0)
    return np.clip(128 + noise / noise.std() * 40, 0, 255).astype(np.uint8)  # a face's contrast


def shot(frame: np.ndarray, rng, dx: float = 0.0, gain: float = 0.0, noise: float = 2.0):
    """The frame moved by dx pixels, brightened by gain, with fresh sensor noise."""
    m = np.float32([[1, 0, dx], [0, 1, 0]])
    moved = cv2.warpAffine(frame, m, (640, 480), borderMode=cv2.BORDER_REFLECT).astype(float)
    return np.clip(moved + gain + rng.normal(0, noise, moved.shape), 0, 255).astype(np.uint8)


def test_a_propped_picture_is_not_yet_judged_then_still():
    rng, still, base = np.random.default_rng(1), Stillness(), scene()
    said = [still.see(shot(base, rng), BOX, i / FPS) for i in range(30)]
    cut = int(np.ceil(STILL_S * FPS))
    assert said[:cut] == [NOT_YET] * cut
    assert set(said[cut:]) == {STILL}


def test_the_sensors_noise_and_the_exposure_changing_are_not_motion():
    rng, base = np.random.default_rng(2), scene()
    a = patch(shot(base, rng, noise=4.0), BOX)
    b = patch(shot(base, rng, noise=4.0, gain=25.0), BOX)  # brighter by a step
    assert change(a, b) < 0.7 * MOVED
    darker = (base * 0.95).astype(np.uint8)  # the auto-exposure's gain 5% down
    assert change(a, patch(shot(darker, rng, noise=4.0), BOX)) < 0.7 * MOVED


def test_a_pixel_of_motion_is_motion_and_stays_so():
    rng, still, base = np.random.default_rng(3), Stillness(), scene()
    said = [still.see(shot(base, rng), BOX, i / FPS) for i in range(5)]
    said += [still.see(shot(base, rng, dx=1.0), BOX, (5 + i) / FPS) for i in range(40)]
    assert said[:5] == [NOT_YET] * 5
    assert set(said[5:]) == {MOVING}  # the frames after it stay moving, however still


def test_a_slow_drift_is_seen_against_the_first_frame():
    """Half a pixel in a second, a twentieth of a pixel per frame: each frame is like the one
    before, but not like the first."""
    rng, still, base = np.random.default_rng(4), Stillness(), scene()
    said = [still.see(shot(base, rng, dx=i * 0.04), BOX, i / FPS) for i in range(20)]
    assert said[-1] == MOVING and said[0] == NOT_YET


def test_a_live_face_beside_a_propped_one_lends_it_no_motion():
    rng, still, base = np.random.default_rng(5), Stillness(), scene()
    other = BOX + np.array([260.0, 0.0, 260.0, 0.0])
    for i in range(30):
        f = shot(base, rng)
        # the left face sways; the right one is printed on the wall
        f[:, :400] = shot(base, rng, dx=np.sin(i / 3) * 2)[:, :400]
        left = still.see(f, BOX, i / FPS)
        right = still.see(f, other, i / FPS)
    assert (left, right) == (MOVING, STILL)


def test_a_visitor_who_left_is_forgotten():
    rng, still, base = np.random.default_rng(6), Stillness(gap_s=2.0), scene()
    assert still.see(shot(base, rng), BOX, 0.0) == NOT_YET
    assert still.see(shot(base, rng, dx=2.0), BOX, 0.1) == MOVING
    assert still.see(shot(base, rng, dx=2.0), BOX, 2.5) == NOT_YET  # a new visitor


def test_a_box_or_time_that_cannot_be_followed_is_never_live_by_this_cue():
    still, f = Stillness(), scene()
    assert still.see(f, np.array([np.nan, 0, 10, 10]), 0.0) == NOT_YET
    assert still.see(f, BOX, float("nan")) == NOT_YET
    tiny = np.array([5.0, 5.0, 5.2, 5.2])  # nothing to resample: its track waits, then is still
    assert [still.see(f, tiny, t) for t in (0.0, 1.0, 1.6)] == [NOT_YET, NOT_YET, STILL]
    assert still.see(np.zeros((480, 640), np.uint8), BOX, 0.0) == NOT_YET  # gray: read as BGR


def test_a_clock_stepped_back_keeps_the_tracks_and_their_motion():
    rng, still, base = np.random.default_rng(7), Stillness(), scene()
    assert still.see(shot(base, rng), BOX, 10.0) == NOT_YET
    assert still.see(shot(base, rng, dx=2.0), BOX, 10.1) == MOVING
    assert still.see(shot(base, rng, dx=2.0), BOX, 9.0) == MOVING  # dated earlier: same visitor


def test_faces_followed_at_once_are_bounded():
    rng, still, f = np.random.default_rng(8), Stillness(), scene()
    for i in range(200):  # a crowd, or boxes at random: each a new track
        x, y = rng.uniform(0, 600), rng.uniform(0, 440)
        still.see(f, np.array([x, y, x + 30, y + 30]), i * 0.005)
    assert len(still.tracks) <= MAX_TRACKS


def seen(live, pad=""):
    return FaceSeen("P-1", 0.97, 0.3, (0.5, 0.5), True, live=live, pad=pad)


def test_the_policy_waits_on_a_face_not_yet_seen_to_move():
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    frames = [seen(False, "not_moved")] * 6 + [seen(True)] * 3
    d = [x for i, f in enumerate(frames) for x in pol.step(Observation(i * 0.1, i, 0.0, (f,)))]
    assert [(x.decision, x.reason) for x in d] == [("grant", "ok")]  # waited, not refused


def test_the_policy_refuses_a_still_picture_as_an_attack():
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    frames = [seen(False, "not_moved")] * 4 + [seen(False, "still")] * 3 + [seen(True)] * 3
    d = [x for i, f in enumerate(frames) for x in pol.step(Observation(i * 0.1, i, 0.0, (f,)))]
    assert [(x.decision, x.reason) for x in d] == [("deny", "presentation_attack")]
    assert d[0].frame == 6  # at the third still frame: the waiting ones counted for nothing


def test_a_visitor_waited_for_is_not_told_to_hold_still():
    """`hold_still` while the gate waits to see the face move would ask for the one thing
    that gets a visitor refused."""
    pol = Policy(PolicyParams(liveness=True, k=3, n=5, window_s=2.0))
    frames = [seen(False, "not_moved")] * 14
    for i, f in enumerate(frames):
        pol.step(Observation(i * 0.1, i, 0.0, (f,)))
    assert pol.take_guidance() == []


def test_the_policy_and_the_judge_name_the_reasons_alike():
    assert policy.PAD_NOT_MOVED == liveness.NOT_MOVED
    assert policy.PAD_TOO_CLOSE == liveness.TOO_CLOSE
