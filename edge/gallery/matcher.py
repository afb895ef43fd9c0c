"""1:N matching, pure numpy: best person, score and margin to the second-best person.

A probe below the threshold, or too close to a second person, is no match: at a gate we would
rather miss a pass holder (who can show a ticket) than admit a stranger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    person_id: str | None  # None = no match
    score: float  # best person's similarity (cosine)
    margin: float  # best minus second-best person (1.0 when only one person is enrolled)
    candidate: str | None = (
        None  # best person even when refused; for logs and tests, never for grants
    )
    reason: str = ""  # "", "below_threshold", "ambiguous", "empty_gallery", "non_finite"


class Matcher:
    """Holds decrypted templates as one matrix; rows must be grouped by person."""

    def __init__(
        self, matrix: np.ndarray, person_ids: np.ndarray, threshold: float, min_margin: float
    ):
        self.threshold, self.min_margin = float(threshold), float(min_margin)
        if not (np.isfinite(self.threshold) and np.isfinite(self.min_margin)):
            raise ValueError("threshold and min_margin must be finite numbers")
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        bad = ~np.isfinite(self.matrix).all(axis=1) if self.matrix.size else np.zeros(0, bool)
        if bad.any():  # a NaN/inf template can never match: its scores become -inf below
            log.error("matcher templates rejected count=%d reason=non_finite", int(bad.sum()))
        pids = np.asarray(person_ids, dtype=object)
        if len(pids):
            change = np.ones(len(pids), dtype=bool)
            change[1:] = pids[1:] != pids[:-1]
            self.starts = np.flatnonzero(change)
            self.people = pids[self.starts]
            if len(set(self.people)) != len(self.people):
                raise ValueError("templates must be grouped by person")
        else:
            self.starts = np.zeros(0, dtype=np.intp)
            self.people = np.array([], dtype=object)

    def __len__(self) -> int:
        return len(self.matrix)

    def person_scores(self, probes: np.ndarray) -> np.ndarray:
        """(M, P): each probe's best similarity to each person."""
        with np.errstate(invalid="ignore", over="ignore"):
            sims = np.asarray(probes, dtype=np.float32) @ self.matrix.T
        sims[~np.isfinite(sims)] = -np.inf  # NaN compares False: never let it reach a threshold
        return np.maximum.reduceat(sims, self.starts, axis=1)

    def match_many(self, probes: np.ndarray) -> list[Match]:
        probes = np.atleast_2d(probes)
        finite = np.isfinite(probes).all(axis=1)
        if len(self.people) == 0:
            return [Match(None, 0.0, 0.0, reason="empty_gallery") for _ in probes]
        per = self.person_scores(probes)
        if per.shape[1] == 1:
            best_i = np.zeros(len(per), dtype=np.intp)
            best, second = per[:, 0], np.full(len(per), -1.0, dtype=np.float32)
        else:
            top2 = np.argpartition(-per, 1, axis=1)[:, :2]
            s2 = np.take_along_axis(per, top2, axis=1)
            order = np.argsort(-s2, axis=1)
            best_i = np.take_along_axis(top2, order[:, :1], axis=1)[:, 0]
            best, second = np.take_along_axis(s2, order, axis=1).T
        out = []
        for i in range(len(per)):  # over probes (faces in a frame), not gallery entries
            score = float(best[i])
            margin = float(score - second[i]) if second[i] > -1 else 1.0
            cand = str(self.people[best_i[i]])
            if not finite[i] or not np.isfinite(score):
                out.append(Match(None, 0.0, 0.0, None, "non_finite"))
            elif not score >= self.threshold:
                out.append(Match(None, score, margin, cand, "below_threshold"))
            elif not margin >= self.min_margin:
                out.append(Match(None, score, margin, cand, "ambiguous"))
            else:
                out.append(Match(cand, score, margin, cand))
        return out

    def match(self, probe: np.ndarray) -> Match:
        return self.match_many(probe[None])[0]


@dataclass(frozen=True)
class Identity:
    """What the gate needs about one face: who (None = nobody), how sure, and their pass."""

    person_id: str | None
    score: float
    valid_until: int | None = None
    pass_ref: str = ""


class LiveMatcher:
    """A Matcher that follows the database: enrollments and deletions show up without a restart."""

    def __init__(self, gallery, model_id: str, threshold: float, min_margin: float):
        self.gallery, self.model_id = gallery, model_id
        self.threshold, self.min_margin = threshold, min_margin
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
        self.matcher = Matcher(t.matrix, t.person_ids, self.threshold, self.min_margin)
        self.valid_until = self.gallery.person_valid_until()
        self.pass_refs = self.gallery.pass_refs()
        self.rejected = t.rejected
        self._version = v
        log.info(
            "gallery loaded templates=%d people=%d rejected=%d",
            len(self.matcher),
            len(self.matcher.people),
            t.rejected,
        )
        return True

    def match_many(self, probes: np.ndarray) -> list[Match]:
        self.refresh()
        return self.matcher.match_many(probes)

    def identify(self, probes: np.ndarray) -> list[Identity]:
        """One Identity per probe row, with the person's pass; a failed refresh keeps the last
        gallery (a writer mid-VACUUM or a locked file must not stop matching)."""
        try:
            self.refresh()
        except Exception as e:
            log.warning("gallery refresh_failed reason=%s", e)
        out = []
        for m in self.matcher.match_many(probes) if len(probes) else []:
            pid = m.person_id
            if pid is None:
                out.append(Identity(None, m.score))
            else:
                out.append(
                    Identity(pid, m.score, self.valid_until.get(pid), self.pass_refs.get(pid, ""))
                )
        return out


def resolve_threshold(configured: float, measured: float) -> float:
    """The configured threshold if set, else the embedder's measured one; never 0 (that admits anyone)."""
    from edge.errors import ConfigError

    t = configured if configured > 0 else measured
    if not (isinstance(t, (int, float)) and np.isfinite(t) and 0 < t < 1):
        raise ConfigError(
            f"no usable match threshold: gallery.match_threshold is {configured} and the"
            f" embedder's measured threshold is {measured}",
            "run `edge-gate eval DIR --write-threshold` or set gallery.match_threshold",
        )
    return float(t)
