"""The frame and surround cues on drawn scenes: what they refuse, and what they leave alone."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.errors import ImageError
from edge.vision import cues

H, W = 480, 640
BOX = np.array([270.0, 170.0, 370.0, 270.0])  # a 100 px face in the middle of the view


def texture(shape, seed, level=120, spread=40, blur=5.0):
    """Something with detail (a photo, a room): smoothed noise."""
    rng = np.random.default_rng(seed)
    n = cv2.GaussianBlur(rng.normal(0, 1, shape[:2]).astype(np.float32), (0, 0), blur)
    tint = cv2.GaussianBlur(rng.normal(0, 1, shape[:2] + (3,)).astype(np.float32), (0, 0), 9.0)
    img = level + spread * (n / n.std())[:, :, None] + 0.3 * spread * tint / tint.std()
    return np.clip(img, 0, 255).astype(np.uint8)


def plain(level=(150, 152, 155), seed=0):
    """A plain gray surface, lit a little unevenly, with sensor noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.92, 1.05, W, dtype=np.float32)[None, :, None]
    img = np.array(level, np.float32)[None, None, :] * ramp * np.ones((H, W, 1), np.float32)
    return np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def head(img, seed=1):
    """A textured head (face and hair) around BOX."""
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (320, 210), (68, 88), 0, 0, 360, 255, -1)
    img[mask > 0] = texture((H, W), seed, 140)[mask > 0]
    return img


def shoulders(img):
    """Neck and sloping shoulders below the head, in a plain-coloured shirt with folds."""
    mask = np.zeros((H, W), np.uint8)
    neck_and_shoulders = [[290, 290], [350, 290], [360, 300], [460, 330], [497, 480]]
    neck_and_shoulders += [[143, 480], [180, 330], [280, 300]]
    cv2.fillPoly(mask, [np.array(neck_and_shoulders, np.int32)], 255)
    img[mask > 0] = texture((H, W), 30, 70, 18, 3.0)[mask > 0]
    return img


def test_a_print_held_up_on_a_plain_surround_is_framed():
    img = plain()
    x0, y0, x1, y1 = 215, 95, 425, 395  # the print: 2.1 x 3 faces, face inside
    img[y0:y1, x0:x1] = texture((y1 - y0, x1 - x0), 3, 70, 25, 12.0)  # a dark photo
    head(img)
    assert cues.veto(img, BOX) == "frame"


def test_a_patterned_print_on_a_plain_surround_is_framed_by_its_outermost_lines():
    img = plain()
    img[95:395, 215:425] = texture((300, 210), 4, 90, 20, 12.0)
    for x in range(225, 420, 12):  # the photo's own stripes: more lines than a side may hold
        cv2.line(img, (x, 95), (x, 394), (30, 30, 140), 3)
    head(img)
    assert cues.veto(img, BOX) == "frame"


def test_one_border_and_a_railing_across_the_face_are_a_lane_not_a_print():
    """A glass panel's edge against a plain wall on one side of the visitor, a queue railing's
    balusters on the other: a row of lines counts only by its outermost line with a plain
    surface beyond it, so one border and a row are no frame (a print whose stripes run out of
    view on one side looks the same, and is left to the model)."""
    img = plain()
    cv2.line(img, (200, 0), (200, H), (70, 70, 75), 3)
    for x in range(400, W, 22):
        cv2.rectangle(img, (x, 0), (x + 5, H), (50, 50, 55), -1)
    head(shoulders(img))
    assert cues.veto(img, BOX) is None


def test_a_print_held_close_is_framed_by_borders_that_run_out_of_the_view():
    """A face half the frame's height: the print's sides cross the top and bottom of the view,
    and only their part inside the frame is an edge (the crop repeats the frame's last rows
    beyond it, which drew them on to the crop's border)."""
    img = plain()
    img[:, 25:615] = texture((H, 590), 12, 80, 25, 12.0)
    box = np.array([190.0, 110.0, 450.0, 370.0])  # 260 px
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (320, 225), (170, 225), 0, 0, 360, 255, -1)
    img[mask > 0] = texture((H, W), 13, 140)[mask > 0]
    assert cues.veto(img, box) == "frame"


def test_one_border_alone_is_a_door_frame_not_a_print():
    """A plain wall on one side of the visitor, a room beyond a door frame on the other: one
    border with nothing parallel across the face is no print."""
    img = texture((H, W), 11, 110, 30)
    img[:, :215] = plain()[:, :215]
    head(img)
    assert cues.veto(img, BOX) is None


def test_a_screen_with_its_bezel_is_framed_even_on_a_busy_background():
    img = texture((H, W), 5, 100, 50)
    cv2.rectangle(img, (200, 80), (440, 420), (15, 15, 18), -1)  # bezel
    img[95:405, 215:425] = texture((310, 210), 6, 150)  # the picture
    head(img)
    assert cues.veto(img, BOX) == "frame"


def test_a_head_cut_out_on_a_plain_surround_floats():
    img = head(plain())
    assert cues.veto(img, BOX) == "surround"


def test_a_person_in_front_of_a_plain_wall_is_left_alone():
    img = plain()
    body = np.array([[240, 300], [400, 300], [470, 480], [170, 480]], np.int32)  # shoulders
    cv2.fillPoly(img, [body], (60, 70, 120))
    head(img)
    assert cues.veto(img, BOX) is None


def test_a_room_with_straight_lines_on_one_side_is_left_alone():
    img = texture((H, W), 7, 110, 30)
    for x in (120, 150, 180):  # a window's bars, a door frame: all on one side
        cv2.line(img, (x, 0), (x, H), (20, 20, 20), 3)
    head(img)
    assert cues.veto(img, BOX) is None


def test_folds_on_both_sides_are_texture_not_an_edge():
    img = texture((H, W), 8, 110, 30)  # a room, not a plain surface, beyond the folds
    for i, x in enumerate(range(130, 236, 15)):  # folds either side: 5 or more lines a side
        shade = (40, 40, 120) if i % 2 else (90, 90, 200)
        cv2.rectangle(img, (x, 0), (x + 15, H), shade, -1)
        cv2.rectangle(img, (W - x - 15, 0), (W - x, H), shade, -1)
    head(img)
    assert cues.veto(img, BOX) is None


def test_the_frames_own_border_is_no_edge():
    """A face near the frame's edges: the crop runs past them, and they are not a print."""
    img = texture((H, W), 9, 110, 30)
    box = np.array([10.0, 10.0, 130.0, 130.0])
    crop, valid = cues.canonical(img, box)
    assert not valid.all()
    assert not cues.framed(cues.straight_edges(crop, valid))


def test_the_surround_cue_says_nothing_when_the_shoulders_are_out_of_view():
    img = head(plain())
    close = np.array([200.0, 300.0, 440.0, 470.0])  # a face at the bottom edge, 170 px high
    crop, valid = cues.canonical(img, close)
    assert not cues.floating_head(crop, valid)


def test_lone_rim_tells_a_border_beside_the_face_from_one_above_it():
    """The measured, unused one-border cue (models/MODELS.md): which side its edge is on."""
    from edge.lab.pad_cues import lone_rim

    rng = np.random.default_rng(3)
    box = np.array([250.0, 190.0, 350.0, 290.0])  # a 100 px face box at (300, 240)
    textured = rng.normal(140, 25, (480, 640, 3)).clip(0, 255).astype(np.uint8)
    textured = cv2.GaussianBlur(textured, (0, 0), 1.5)
    beside = textured.copy()
    beside[:, 410:] = 60  # a plain surface from 1.1 face sizes right of the centre
    above = textured.copy()
    above[:125] = 60  # ... or above it
    assert lone_rim(beside, box) == "beside"
    assert lone_rim(above, box) == "above_below"
    assert lone_rim(textured, box) is None


@pytest.mark.parametrize(
    "box",
    [[np.inf, 170.0, 370.0, 270.0], [270.0, -np.inf, 370.0, 270.0], [-1e9, -1e9, 1e9, 1e9]],
    ids=["inf", "-inf", "far"],
)
def test_a_box_that_cannot_be_placed_has_nothing_in_view_and_refuses_nothing(box):
    """OpenCV's warp crashed the process on a transform with an infinite or enormous scale."""
    img = head(plain())
    crop, valid = cues.canonical(img, np.array(box))
    assert crop.shape == (cues.SIZE, cues.SIZE, 3) and not valid.any()
    assert cues.veto(img, np.array(box)) is None


def test_a_gray_or_deep_frame_is_read_as_8_bit_bgr():
    """A gray (2-D or one channel), 16-bit or float frame made the line detector or the colour
    conversion raise OpenCV's error; it is read as the gate reads any frame (as_bgr8)."""
    img = plain()
    img[95:395, 215:425] = texture((300, 210), 3, 70, 25, 12.0)  # a print held up, as above
    head(img)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert cues.veto(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), BOX) == "frame"
    for frame in (gray, gray[:, :, None], gray.astype(np.uint16) * 257, gray / 255.0):
        assert cues.veto(frame, BOX) == "frame"
    with pytest.raises(ImageError, match="empty"):
        cues.veto(np.zeros((0, 0, 3), np.uint8), BOX)


def test_a_visitor_under_a_canopy_against_the_sky_is_left_alone():
    """A rim above the head (the canopy's edge, plain sky beyond it) and shoulders in a plain
    shirt below: one border with nothing parallel across the face is no print."""
    img = texture((H, W), 11, 110, 30)
    img[:110] = plain((215, 200, 190), 7)[:110]
    cv2.rectangle(img, (0, 110), (W, 122), (60, 60, 65), -1)
    head(shoulders(img))
    crop, valid = cues.canonical(img, BOX)
    edges = cues.straight_edges(crop, valid)
    assert any(e.side == 3 and e.beyond <= cues.PLAIN_STD for e in edges)  # the rim is seen
    assert cues.veto(img, BOX) is None
