"""Frame sources: recorded video file, OpenCV/V4L2 camera, Picamera2, behind one small interface.

`read()` returns a Frame, or None when no frame is available right now (camera lost and being
reopened with backoff; the daemon keeps its watchdog alive meanwhile). `finished` is True only
at the end of a file. Corrupt frames are counted and skipped, never passed on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError, SourceError
from edge.vision.image import MAX_PIXELS, image_size, load_image, open_video, read_head, to_bgr8

log = logging.getLogger(__name__)
STILL_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm"}


@dataclass(frozen=True)
class Frame:
    """One camera or clip frame with its time, so policy windows use real seconds."""

    image: np.ndarray  # BGR uint8
    t: float  # seconds: recorded time for files, time.monotonic() for cameras
    index: int


class FrameSource:
    """Where frames come from; a context manager, so a failing caller still releases the device."""

    state: str = "closed"  # open | lost | finished | closed
    corrupt: int = 0
    finished: bool = False

    def read(self) -> Frame | None:  # pragma: no cover - interface
        """The next frame, or None when none is available right now."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""
        self.state = "closed"

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoFileSource(FrameSource):
    """A recorded clip: every frame, at its recorded rate (realtime) or as fast as possible.

    A file from which not one frame can be read is an error at its end, not an empty run.
    """

    def __init__(
        self,
        path: str | Path,
        realtime: bool = False,
        capture_factory: Callable | None = None,
        max_pixels: int = MAX_PIXELS,
    ):
        self.path = Path(path)
        if not os.path.isfile(self.path):  # False, not OSError, for a name too long
            what = (
                "is a folder, not a video"
                if os.path.isdir(self.path)
                else "is a device or a pipe, not a video file"
                if os.path.exists(self.path)
                else "does not exist"
            )
            raise SourceError(f"video {self.path} {what}", "check camera.source or --source")
        try:
            self.cap = (capture_factory or (lambda p: open_video(p, max_pixels)))(str(self.path))
        except ImageError as e:
            raise SourceError(str(e.args[0]), e.hint) from None
        if not self.cap.isOpened():
            raise SourceError(
                f"video {self.path} cannot be opened", "is it a video file (mp4, avi, gif)?"
            )
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 25.0
        self.realtime = realtime
        self.index = 0
        self.state = "open"
        self._t0 = time.monotonic()
        self._last_corrupt: ImageError | None = None

    def read(self) -> Frame | None:
        """Next good frame of the clip, skipping corrupt ones, paced when realtime."""
        while not self.finished:
            try:
                ok, img = self.cap.read()
            except Exception as e:  # a decoder fault mid-clip: the clip ends here, said so
                log.error(
                    "source read_failed source=%s index=%d reason=%s; the clip ends here",
                    self.path.name,
                    self.index,
                    e,
                )
                ok, img = False, None
            if not ok:
                self.finished, self.state = True, "finished"
                if self.index == 0:
                    raise SourceError(
                        f"{self.path}: no frame could be read (not a video or image, or damaged)",
                        "check camera.source or --source",
                    )
                if self.corrupt == self.index:  # every frame skipped: an error, not an empty run
                    why = self._last_corrupt
                    raise SourceError(
                        f"{self.path}: none of its {self.index} frame(s) can be used "
                        f"({why.args[0] if why else 'damaged'})",
                        (why.hint if why else "") or "check camera.source or --source",
                    )
                self._check_length()
                return None
            t = self.index / self.fps
            self.index += 1
            try:
                frame = Frame(to_bgr8(img, f"{self.path.name}#{self.index - 1}"), t, self.index - 1)
            except ImageError as e:
                self.corrupt += 1
                self._last_corrupt = e
                log.warning(
                    "source corrupt_frame source=%s index=%d reason=%s",
                    self.path.name,
                    self.index - 1,
                    e,
                )
                continue
            if self.realtime:
                delay = self._t0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            return frame
        return None

    def _check_length(self) -> None:
        """A clip that ends well before the frame count its container gives was cut short or
        damaged: the frames read were decided, and the log says what was missing."""
        try:
            claimed = float(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        except Exception:  # a container without a count: nothing to compare
            return
        if math.isfinite(claimed) and self.index < claimed - max(2.0, 0.02 * claimed):
            log.error(
                "source ended_early source=%s frames=%d of %d: the file is truncated or damaged "
                "after frame %d",
                self.path.name,
                self.index,
                int(claimed),
                self.index - 1,
            )

    def close(self) -> None:
        """Release the clip file."""
        self.cap.release()
        super().close()


class ImageFileSource(FrameSource):
    """A still photo as a one-frame source (`run --source photo.jpg`), size checked first."""

    def __init__(self, path: str | Path, max_pixels: int = MAX_PIXELS):
        self.path = Path(path)
        try:
            self.image = load_image(self.path, max_pixels)
        except ImageError as e:
            raise SourceError(str(e.args[0]), e.hint or "check camera.source or --source") from None
        self.state = "open"

    def read(self) -> Frame | None:
        """The photo once, then finished."""
        if self.finished:
            return None
        self.finished, self.state = True, "finished"
        return Frame(self.image, 0.0, 0)


class CameraSource(FrameSource):
    """A live camera (V4L2 via OpenCV); reopened with exponential backoff when it disappears."""

    def __init__(
        self,
        device: str | int,
        width: int = 640,
        height: int = 480,
        fps: float = 15.0,
        reconnect_max_s: float = 30.0,
        capture_factory: Callable = cv2.VideoCapture,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.device = int(device) if str(device).isdigit() else str(device)
        self.size, self.fps = (width, height), fps
        self.reconnect_max_s = reconnect_max_s
        self.factory, self.clock = capture_factory, clock
        self.cap = None
        self.index = 0
        self.failures = 0
        self.reconnects = 0
        self._next_try = 0.0
        self._backoff = 0.5
        if not self._open():
            raise SourceError(
                f"camera {device} cannot be opened",
                "check the cable, /dev/video*, and the video group",
            )

    def _open(self) -> bool:
        try:
            cap = self.factory(self.device)
            if cap is not None and cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
                cap.set(cv2.CAP_PROP_FPS, self.fps)
                self.cap, self.state = cap, "open"  # the backoff resets at a frame, not here
                return True
        except Exception as e:  # cv2.error, or a driver's OSError: the camera is not there
            log.warning("camera open_failed device=%s reason=%s", self.device, e)
        self.state = "lost"
        return False

    def read(self) -> Frame | None:
        """Next frame, or None while the camera is lost and being reopened with backoff."""
        now = self.clock()
        if self.state == "lost":
            if now < self._next_try:
                return None
            if not self._open():
                self._backoff = min(self._backoff * 2, self.reconnect_max_s)
                self._next_try = now + self._backoff
                return None
            self.reconnects += 1
            log.info("camera reconnected device=%s reconnects=%d", self.device, self.reconnects)
        try:
            ok, img = self.cap.read()
        except Exception as e:  # a driver that raises (unplugged mid-read): a missed frame
            if self.failures == 0:
                log.warning("camera read_failed device=%s reason=%s", self.device, e)
            ok, img = False, None
        if not ok or img is None:
            self.failures += 1
            if self.failures >= 3:  # a few misses in a row: the camera is gone
                log.error("camera lost device=%s; reopening with backoff", self.device)
                self._release()
                self.state, self.failures = "lost", 0
                self._next_try = now + self._backoff
                # a camera that opens but never gives a frame is tried less and less often too
                self._backoff = min(self._backoff * 2, self.reconnect_max_s)
            return None
        self.failures, self._backoff = 0, 0.5
        try:
            frame = Frame(to_bgr8(img, f"camera#{self.index}"), now, self.index)
        except ImageError as e:
            self.corrupt += 1
            log.warning("source corrupt_frame source=camera index=%d reason=%s", self.index, e)
            frame = None
        self.index += 1
        return frame

    def _release(self) -> None:
        try:
            self.cap.release()
        except Exception as e:  # a device already gone: nothing left to release
            log.warning("camera release_failed device=%s reason=%s", self.device, e)

    def close(self) -> None:
        """Release the camera device so another process can open it."""
        if self.cap is not None:
            self._release()
        super().close()


class Picamera2Source(FrameSource):
    """The Pi camera through libcamera; imported only when configured (the `pi` extra).

    Like a V4L2 camera it is reopened with backoff when it stops giving frames (a ribbon cable
    reseated, libcamera restarted): a few failed captures in a row and the camera is stopped,
    closed and started again, less and less often up to camera.reconnect_max_s.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        reconnect_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        try:
            # picamera2 exists only on a Pi (the `pi` extra)
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "picamera2 is not installed", "pip install 'edge-gate[pi]' on the Pi"
            ) from None
        self._make = Picamera2
        self.size, self.reconnect_max_s, self.clock = (width, height), reconnect_max_s, clock
        self.cam = None
        self.index = self.failures = self.reconnects = 0
        self._backoff, self._next_try = 0.5, 0.0
        why = self._open()
        if why:
            raise SourceError(
                f"the Pi camera cannot be started: {why}",
                "check the camera's ribbon cable and `rpicam-hello --list-cameras`",
            )

    def _open(self) -> str:
        """Start a camera; '' when it runs, else why not (state lost)."""
        try:
            cam = self._make()
            try:
                main = {"size": self.size, "format": "RGB888"}
                cam.configure(cam.create_video_configuration(main=main))
                cam.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    cam.close()
                raise
        except Exception as e:  # no camera (IndexError), busy, libcamera errors
            log.warning("camera picamera2_open_failed reason=%s", e)
            self.state = "lost"
            return str(e) or type(e).__name__
        self.cam, self.state = cam, "open"
        return ""

    def _release(self) -> None:
        cam, self.cam = self.cam, None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as e:  # a camera already gone
                log.warning("camera picamera2_release_failed reason=%s", e)

    def read(self) -> Frame | None:
        """Next Pi camera frame, or None (state lost) while libcamera fails or it is reopened."""
        now = self.clock()
        if self.cam is None:
            if now < self._next_try:
                return None
            if self._open():
                self._backoff = min(self._backoff * 2, self.reconnect_max_s)
                self._next_try = now + self._backoff
                return None
            self.reconnects += 1
            log.info("camera reconnected device=picamera2 reconnects=%d", self.reconnects)
        try:
            img = self.cam.capture_array()  # type: ignore[attr-defined]
        except Exception as e:  # libcamera reports many kinds of failure
            if self.failures == 0:
                log.error("camera picamera2_error reason=%s", e)
            self.failures += 1
            self.state = "lost"
            if self.failures >= 3:  # a few in a row: stop it and start it again, with backoff
                log.error("camera lost device=picamera2; reopening with backoff")
                self._release()
                self.failures = 0
                self._next_try = now + self._backoff
                self._backoff = min(self._backoff * 2, self.reconnect_max_s)
            return None
        self.state, self.failures, self._backoff = "open", 0, 0.5
        i, self.index = self.index, self.index + 1
        try:  # XBGR8888 and other layouts become 3-channel BGR like every other source
            return Frame(to_bgr8(img, f"picamera2#{i}"), now, i)
        except ImageError as e:
            self.corrupt += 1
            log.warning("source corrupt_frame source=picamera2 index=%d reason=%s", i, e)
            return None

    def close(self) -> None:
        """Stop the Pi camera so libcamera releases it."""
        self._release()
        super().close()


def open_source(
    spec: str,
    width: int = 640,
    height: int = 480,
    fps: float = 15.0,
    realtime: bool = True,
    reconnect_max_s: float = 30.0,
    max_pixels: int = MAX_PIXELS,
) -> FrameSource:
    """'picamera2', a device ('/dev/video0' or '0'), a still photo or a video file."""
    if spec == "picamera2":
        return Picamera2Source(width, height, reconnect_max_s)
    if spec.isdigit() or spec.startswith("/dev/video"):
        return CameraSource(spec, width, height, fps, reconnect_max_s)
    if still_image(spec):
        return ImageFileSource(spec, max_pixels)
    return VideoFileSource(spec, realtime=realtime, max_pixels=max_pixels)


def still_image(path: str | Path) -> bool:
    """A file that is (by its first bytes) or claims to be (by its name) a still photo."""
    p = Path(path)
    if p.suffix.lower() in STILL_EXT:
        return True
    try:
        found = image_size(read_head(p)) if os.path.isfile(p) else None
    except ImageError:
        return False
    return found is not None and found[0] != "GIF"  # a GIF may be an animation: a clip


class FirstFrames(FrameSource):
    """A frame source that ends after n frames (n = 0: when the wrapped one ends)."""

    def __init__(self, source: FrameSource, n: int):
        self.source, self.n, self.i, self.state = source, n, 0, "open"

    def read(self) -> Frame | None:
        """The next frame, or None (finished) once n frames were read."""
        try:
            f = None if (self.n and self.i >= self.n) else self.source.read()
        except Exception:
            self.finished = self.source.finished  # a clip's error at its end ends this too
            raise
        if f is None:
            self.finished, self.state = True, "finished"
        self.i += 1
        return f

    def close(self) -> None:
        """Release the wrapped source."""
        self.source.close()
        super().close()
