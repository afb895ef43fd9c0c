"""Presentation-attack detection: a passive model on one frame, a motion cue over a visit's frames.

Model: a MiniFASNet-style net (int8 TFLite) judges a crop of the face box enlarged `crop_scale`
times (the paper's or screen's edge, moire and gloss are in the context around the face).

Motion: a photo or a screen moved in front of the camera is one plane, so the six BlazeFace
keypoints of any two frames follow one homography; a real head turning shows parallax (nose
against eyes and ears) that no homography explains. The cue only vetoes: it says "flat" when the
keypoints deformed beyond a similarity (the card was tilted) and a homography still explains
them; a visitor who stands still gives it nothing to say, and the model alone decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import LIVENESS_MODES as MODES
from edge.config import Config
from edge.errors import ModelError
from edge.vision.cues import veto
from edge.vision.models import load_catalogue, verify_file
from edge.vision.runtime import TFLiteModel
from edge.vision.stillness import NOT_YET, STILL, Stillness

log = logging.getLogger(__name__)

# Motion thresholds, in inter-ocular distances (RMS keypoint error) over the pairs of a 5-frame
# window. BlazeFace keypoint jitter on a live face overlaps a tilted card, so these are set where
# the live Hamilton clip never fires (a weak veto; figures in MODELS.md).
MIN_DEFORM = 0.03
PLANE_TOL = 0.015
MIN_PAIRS = 5


@dataclass(frozen=True)
class BoxMap:
    """A BlazeFace box as the box style a PAD model was trained on.

    The centre moves by (dx, dy) box widths / heights and the size scales by (sw, sh). Silent-Face
    crops were cut around RetinaFace boxes, larger than BlazeFace's: the fitted map is in
    models.json (`box_map`, from scripts/fit_pad_box.py). The identity for models whose crops
    are cut around BlazeFace's own box.
    """

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, box: np.ndarray) -> np.ndarray:
        """(x0, y0, x1, y1) mapped, float64."""
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2 + self.dx * w, (y0 + y1) / 2 + self.dy * h
        nw, nh = w * self.sw, h * self.sh
        return np.array([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2])

    def as_dict(self) -> dict:
        """The four coefficients, as models.json keeps them."""
        return {"dx": self.dx, "dy": self.dy, "sw": self.sw, "sh": self.sh}

    @classmethod
    def from_dict(cls, d: dict | None) -> BoxMap:
        """From models.json's `box_map` (absent: the identity)."""
        d = d or {}
        return cls(*(float(d.get(k, v)) for k, v in (("dx", 0), ("dy", 0), ("sw", 1), ("sh", 1))))


@dataclass(frozen=True)
class PadMember:
    """One network of a liveness entry: its file, input and the context it looks at."""

    path: Path
    sha256: str
    size: int
    crop_scale: float  # the face box enlarged this many times about its centre, when it fits
    channels: str
    live_index: int
    # "upstream": Silent-Face's rule (generate_patches.py): integer crop of the scaled box, shifted
    # inside the frame. "gate": crop_for_pad, the rule the Faceplugin threshold was measured with.
    crop: str = "gate"


def _logit_mean(p: np.ndarray) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return float(1.0 / (1.0 + np.exp(-np.mean(np.log(q / (1 - q))))))


# How a liveness entry's members' live probabilities become one. "mean" is the shipped rule
# (upstream sums the softmaxes and halves class 1: the same number); the others are measured with
# `edge-gate eval-pad --fusion` (MODELS.md) and were not adopted.
FUSIONS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda p: float(np.mean(p)),
    "max": lambda p: float(np.max(p)),
    "min": lambda p: float(np.min(p)),
    "geometric": lambda p: float(np.exp(np.mean(np.log(np.clip(p, 1e-9, 1.0))))),
    "logit": _logit_mean,
}


@dataclass(frozen=True)
class PadSpec:
    """One liveness catalogue entry: one network, or several at their own scales, fused."""

    name: str
    members: tuple[PadMember, ...]
    threshold: float  # fused live probability at or above which a crop counts as live
    # The least context (face box enlargement the frame allows, in the model's box style) for the
    # model to judge: below it the face is too close, not judged and not live. models.json
    # `min_crop_scale`; absent there, the largest member's full crop_scale is required.
    min_crop_scale: float = 0.0
    box_map: BoxMap = BoxMap()
    fusion: str = "mean"

    @property
    def path(self) -> Path:
        """The first member's file (the only one for single-network entries)."""
        return self.members[0].path

    @property
    def crop_scale(self) -> float:
        """The most context any member looks at."""
        return max(m.crop_scale for m in self.members)

    @classmethod
    def load(
        cls, models_dir: Path, name: str, require_threshold: bool = True, for_gate: bool = False
    ) -> PadSpec:
        """Read a PAD model's entry from models.json, refusing one with no measured threshold,
        and (`for_gate`) one the catalogue keeps for comparison only (`"gate": false`)."""
        group = load_catalogue(models_dir).get("liveness", {})
        if name not in group:
            raise ModelError(
                f"no liveness model named {name!r} in {models_dir / 'models.json'}",
                "run scripts/build_models.py --only liveness, or set [liveness] model",
            )
        e = group[name]
        if for_gate and e.get("gate", True) is False:
            usable = sorted(n for n, v in group.items() if v.get("gate", True) is not False)
            raise ModelError(
                f"liveness model {name!r} is kept for comparison only (eval-pad --model): "
                f"{e.get('gate_note', 'not for a gate')}",
                f"set [liveness] model to one of {', '.join(usable) or 'none built'}",
            )
        if "threshold" not in e and require_threshold:
            raise ModelError(
                f"liveness model {name!r} has no measured threshold",
                "run edge-gate eval-pad DIR --write-threshold",
            )
        try:
            rows = e.get("models", [e])
            members = tuple(
                PadMember(
                    models_dir / m["file"],
                    m["sha256"],
                    int(m["size"]),
                    float(m["crop_scale"]),
                    m["channels"],
                    int(m["live_index"]),
                    "upstream" if "models" in e else "gate",
                )
                for m in rows
            )
            fusion = e.get("fusion", "mean").split(";")[0].split(" ")[0]
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(
                f"liveness model {name!r} in {models_dir / 'models.json'} is incomplete: {err!r}",
                "rebuild it: scripts/build_models.py --only liveness",
            ) from None
        if not members or fusion not in FUSIONS:
            raise ModelError(
                f"liveness model {name!r}: no member networks or unknown fusion {fusion!r}",
                "rebuild it: scripts/build_models.py --only liveness",
            )
        top = max(m.crop_scale for m in members)
        return cls(
            name,
            members,
            float(e.get("threshold", 0.5)),
            float(e.get("min_crop_scale", top)),
            BoxMap.from_dict(e.get("box_map")),
            fusion,
        )


def context_scale(shape: tuple[int, ...], box: np.ndarray, scale: float) -> float:
    """How many times the face box can be enlarged (up to `scale`) and still fit the frame."""
    h, w = shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    return min((h - 1) / max(y1 - y0, 1.0), (w - 1) / max(x1 - x0, 1.0), scale)


def judged_context(
    shape: tuple[int, ...], box: np.ndarray, mapped: np.ndarray, cap: float
) -> float:
    """The context a face is held against the floor with: how many model-style face heights of
    the view the frame holds around it, on both axes (up to `cap`).

    `box` is the detector's (BlazeFace, about as wide as tall), `mapped` the model-style box. The
    model-style box is narrower than it is tall (RetinaFace's style: 0.71 x 0.91 of BlazeFace's),
    so counting the frame's width in its widths would credit a face with more surroundings
    sideways than the view holds: in a portrait frame whose width binds, 2.0 mapped widths are
    1.4 BlazeFace widths. One yardstick on both axes instead: the mapped height, in BlazeFace's
    own proportions. Where the height binds (an upright face in a landscape camera) this is
    context_scale of the mapped box; the identity map leaves it context_scale of the box.
    """
    h, w = shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    unit = max(float(mapped[3]) - float(mapped[1]), 1.0)  # mapped height, px
    across = unit * max(x1 - x0, 1.0) / max(y1 - y0, 1.0)  # the same, in the box's proportions
    return min((h - 1) / unit, (w - 1) / max(across, 1.0), cap)


def crop_for_pad(bgr: np.ndarray, box: np.ndarray, scale: float, size: int) -> np.ndarray:
    """The face box enlarged `scale` times about its centre, shifted to stay inside the frame.

    When the enlarged box does not fit, the scale shrinks to what fits (the model's own
    preprocessing does the same); `PadModel` refuses to judge below its `min_crop_scale`.
    """
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    s = context_scale(bgr.shape, box, scale)
    nw, nh = bw * s, bh * s
    left = min(max((x0 + x1 - nw) / 2, 0.0), w - 1 - nw)
    top = min(max((y0 + y1 - nh) / 2, 0.0), h - 1 - nh)
    left, top = max(left, 0.0), max(top, 0.0)
    crop = bgr[int(top) : int(top + nh) + 1, int(left) : int(left + nw) + 1]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def crop_upstream(
    bgr: np.ndarray, box: np.ndarray, scale: float, size: int
) -> tuple[np.ndarray, float]:
    """Silent-Face's crop (its generate_patches.py), and the scale it could use.

    The scale is cut to min((H-1)/h, (W-1)/w, scale): a face too close for the full context is
    judged with less. The box scaled by that about its centre is shifted back inside the frame,
    cut at integer pixels (truncated) and resized bilinearly to size x size.
    """
    h, w = bgr.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    s = min((h - 1) / bh, (w - 1) / bw, scale)
    nw, nh = bw * s, bh * s
    left, top = x0 + bw / 2 - nw / 2, y0 + bh / 2 - nh / 2
    left -= min(left, 0.0) + max(left + nw - w, 0.0)  # shift inside: first left/top, then
    top -= min(top, 0.0) + max(top + nh - h, 0.0)  # right/bottom, as upstream does
    x0i, y0i, x1i, y1i = int(left), int(top), int(left + nw), int(top + nh)
    crop = bgr[max(y0i, 0) : max(y1i, y0i + 1), max(x0i, 0) : max(x1i, x0i + 1)]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR), s


@dataclass(frozen=True)
class PadScore:
    """One face judged: the fused live probability and the context it was judged with."""

    live: float  # 0..1; 0 when too close (not judged)
    context: float  # judged_context: model-style face heights of view around the face on both
    # axes, capped at the largest member's crop_scale; what the floor is compared with
    too_close: bool  # context below the entry's min_crop_scale: not judged
    scales: tuple[float, ...] = ()  # each member's scale actually used
    members: tuple[float, ...] = ()  # each member's live probability


class PadModel:
    """The liveness net(s): a face box in a frame -> probability that the face is live."""

    def __init__(self, spec: PadSpec, threads: int = 1, verify: bool = True):
        self.spec = spec
        self.models = []
        for m in spec.members:
            if verify:
                verify_file(m.path, m.sha256)
            model = TFLiteModel(m.path, threads)
            shape = model.inputs[0].shape
            if shape != (1, m.size, m.size, 3):
                raise ModelError(
                    f"{m.path}: input {shape}, expected (1, {m.size}, {m.size}, 3)",
                    "the file does not match models.json; rebuild it",
                )
            self.models.append(model)
        self.model = self.models[0]
        self.too_close = 0  # faces not judged: the frame held too little context around them

    def score(self, bgr: np.ndarray, box: np.ndarray) -> PadScore:
        """The face in `box` (a BlazeFace box) of this frame, judged with the context it allows.

        Too close (live 0) when the frame holds less than min_crop_scale face heights around
        it on either axis (judged_context): a phone or a print held close to the lens shows no
        edge, and a frame not judged is not live.
        """
        context = judged_context(bgr.shape, box, self.model_box(box), self.spec.crop_scale)
        if context < self.spec.min_crop_scale:
            self.too_close += 1
            log.debug("liveness unjudged reason=too_close context=%.2f", context)
            return PadScore(0.0, context, True)
        probs, scales = [], []
        for m, out, s in self.outputs(bgr, box):
            probs.append(float(out[m.live_index] / max(float(out.sum()), 1e-6)))
            scales.append(s)
        live = FUSIONS[self.spec.fusion](np.asarray(probs, np.float64))
        return PadScore(live, context, False, tuple(scales), tuple(probs))

    def outputs(
        self, bgr: np.ndarray, box: np.ndarray
    ) -> list[tuple[PadMember, np.ndarray, float]]:
        """Each member's raw output on its own crop, and the scale it used (no floor applied)."""
        mapped = self.model_box(box)
        out = []
        for m, model in zip(self.spec.members, self.models, strict=True):
            if m.crop == "upstream":
                crop, s = crop_upstream(bgr, mapped, m.crop_scale, m.size)
            else:
                crop = crop_for_pad(bgr, mapped, m.crop_scale, m.size)
                s = context_scale(bgr.shape, mapped, m.crop_scale)
            if m.channels == "RGB":
                crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
            (y,) = model.run(crop.astype(np.float32)[None])
            out.append((m, y.reshape(-1), s))
        return out

    def model_box(self, box: np.ndarray) -> np.ndarray:
        """The model-style box on a 1/64 px grid: the crop truncates to whole pixels, and a
        detector box that differs in its last bits between CPUs (x86 and ARM: 3e-5 px) must not
        move a crop edge by a pixel (measured: up to 0.06 on the live probability)."""
        return np.round(self.spec.box_map.apply(box) * 64.0) / 64.0

    def live_probability(self, bgr: np.ndarray, box: np.ndarray) -> float:
        """Probability (0..1) that the face in `box` of this frame is live (0: too close)."""
        return self.score(bgr, box).live

    def is_live(self, probability: float) -> bool:
        """The verdict at the measured (or configured) threshold."""
        return probability >= self.spec.threshold


# --- the motion cue (pure) -----------------------------------------------------------------------


def _normalise(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hartley normalisation of (B, N, 2) points: centroid 0, mean distance sqrt(2)."""
    c = p.mean(axis=1, keepdims=True)
    d = np.linalg.norm(p - c, axis=2).mean(axis=1)
    s = np.sqrt(2) / np.maximum(d, 1e-9)
    t = np.zeros((len(p), 3, 3))
    t[:, 0, 0] = t[:, 1, 1] = s
    t[:, 0, 2], t[:, 1, 2] = -s * c[:, 0, 0], -s * c[:, 0, 1]
    t[:, 2, 2] = 1
    return (p - c) * s[:, None, None], t


def homographies(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least-squares homographies (B, 3, 3) taking points a (B, N, 2) to b, by normalised DLT."""
    an, ta = _normalise(a.astype(np.float64))
    bn, tb = _normalise(b.astype(np.float64))
    bsz, n = an.shape[:2]
    x, y = an[..., 0], an[..., 1]
    u, v = bn[..., 0], bn[..., 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    r1 = np.stack([-x, -y, -one, zero, zero, zero, u * x, u * y, u], axis=2)
    r2 = np.stack([zero, zero, zero, -x, -y, -one, v * x, v * y, v], axis=2)
    m = np.concatenate([r1, r2], axis=1)  # (B, 2N, 9)
    h = np.linalg.svd(m)[2][:, -1].reshape(bsz, 3, 3)
    return np.linalg.inv(tb) @ h @ ta


def _project(h: np.ndarray, p: np.ndarray) -> np.ndarray:
    ph = np.concatenate([p, np.ones(p.shape[:2] + (1,))], axis=2) @ np.transpose(h, (0, 2, 1))
    return ph[..., :2] / np.where(np.abs(ph[..., 2:]) < 1e-12, 1e-12, ph[..., 2:])


def similarity_residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS error (B,) of the best similarity (rotation, scale, shift) taking a to b."""
    za = a[..., 0] + 1j * a[..., 1]
    zb = b[..., 0] + 1j * b[..., 1]
    za_c = za - za.mean(axis=1, keepdims=True)
    zb_c = zb - zb.mean(axis=1, keepdims=True)
    k = (np.conj(za_c) * zb_c).sum(1) / np.maximum((np.abs(za_c) ** 2).sum(1), 1e-12)
    return np.sqrt((np.abs(zb_c - k[:, None] * za_c) ** 2).mean(axis=1))


def inter_ocular(kps: np.ndarray) -> np.ndarray:
    """Eye-to-eye distance of (..., 6, 2) keypoints: the unit the motion thresholds are in."""
    return np.maximum(np.linalg.norm(kps[..., 1, :] - kps[..., 0, :], axis=-1), 1e-6)


def plane_fit(kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pair of frames in (T, 6, 2): (similarity residual, homography residual) / IOD."""
    t = len(kps)
    i, j = np.triu_indices(t, 1)
    a, b = kps[i].astype(np.float64), kps[j].astype(np.float64)
    iod = (inter_ocular(a) + inter_ocular(b)) / 2
    sim = similarity_residual(a, b) / iod
    hom = np.sqrt(((_project(homographies(a, b), a) - b) ** 2).sum(axis=2).mean(axis=1)) / iod
    return sim, hom


def looks_flat(kps: np.ndarray) -> bool:
    """True when the keypoints of these frames moved as one tilted plane (a photo, a screen).

    Pairs whose deformation a similarity explains (a visitor standing still, or walking
    straight in) say nothing; the verdict needs MIN_PAIRS tilted pairs that one homography fits.
    """
    if len(kps) < 2:
        return False
    sim, hom = plane_fit(np.asarray(kps))
    tilted = sim >= MIN_DEFORM
    if int(tilted.sum()) < MIN_PAIRS:
        return False
    return bool(np.median(hom[tilted]) <= PLANE_TOL)


MOTION_WINDOW = 5  # frames of one visitor the motion cue looks back over

# Why a frame was judged not live (Verdict.reason); "" when live.
TOO_CLOSE = "too_close"  # the frame holds too little context around the face: not judged
BY_MODEL = "model"  # the liveness model's probability is under the threshold
BY_MOTION = "motion"  # the visitor's keypoints moved as one tilted plane (sticky)
BY_STILLNESS = "still"  # the face has not moved at all for stillness.STILL_S: a picture
NOT_MOVED = "not_moved"  # live so far but not seen to move yet: neither live nor an attack
# edge/vision/cues.py: "frame" (a print's border, a screen's bezel), "surround" (a head alone)


@dataclass(frozen=True)
class Verdict:
    """One matching face judged: live or not, why not, and the model's probability."""

    live: bool
    reason: str = ""  # "" when live; TOO_CLOSE, BY_MODEL, BY_MOTION or a cue's name
    probability: float = 0.0


class LivenessJudge:
    """Per-frame verdict for a matching face: the model, the cues, and (model+motion) the plane
    veto.

    Keeps the keypoints of the last MOTION_WINDOW judged frames of the visitor at the gate; a
    gap longer than `gap_s` starts a new visitor. Once the track looked flat it stays an attack
    until the visitor leaves. The cues (edge/vision/cues.py) run only on frames the model
    judged live, so they cost nothing on attacks the model already refuses. A face that has
    not moved yet (edge/vision/stillness.py) is NOT_MOVED, neither live nor refused, until it
    moves or has been still for STILL_S (BY_STILLNESS).
    """

    def __init__(
        self,
        model: PadModel,
        mode: str,
        gap_s: float = 2.0,
        cues: bool = True,
        stillness: bool = True,
    ):
        if mode not in MODES or mode == "off":
            raise ValueError(f"liveness mode {mode!r} has no judge")
        self.model, self.mode, self.gap_s, self.cues = model, mode, gap_s, cues
        self.stillness = Stillness(gap_s) if stillness else None
        self._kps: list[np.ndarray] = []
        self._last_t: float | None = None
        self._flat = self._told_close = False

    @classmethod
    def from_config(cls, cfg: Config, models_dir: Path, gap_s: float = 2.0) -> LivenessJudge | None:
        """None when [liveness] mode is "off"; ModelError when the model is missing or corrupt."""
        lv = cfg.liveness
        if lv.mode == "off":
            return None
        spec = PadSpec.load(models_dir, lv.model, for_gate=True)
        if lv.threshold > 0:
            spec = PadSpec(**{**spec.__dict__, "threshold": lv.threshold})
        return cls(PadModel(spec, threads=1), lv.mode, gap_s, lv.cues, lv.stillness)

    def reset(self) -> None:
        """Forget the visitor: the next frame starts a new motion track."""
        self._kps, self._last_t, self._flat, self._told_close = [], None, False, False
        if self.stillness is not None:
            self.stillness.reset()

    def verdict(self, bgr: np.ndarray, box: np.ndarray, keypoints: np.ndarray, t: float) -> Verdict:
        """Live or not, and why not, for one matching face at frame time t (seconds)."""
        if self._last_t is None or t - self._last_t > self.gap_s:
            self._kps, self._flat, self._told_close = [], False, False
        self._last_t = t
        self._kps = [*self._kps[-(MOTION_WINDOW - 1) :], np.asarray(keypoints, np.float32)]
        # every frame of the face is seen, so that its first frames are there to compare with
        still = self.stillness.see(bgr, box, t) if self.stillness is not None else None
        if self.mode == "model+motion" and not self._flat and looks_flat(np.stack(self._kps)):
            self._flat = True
            log.info("liveness motion=flat frames=%d", len(self._kps))
        before = self.model.too_close
        p = self.model.live_probability(bgr, box)
        if self.model.too_close > before:
            if not self._told_close:
                self._told_close = True  # once per visitor: they may simply stand too near
                log.info("liveness unjudged reason=too_close (the face fills the frame)")
            return Verdict(False, BY_MOTION if self._flat else TOO_CLOSE, p)
        if self._flat:
            return Verdict(False, BY_MOTION, p)
        if not self.model.is_live(p):
            return Verdict(False, BY_MODEL, p)
        cue = veto(bgr, box) if self.cues else None
        if cue is not None:
            log.debug("liveness cue=%s", cue)
            return Verdict(False, cue, p)
        if still == STILL:
            log.debug("liveness cue=%s", BY_STILLNESS)
            return Verdict(False, BY_STILLNESS, p)
        if still == NOT_YET:
            return Verdict(False, NOT_MOVED, p)
        return Verdict(True, "", p)

    def judge(self, bgr: np.ndarray, box: np.ndarray, keypoints: np.ndarray, t: float) -> bool:
        """Live or not, for one matching face at frame time t (seconds)."""
        return self.verdict(bgr, box, keypoints, t).live
