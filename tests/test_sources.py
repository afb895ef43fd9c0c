"""Frame sources: recorded files, corrupt frames, and a camera that disappears and comes back."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import SourceError
from edge.gate.sources import CameraSource, VideoFileSource

from .helpers import FakeCapture, PiCameras


def test_file_source_reads_every_frame_with_recorded_time(fixtures):
    src = VideoFileSource(fixtures / "video" / "short_hamilton_clip.mp4", realtime=False)
    frames = []
    while (f := src.read()) is not None:
        frames.append((f.index, f.t, f.image.shape))
    assert src.finished
    assert src.state == "finished"
    assert len(frames) == 275
    assert frames[30][1] == pytest.approx(30 / src.fps)
    assert frames[0][2] == (360, 640, 3)


def test_gif_source(fixtures):
    src = VideoFileSource(fixtures / "video" / "elon-musk-smoke.gif")
    n = 0
    while src.read() is not None:
        n += 1
    assert n == 35


def test_missing_and_non_video_files(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        VideoFileSource(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="cannot be opened"):
        VideoFileSource(bad)


def frame(v):
    return np.full((48, 64, 3), v, np.uint8)


def test_corrupt_frames_are_counted_and_skipped(tmp_path):
    p = tmp_path / "x.mp4"
    p.write_bytes(b"x")
    script = [
        frame(1),
        np.zeros((0, 0, 3), np.uint8),
        frame(2),
        np.zeros((4, 4, 7), np.uint8),
        frame(3),
    ]
    src = VideoFileSource(p, capture_factory=lambda _: FakeCapture(script))
    got = []
    while (f := src.read()) is not None:
        got.append(int(f.image[0, 0, 0]))
    assert got == [1, 2, 3]
    assert src.corrupt == 2


def test_camera_lost_mid_stream_is_reopened_with_backoff():
    now = [0.0]
    opens = []
    captures = [
        FakeCapture([frame(1), frame(2), None, None, None]),  # works, then unplugged
        None,
        None,  # two failed reopen attempts
        FakeCapture([frame(7), frame(8)]),
    ]

    def factory(dev):
        opens.append(now[0])
        cap = captures.pop(0) if captures else None  # later: unplugged for good
        if cap is None:
            c = FakeCapture([])
            c.opened = False
            return c
        return cap

    cam = CameraSource(0, capture_factory=factory, clock=lambda: now[0], reconnect_max_s=4.0)
    seen = []
    for _ in range(200):
        f = cam.read()
        if f is not None:
            seen.append(int(f.image[0, 0, 0]))
        now[0] += 0.1
    assert seen == [1, 2, 7, 8]
    assert cam.reconnects == 1
    gaps = np.diff(opens[1:4])  # the two failed attempts and the successful one
    assert (gaps >= 0.49).all()
    assert gaps[-1] > gaps[0]  # backoff grows
    tail = np.diff(opens[4:])
    assert len(tail)
    assert tail.max() <= 4.0 + 0.2  # and is capped at reconnect_max_s


def test_sources_are_context_managers_that_release_the_device():
    cap = FakeCapture([np.full((48, 64, 3), 90, np.uint8)])
    with CameraSource("/dev/video0", capture_factory=lambda _: cap) as src:
        assert src.read() is not None
        assert cap.opened
    assert not cap.opened
    assert src.state == "closed"
    cap = FakeCapture([])
    with pytest.raises(RuntimeError), CameraSource("0", capture_factory=lambda _: cap):
        raise RuntimeError("a failing caller")
    assert not cap.opened  # released on the way out of the error


def test_picamera2_frames_become_bgr_and_bad_ones_are_skipped(monkeypatch):
    import sys
    import types

    from edge.gate.sources import Picamera2Source

    xbgr = np.zeros((48, 64, 4), np.uint8)
    xbgr[..., 2] = 200
    cams = PiCameras([[xbgr, np.zeros((0, 0), np.uint8), RuntimeError("libcamera"), xbgr]])
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=cams))
    src = Picamera2Source(64, 48)
    first = src.read()
    assert first.image.shape == (48, 64, 3)  # the padding byte is dropped
    assert first.image[0, 0, 2] == 200
    assert src.read() is None  # an empty array: skipped, not a crash
    assert src.read() is None  # libcamera failing: lost, not a crash
    assert src.state == "lost"
    last = src.read()
    assert (last.index, src.state) == (2, "open")  # a failed capture is not a frame
    cam = src.cam
    src.close()
    assert cam.stopped
