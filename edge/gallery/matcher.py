"""1:N matching, pure numpy: best person, score and margin to the second-best person.

A probe below the threshold, or too close to a second person, is no match: at a gate we would
rather miss a pass holder (who can show a ticket) than admit a stranger.

Templates are held as 16-bit fixed point with a power-of-two scale per row (half the memory of
float32: 100,000 templates of 512 numbers take 98 MiB) and searched in two steps. The coarse
step reads only the high byte of every template with an int8 SIMD dot product; a proven error
bound per row then keeps every row that could belong to the best or the second-best person,
and those few rows are scored exactly in float32. Decisions are therefore the same as exact
float32 scoring of every template as held. `to_template_grid` rounds a template onto this grid
(each number moves less than 1/32512 of the row's largest one, ~4e-6 for a unit vector), and
enrollment stores templates on it, so the matcher holds them exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import simsimd

from edge.errors import ConfigError, GalleryError
from edge.gallery.rules import Rule, threshold_for

log = logging.getLogger(__name__)

GRID_MAX = 127 * 256  # |q| <= 32512 so that q = 256 * hi + lo with hi, lo both int8
_CHUNK = 8192  # rows converted at a time (bounds temporary memory at load and in person_scores)


@dataclass(frozen=True)
class Match:
    """The gallery's answer for one face, with the reason when nobody is granted."""

    person_id: str | None  # None = no match
    score: float  # best person's similarity (cosine)
    margin: float  # best minus second-best person (1.0 when only one person is enrolled)
    candidate: str | None = (
        None  # best person even when refused; for logs and tests, never for grants
    )
    reason: str = ""  # "", "below_threshold", "ambiguous", "empty_gallery", "non_finite"


def _row_exponents(rows: np.ndarray) -> np.ndarray:
    """Per row the largest e with max|x| * 2**e <= GRID_MAX (all-zero rows: 0)."""
    peak = np.abs(rows).max(axis=1).astype(np.float64) if rows.shape[1] else np.zeros(len(rows))
    e = np.zeros(len(rows), dtype=np.int32)
    nz = peak > 0
    e[nz] = np.floor(np.log2(GRID_MAX / peak[nz])).astype(np.int32)
    e[nz] -= np.ldexp(peak[nz], e[nz]) > GRID_MAX  # guard log2 rounding
    return np.clip(e, -100, 126)


def _quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hi, lo, e): rows ~= (256 * hi + lo) * 2**-e, hi and lo int8."""
    e = _row_exponents(rows)
    q = np.rint(np.ldexp(rows.astype(np.float64), e[:, None])).astype(np.int32)
    hi = (q + 128) >> 8  # floor: lo = q - 256 hi in [-128, 127], hi in [-127, 127]
    lo = q - 256 * hi
    return hi.astype(np.int8), lo.astype(np.int8), e


def _dequantize(hi: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Exact float32 rows (|256 hi + lo| < 2**24 and the scale is a power of two)."""
    q = hi.astype(np.int32) * 256 + lo
    return q.astype(np.float32) * scale[:, None]


def to_template_grid(vectors: np.ndarray) -> np.ndarray:
    """Round templates onto the matcher's grid, so that the matcher holds them exactly."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    hi, lo, e = _quantize(v)
    out = _dequantize(hi, lo, np.ldexp(np.float32(1), -e).astype(np.float32))
    return out.reshape(np.shape(vectors))


def top_two(per_person: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best person index, best score, second-best score; -1 when there is no second) per row
    of a (probes, people) score matrix: the evaluation's vectorised view of the decision."""
    per = np.asarray(per_person)
    if per.shape[1] == 1:
        return np.zeros(len(per), dtype=np.intp), per[:, 0], np.full(len(per), -1.0, np.float32)
    top2 = np.argpartition(-per, 1, axis=1)[:, :2]
    s2 = np.take_along_axis(per, top2, axis=1)
    order = np.argsort(-s2, axis=1)
    best_i = np.take_along_axis(top2, order[:, :1], axis=1)[:, 0]
    best, second = np.take_along_axis(s2, order, axis=1).T
    return best_i, best, second


def enrolled_matches(
    probes: np.ndarray,
    templates: np.ndarray,
    person_ids: Sequence[str] | np.ndarray,
    threshold: float,
    exclude: str | None = None,
) -> set[str]:
    """The enrolled people these faces already are: for each face its most similar person, when
    at or above the threshold (the Matcher's decision with no margin), other than `exclude`.

    The "already enrolled" check of `enroll` and `enroll --folder`, one dense product and no
    loop over templates. A damaged (non-finite) template or face never matches and never hides
    another person's match, as in the Matcher, which drops such rows.
    """
    probes = np.atleast_2d(np.asarray(probes, dtype=np.float32))
    if not len(person_ids) or not len(probes):
        return set()
    with np.errstate(invalid="ignore", over="ignore"):
        sims = probes @ np.asarray(templates, dtype=np.float32).T
    sims[~np.isfinite(sims)] = -np.inf  # a non-finite row or face gives a non-finite score
    top = sims.argmax(axis=1)
    hit = sims[np.arange(len(probes)), top] >= threshold
    return {str(person_ids[i]) for i in top[hit]} - {exclude}


class Matcher:
    """Holds decrypted templates as 16-bit fixed point; rows must be grouped by person."""

    def __init__(
        self, matrix: np.ndarray, person_ids: np.ndarray, threshold: float, min_margin: float
    ):
        self.threshold, self.min_margin = float(threshold), float(min_margin)
        if not (np.isfinite(self.threshold) and np.isfinite(self.min_margin)):
            raise ValueError("threshold and min_margin must be finite numbers")
        matrix = np.asarray(matrix, dtype=np.float32)
        pids = np.asarray(person_ids, dtype=object)
        finite = np.isfinite(matrix).all(axis=1) if matrix.size else np.ones(len(pids), bool)
        if not finite.all():  # a damaged row can never match anyone
            log.error("gallery rows skipped reason=non_finite count=%d", int((~finite).sum()))
            matrix, pids = matrix[finite], pids[finite]
        self.dim = matrix.shape[1] if matrix.ndim == 2 else 0
        n = len(pids)
        self.hi = np.empty((n, self.dim), np.int8)
        self.lo = np.empty((n, self.dim), np.int8)
        exps = np.empty(n, np.int32)
        for s in range(0, n, _CHUNK):
            self.hi[s : s + _CHUNK], self.lo[s : s + _CHUNK], exps[s : s + _CHUNK] = _quantize(
                matrix[s : s + _CHUNK]
            )
        self.scale = np.ldexp(np.float32(1), -exps).astype(np.float32)
        hi_norm = np.sqrt(np.einsum("ij,ij->i", self.hi, self.hi, dtype=np.float64))
        lo_norm = np.sqrt(np.einsum("ij,ij->i", self.lo, self.lo, dtype=np.float64))
        # Error bound coefficients of the coarse step (see coarse): probe quantisation error
        # times the coarse row's norm, plus the dropped low byte's norm times the probe's norm
        # (plus a slack for float32 rounding in the exact scores), rounded up to float32.
        c_hi = 256.0 * self.scale * hi_norm
        c_lo = self.scale * lo_norm + (c_hi + self.scale * lo_norm) * self.dim * 2.0**-22
        self._c_hi = np.nextafter(c_hi.astype(np.float32), np.float32(np.inf))
        self._c_lo = np.nextafter(c_lo.astype(np.float32), np.float32(np.inf))
        self._scale256 = (256.0 * self.scale).astype(np.float32)
        if n:
            change = np.ones(n, dtype=bool)
            change[1:] = pids[1:] != pids[:-1]
            self.starts = np.flatnonzero(change)
            self.people = pids[self.starts]
            if len(set(self.people)) != len(self.people):
                raise ValueError("templates must be grouped by person")
        else:
            self.starts = np.zeros(0, dtype=np.intp)
            self.people = np.array([], dtype=object)
        self.ends = np.append(self.starts[1:], n).astype(np.intp)
        self.row_person = np.repeat(np.arange(len(self.people)), self.ends - self.starts)
        # int8 dot products are exact in float32 up to 1024 numbers (127 * 127 * 1024 < 2**24)
        self._coarse = np.empty((1, n), np.float32 if self.dim <= 1024 else np.float64)
        self._eps = np.empty(n, np.float32)
        self._bound = np.empty(n, np.float32)

    def __len__(self) -> int:
        return len(self.hi)

    @property
    def nbytes(self) -> int:
        """Memory held for the templates (both bytes, scale and bound coefficients)."""
        extra = (self.scale, self._scale256, self._c_hi, self._c_lo, self.row_person)
        extra += (self._coarse, self._eps, self._bound)
        return self.hi.nbytes + self.lo.nbytes + sum(a.nbytes for a in extra)

    def dense(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Templates as exact float32 rows (the values every score is computed from)."""
        return _dequantize(self.hi[rows], self.lo[rows], self.scale[rows])

    def person_scores(self, probes: np.ndarray) -> np.ndarray:
        """(M, P): each probe's best exact similarity to each person (evaluation; full scan)."""
        probes = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        sims = np.empty((len(probes), len(self)), np.float32)
        for s in range(0, len(self), _CHUNK):
            sims[:, s : s + _CHUNK] = probes @ self.dense(slice(s, s + _CHUNK)).T
        if not len(self):
            return sims
        return np.maximum.reduceat(sims, self.starts, axis=1)

    def top2(self, probe: np.ndarray) -> tuple[int, float, int, float]:
        """(best person, exact score, second person or -1, its exact score or -inf).

        The coarse score a of a row differs from its exact score by at most eps (proof in
        coarse); L, the second-highest per-person lower bound, is at most the true second-best
        person's score, so every row with a + eps >= L is rescored exactly and the top two
        people among them are the exact top two.
        """
        idx, _ = self.candidates(probe)
        exact = self.dense(idx) @ probe
        persons = self.row_person[idx]
        seg = np.flatnonzero(np.r_[True, persons[1:] != persons[:-1]])
        best = np.maximum.reduceat(exact, seg)
        who = persons[seg]
        i1 = int(np.argmax(best))
        if len(best) == 1:
            return int(who[i1]), float(best[i1]), -1, float("-inf")
        rest = best.copy()
        rest[i1] = -np.inf
        i2 = int(np.argmax(rest))
        return int(who[i1]), float(best[i1]), int(who[i2]), float(best[i2])

    def coarse(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, eps): every row's coarse score and a proven bound on |exact score - a|.

        With x = 2**-e (256 hi + lo) and the probe p = s qp + f (qp int8): x.p - a =
        2**-e 256 hi.f + 2**-e lo.p, a = 2**-e 256 s (hi.qp); Cauchy-Schwarz bounds both
        terms. The coarse dot products are exact integers (|hi.qp| < 2**24 for dim <= 1024);
        float32 rounding here and in the exact scores stays within the slack in _c_lo.
        The arrays are reused by the next call.
        """
        peak = float(np.abs(probe).max())
        s = peak / 127 if peak > 0 else 1.0
        qp = np.rint(probe / s).astype(np.int8)
        f = float(np.linalg.norm(probe.astype(np.float64) - s * qp))
        pn = float(np.linalg.norm(probe.astype(np.float64)))
        a, eps = self._coarse[0], self._eps
        simsimd.cdist(qp[None], self.hi, metric="dot", threads=1, out=self._coarse)
        np.multiply(a, self._scale256, out=a)
        a *= np.float32(s)
        np.multiply(self._c_hi, np.float32(f * (1 + 2**-20)), out=eps)
        eps += self._c_lo * np.float32(pn * (1 + 2**-20))
        return a, eps

    def candidates(self, probe: np.ndarray) -> tuple[np.ndarray, float]:
        """Rows that can hold the best or second-best person's best template; and the bound L."""
        a, eps = self.coarse(probe)
        lower = np.subtract(a, eps, out=self._bound)
        i1 = int(np.argmax(lower))
        p1 = self.row_person[i1]
        b0, b1 = self.starts[p1], self.ends[p1]
        others = [lower[:b0].max()] if b0 else []
        others += [lower[b1:].max()] if b1 < len(lower) else []
        bound = float(max(others)) if others else float(lower[i1])
        a += eps
        return np.flatnonzero(a >= bound), bound

    def match_many(self, probes: np.ndarray) -> list[Match]:
        """The decision for each probe (faces in one frame): person, score, margin, reason."""
        probes = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        if len(self.people) == 0:
            return [Match(None, 0.0, 0.0, reason="empty_gallery") for _ in probes]
        return [self._decide(p) for p in probes]  # over probes, not gallery entries

    def _decide(self, probe: np.ndarray) -> Match:
        if not np.isfinite(probe).all():
            return Match(None, 0.0, 0.0, reason="non_finite")
        b, score, _, second = self.top2(probe)
        if not np.isfinite(score):
            return Match(None, 0.0, 0.0, reason="non_finite")
        margin = float(score - second) if np.isfinite(second) else 1.0
        cand = str(self.people[b])
        if score < self.threshold:
            return Match(None, score, margin, cand, "below_threshold")
        if margin < self.min_margin:
            return Match(None, score, margin, cand, "ambiguous")
        return Match(cand, score, margin, cand)

    def match(self, probe: np.ndarray) -> Match:
        """The decision for one probe."""
        return self.match_many(probe[None])[0]

    def match_fused(self, probes: np.ndarray) -> Match:
        """One decision for several frames of one visitor: their mean direction, matched once."""
        p = np.atleast_2d(np.asarray(probes, dtype=np.float64))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = (p / np.linalg.norm(p, axis=1, keepdims=True)).mean(axis=0)
            mean /= np.linalg.norm(mean)
        return self.match(mean.astype(np.float32))


@dataclass(frozen=True)
class Identity:
    """What the gate needs about one face: who (None = nobody), how sure, and their pass."""

    person_id: str | None
    score: float
    valid_until: int | None = None  # of the candidate: checked only when they are confirmed
    pass_ref: str = ""
    candidate: str | None = None  # the best person even when refused (policy.fuse_frames)


class LiveMatcher:
    """A Matcher that follows the database: enrollments and deletions show up without a restart.

    With a calibration table, the threshold and margin follow the number of enrolled people
    (`threshold_for`); without one, the given threshold and margin hold whatever the size.
    """

    def __init__(
        self,
        gallery,
        model_id: str,
        threshold: float,
        min_margin: float,
        table: Sequence[Rule] = (),
    ):
        self.gallery, self.model_id = gallery, model_id
        self.threshold, self.min_margin = threshold, min_margin
        self.table = tuple(table)
        self.rule: Rule | None = None
        self._version = None
        self.matcher: Matcher | None = None
        self.valid_until: dict[str, int | None] = {}
        self.pass_refs: dict[str, str] = {}
        self.rejected = 0
        self.refresh()

    def refresh(self) -> bool:
        """Reload when another connection has committed; cheap to call every frame."""
        v = self.gallery.data_version()
        if v == self._version and self.matcher is not None:
            return False
        t = self.gallery.templates(self.model_id)
        n_people = len(set(t.person_ids)) if len(t.person_ids) else 0
        self.rule = threshold_for(n_people, self.table)
        if self.rule is not None:
            self.threshold, self.min_margin = self.rule.threshold, self.rule.min_margin
        self.matcher = Matcher(t.matrix, t.person_ids, self.threshold, self.min_margin)
        self.valid_until = self.gallery.person_valid_until()
        self.pass_refs = self.gallery.pass_refs()
        self.rejected = t.rejected
        self._version = v
        log.info(
            "gallery loaded templates=%d people=%d rejected=%d threshold=%.4f margin=%.3f",
            len(self.matcher),
            len(self.matcher.people),
            t.rejected,
            self.threshold,
            self.min_margin,
        )
        return True

    def match_many(self, probes: np.ndarray) -> list[Match]:
        """Match a batch against the current gallery, picking up any enrolment first."""
        self.refresh()
        return self.matcher.match_many(probes)

    def identify(self, probes: np.ndarray) -> list[Identity]:
        """One Identity per probe row, with the person's pass. A gallery that changed but cannot
        be read again is a GalleryError, never a match from the templates held: they may hold
        someone forgotten since (the gate counts such frames and goes ticket-only)."""
        try:
            self.refresh()
        except Exception as e:
            raise GalleryError(
                f"gallery {self.gallery.path} changed and cannot be read again: {e}",
                "systemctl reload edge-gate (after `keys rotate` the gate needs the new key); "
                "if that fails, `edge-gate doctor --config C`",
            ) from None
        out = []
        for m in self.matcher.match_many(probes) if len(probes) else []:
            who = m.candidate
            vu, ref = (
                (self.valid_until.get(who), self.pass_refs.get(who, "")) if who else (None, "")
            )
            out.append(Identity(m.person_id, m.score, vu, ref, who))
        return out

    def match_fused(self, probes: np.ndarray) -> Match:
        """Matcher.match_fused on the gallery as loaded (this frame's identify refreshed it)."""
        return self.matcher.match_fused(probes)


def resolve_threshold(configured: float, measured: float) -> float:
    """The configured threshold if set, else the embedder's measured one; never 0 (admits all)."""
    t = configured if configured > 0 else measured
    if not (isinstance(t, (int, float)) and np.isfinite(t) and 0 < t < 1):
        raise ConfigError(
            f"no usable match threshold: gallery.match_threshold is {configured} and the"
            f" embedder's measured threshold is {measured}",
            "run `edge-gate eval DIR --write-threshold` or set gallery.match_threshold",
        )
    return float(t)
