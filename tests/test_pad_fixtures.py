"""Liveness on recorded cameras and rendered attacks, end to end (issue 19's done-when checks).

Real clips (`pad_frames/video`): a man live in his room, and the same man's face replayed on a
phone held up to the camera. Renderings (edge/lab/padsynth.py, made here, never stored): fixture
faces printed, cut out around the head, or on a screen, on a plain gray/white surround.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.lab import padsynth
from edge.lab.synth import write_video
from edge.vision import cues

from .helpers import events, make_config, run_gate
from .test_pad_gate import enroll, pulses

FPS = 15.0


def frames(clip: Path, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
    return padsynth.read_part(clip, start, stop)[0]


def clip_of(images: list[np.ndarray], path: Path) -> Path:
    h, w = images[0].shape[:2]
    write_video(path, iter(images), FPS, (w, h))
    return path


def run_cli(cfg, clip: Path, tmp: Path) -> tuple[list[dict], list[dict]]:
    """`edge-gate run` on a clip, as systemd would start it: its decisions and notices."""
    ev = tmp / f"{clip.stem}.jsonl"
    p = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", cfg.source_file, "--source",
         str(clip), "--events", str(ev), "--fast", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return events(ev), events(ev, "notice")


@pytest.fixture(scope="module")
def zubair(fixtures) -> dict[str, Path]:
    v = fixtures / "pad_frames" / "video"
    return {"live": v / "live" / "zubair_live.webm", "replay": v / "screen" / "zubair_screen.webm"}


def test_zubair_live_is_granted_and_his_phone_replay_refused(tmp_path, zubair, pipeline):
    cfg = make_config(tmp_path)
    photo = tmp_path / "zubair.png"
    cv2.imwrite(str(photo), frames(zubair["live"], 0, 1)[0])  # enrolled from his live clip
    pid = enroll(cfg, pipeline, photo, "Zubair")
    got, told = run_cli(cfg, zubair["live"], tmp_path)
    grants = [e for e in got if e["decision"] == "grant"]
    assert grants and all(e["person"] == pid for e in grants), got
    assert ("welcome", "grant") in [(n["notice"], n["decision"]) for n in told]
    # The replay clip opens with him, live, holding up the phone (frames 0-27): from frame 30
    # on only the phone's screen shows his face.
    replay = clip_of(frames(zubair["replay"], 30), tmp_path / "replay.mp4")
    got, _ = run_cli(cfg, replay, tmp_path)
    assert not [e for e in got if e["decision"] == "grant"], got
    # The short-range detector misses a face that small; the full-range one finds it, the
    # matcher knows him, and liveness refuses the screen.
    full = make_config(tmp_path / "full", '[vision]\ndetector = "blazeface_full"\n')
    enroll(full, pipeline, photo, "Zubair")
    got, _ = run_cli(full, replay, tmp_path / "full")
    said = [(e["decision"], e["reason"]) for e in got]
    assert said and said[0] == ("deny", "presentation_attack"), said  # refused as an attack
    assert "grant" not in [d for d, _ in said], said


def test_the_hamilton_clip_still_grants_by_frame_100(tmp_path, fixtures, pipeline):
    from .helpers import enroll_lin

    cfg = make_config(tmp_path)
    pid = enroll_lin(cfg, fixtures, pipeline)
    gate, ev = run_gate(cfg, fixtures / "video" / "short_hamilton_clip.mp4", tmp_path)
    grants = [e for e in ev if e["decision"] == "grant"]
    assert grants and grants[0]["person"] == pid and grants[0]["frame"] <= 100, ev
    assert pulses(gate) >= 1


# Renderings: a person enrolled from one photo, another photo of them held up on a plain
# surround. Faces up to 0.42 of the frame height: beyond that the print's or screen's edges
# leave the view and only the model judges (MODELS.md).
KNOWN_MISS = pytest.mark.xfail(
    reason="the Oval Office photo's curtains are a row of straight lines inside the print and "
    "its right edge lies on the frame's: the model alone decides (MODELS.md, Cues)",
    strict=False,
)
SURROUND_CASES = [
    pytest.param(person, style, frac, marks=[KNOWN_MISS] if (person, style, frac) == (
        "obama", "print", 0.42) else [])
    for person in ("biden", "df_A", "obama")
    for style in padsynth.SURROUND_STYLES
    for frac in (0.35, 0.42)
]  # fmt: skip


def surround_clip(
    photo_path: Path, style: str, frac: float, out: Path, pipeline, held: bool = True
) -> Path:
    """30 frames of one rendering, held in a hand (a tremor of 2 px and 0.5 degrees) or
    propped up (only the sensor's noise changes)."""
    photo = cv2.imread(str(photo_path))
    box = pipeline.embed_still(photo).detection.box
    rng = np.random.default_rng(1)
    poses = padsynth.tremor(rng, 30) if held else np.zeros((30, 3))
    shown = [
        padsynth.render_surround(
            photo, box, style, np.random.default_rng(7), face_frac=frac, held=tuple(pose)
        )
        for pose in poses
    ]
    noisy = [np.clip(f + rng.normal(0, 1.5, f.shape), 0, 255).astype(np.uint8) for f in shown]
    return clip_of(noisy, out)


@pytest.mark.parametrize(("person", "style", "frac"), SURROUND_CASES)
def test_gray_surround_renderings_are_refused(tmp_path, fixtures, pipeline, person, style, frac):
    """Held in a hand, and the stillness cue off: the model and the frame and surround cues
    refuse them."""
    photos = sorted((fixtures / "faces" / person).iterdir())
    cfg = make_config(tmp_path, "[liveness]\nstillness = false\n")
    enroll(cfg, pipeline, photos[0], person)
    clip = surround_clip(photos[1], style, frac, tmp_path / "attack.mp4", pipeline)
    gate, ev = run_gate(cfg, clip, tmp_path)
    assert pulses(gate) == 0, ev
    assert not [e for e in ev if e["decision"] == "grant"], ev


def test_a_propped_up_print_the_other_checks_pass_is_refused_as_still(tmp_path, fixtures, pipeline):
    """The Oval Office print at 0.42 of the height, which the model and the cues let through
    when it is held, propped up instead: it never moves, and is refused as an attack."""
    photos = sorted((fixtures / "faces" / "obama").iterdir())
    cfg = make_config(tmp_path)
    enroll(cfg, pipeline, photos[0], "obama")
    clip = surround_clip(photos[1], "print", 0.42, tmp_path / "still.mp4", pipeline, held=False)
    gate, ev = run_gate(cfg, clip, tmp_path)
    assert pulses(gate) == 0, ev
    assert [e["reason"] for e in ev if e.get("via") == "face"] == ["presentation_attack"], ev
    off = make_config(tmp_path / "off", "[liveness]\nstillness = false\n")
    enroll(off, pipeline, photos[0], "obama")
    gate, ev = run_gate(off, clip, tmp_path / "off")
    assert pulses(gate) == 1, ev  # what the cue alone refuses


@pytest.mark.parametrize("style", padsynth.SURROUND_STYLES)
def test_the_cues_refuse_renderings_the_model_is_not_asked_about(fixtures, pipeline, style):
    """Something other than the context model: at 0.35-0.42 of the frame height the cues
    alone refuse most renderings of every fixture person's first photo."""
    people = sorted(p for p in (fixtures / "faces").iterdir() if p.is_dir())
    refused = total = 0
    for i, person in enumerate(people):
        photo = cv2.imread(str(sorted(person.iterdir())[0]))
        seen = pipeline.embed_still(photo)
        if seen is None:
            continue
        rng = np.random.default_rng(100 + i)
        frame = padsynth.render_surround(
            photo, seen.detection.box, style, rng, face_frac=rng.uniform(0.35, 0.42)
        )
        faces = pipeline.analyze(frame)
        if not faces:
            continue
        box = max(faces, key=lambda f: f.detection.width).detection.box
        refused += cues.veto(frame, box) is not None
        total += 1
    assert total >= 15
    assert refused / total >= 0.6, (refused, total)


def test_eval_pad_clips_reports_clip_level_figures(tmp_path, fixtures, capsys):
    """The recorded clips as they are (a re-encoded copy would judge differently)."""
    from edge.cli import main

    v = fixtures / "pad_frames" / "video"
    d = tmp_path / "clips"
    (d / "live").mkdir(parents=True)
    (d / "attack" / "screen").mkdir(parents=True)
    (d / "live" / "zubair_live.webm").symlink_to(v / "live" / "zubair_live.webm")
    for name in ("manikantha.mp4", "tdreplay1.mp4"):
        (d / "attack" / "screen" / name).symlink_to(v / "screen" / name)
    (d / "attack" / "screen" / "empty.mov").touch()  # no frame: left out, and listed
    assert main(["eval-pad", "--clips", str(d), "--json", "--per-file"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["live"] == 1 and r["attacks"] == {"screen": 2}  # the empty clip is no refusal
    assert [x["file"] for x in r["skipped"]] == ["attack/screen/empty.mov"]
    assert "no frame could be read" in r["skipped"][0]["reason"]
    assert r["bpcer"] == 0.0 and r["apcer"] == 0.0
    live = next(x for x in r["results"] if x["kind"] == "live")
    assert live["decision"] == "grant" and 0 <= live["latency_frames"] <= 10
    assert r["median_frames_to_grant"] == live["latency_frames"]
    for a in (x for x in r["results"] if x["kind"] == "screen"):
        assert a["decision"] == "presentation_attack" and a["latency_frames"] is not None


def doctor_context(cfg, source: Path):
    from edge import config as config_mod
    from edge.gate.doctor import doctor_checks

    cfg = config_mod.override(cfg, camera={"source": str(source)})
    (c,) = [c for c in doctor_checks(cfg) if c.check == "camera context"]
    return c


def test_doctor_warns_when_a_face_at_the_mark_leaves_liveness_too_little_context(
    tmp_path, fixtures, pipeline
):
    cfg = make_config(tmp_path)
    ok = doctor_context(cfg, fixtures / "pad_frames" / "video" / "live" / "zubair_live.webm")
    assert ok.status == "ok" and "leaves" in ok.detail, ok
    photo = cv2.imread(str(fixtures / "faces" / "lin_manuel_miranda" / "lin-manuel-miranda.png"))
    x0, y0, x1, y1 = pipeline.embed_still(photo).detection.box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.65 * max(x1 - x0, y1 - y0)
    tight = photo[max(int(cy - half), 0) : int(cy + half), max(int(cx - half), 0) : int(cx + half)]
    close = clip_of([cv2.resize(tight, (640, 480))] * 5, tmp_path / "close.mp4")
    warn = doctor_context(cfg, close)
    assert warn.status == "warn" and "too close" in warn.detail, warn
    assert "further back" in warn.fix and "frame height" in warn.fix
    empty = clip_of([np.full((480, 640, 3), 90, np.uint8)] * 5, tmp_path / "empty.mp4")
    nobody = doctor_context(cfg, empty)
    assert nobody.status == "ok" and "stand at the lane's mark" in nobody.detail
