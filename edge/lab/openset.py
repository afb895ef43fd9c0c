"""Open-set 1:N identification: the protocol, scores and rates. Pure functions, no I/O.

Protocol (kept exactly; results are compared across embedders with it): identities sorted by
name, images by file name; the gallery is the first K images of every identity with at least
K+1 images; mated probes are those identities' remaining images; non-mated probes are all
images of identities with exactly one image; identities with 2..K images are left out.

FPIR: share of non-mated probes (strangers) the rule admits as anyone. FNIR: share of mated
probes not admitted as their own identity (refused, or admitted as someone else).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.gallery.matcher import Matcher, top_two


@dataclass(frozen=True)
class OpenSetSplit:
    """Indices into the item list for each role, and the gallery's identities in order."""

    gallery: np.ndarray
    mated: np.ndarray
    nonmated: np.ndarray
    people: tuple[str, ...]


def split(labels: Sequence[str], k: int) -> OpenSetSplit:
    """Apply the protocol to labels given in (identity, file name) order."""
    if k < 1:
        raise ValueError("K (templates per person) must be at least 1")
    lab = np.asarray(labels, dtype=object)
    names, first, inverse, counts = np.unique(
        lab, return_index=True, return_inverse=True, return_counts=True
    )
    if len(lab) and (np.diff(inverse) < 0).any():
        raise ValueError("labels must be sorted by identity")
    pos = np.arange(len(lab)) - first[inverse]
    n = counts[inverse]
    enrolled = n >= k + 1
    return OpenSetSplit(
        gallery=np.flatnonzero(enrolled & (pos < k)),
        mated=np.flatnonzero(enrolled & (pos >= k)),
        nonmated=np.flatnonzero(n == 1),
        people=tuple(str(x) for x in names[counts >= k + 1]),
    )


@dataclass(frozen=True)
class Search:
    """Each probe's best person (index into `people`, -1 if none), its score and the runner-up's."""

    best: np.ndarray
    score: np.ndarray
    second: np.ndarray

    def take(self, mask: np.ndarray) -> Search:
        """The probes where `mask` is true, in order."""
        return Search(self.best[mask], self.score[mask], self.second[mask])


def search(matcher: Matcher, probes: np.ndarray) -> Search:
    """1:N scores of every probe against the matcher's gallery, vectorised."""
    if len(probes) == 0 or len(matcher.people) == 0:
        z = np.zeros(len(probes), dtype=np.float32)
        return Search(np.full(len(probes), -1), z - 1, z - 1)
    best, score, second = top_two(matcher.person_scores(probes))
    return Search(best, score, second)


def admitted(s: Search, threshold: float, margin: float) -> np.ndarray:
    """The matcher's decision rule, vectorised: at or above threshold and clearly ahead."""
    lead = np.where(s.second > -1, s.score - s.second, 1.0)
    return (s.best >= 0) & (s.score >= threshold) & (lead >= margin)


def rates(mated: Search, truth: np.ndarray, nonmated: Search, threshold: float, margin: float):
    """(FPIR, FNIR) of the rule; None where a set is empty."""
    fpir = float(admitted(nonmated, threshold, margin).mean()) if len(nonmated.best) else None
    ok = admitted(mated, threshold, margin) & (mated.best == truth)
    fnir = float(1.0 - ok.mean()) if len(mated.best) else None
    return fpir, fnir


def threshold_at_fpir(nonmated_scores: np.ndarray, target: float) -> float | None:
    """Smallest threshold admitting at most floor(target * n) strangers; None without strangers."""
    if len(nonmated_scores) == 0:
        return None
    s = np.sort(np.asarray(nonmated_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(target * len(s) + 1e-9))
    if allowed >= len(s):
        return float(s[-1])
    return float(np.nextafter(np.float32(s[allowed]), np.float32(np.inf)))


def rule_at_fpir(
    mated: Search, truth: np.ndarray, nonmated: Search, target: float, margin: float = 0.0
) -> dict:
    """Threshold meeting the FPIR target for a given margin, and the FNIR it costs."""
    lead = np.where(nonmated.second > -1, nonmated.score - nonmated.second, 1.0)
    # strangers refused by the margin alone never decide the threshold
    scores = np.where(lead >= margin, nonmated.score, -np.inf)
    t = threshold_at_fpir(scores, target)
    if t is None:
        return {"threshold": None, "margin": margin, "fpir": None, "fnir": None}
    fpir, fnir = rates(mated, truth, nonmated, t, margin)
    return {"threshold": t, "margin": margin, "fpir": fpir, "fnir": fnir}


def best_rule(
    mated: Search,
    truth: np.ndarray,
    nonmated: Search,
    target: float,
    margins: Sequence[float] = (0.0, 0.01, 0.02, 0.04),
) -> tuple[dict, list[dict]]:
    """The (threshold, margin) pair with the lowest FNIR at the FPIR target, and every candidate.

    Ties go to the smaller margin: a margin must lower FNIR to earn its place.
    """
    tried = [rule_at_fpir(mated, truth, nonmated, target, m) for m in sorted(margins)]
    usable = [r for r in tried if r["fnir"] is not None]
    if not usable:
        return tried[0], tried
    return min(usable, key=lambda r: (round(r["fnir"], 9), r["margin"])), tried


def enough_data(n_mated: int, n_nonmated: int, target: float) -> str | None:
    """Why a threshold for this FPIR target cannot be trusted from so few probes (None: enough)."""
    need_non = math.ceil(2 / target)  # at least two strangers must decide the threshold
    need_mated = 100
    if n_nonmated < need_non or n_mated < need_mated:
        return (
            f"{n_nonmated} non-mated and {n_mated} mated probes; a threshold at FPIR {target:g} "
            f"needs at least {need_non} non-mated probes (identities with one image) and "
            f"{need_mated} mated probes"
        )
    return None


def none_if_nan(x: float | None, digits: int = 4) -> float | None:
    """JSON has no NaN: undefined figures are null."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


@dataclass(frozen=True)
class Sized:
    """A gallery of a chosen number of people drawn from a protocol split."""

    gallery: np.ndarray
    mated: np.ndarray
    nonmated: np.ndarray
    people: int


def sized_galleries(
    labels: Sequence[str],
    sp: OpenSetSplit,
    size: int,
    draws: int,
    seed: int = 0,
    enroll_strangers: bool = False,
):
    """Galleries of `size` people drawn from a protocol split (0: the whole split).

    Smaller than the split: seeded random subsets of its people (their probes stay mated).
    Larger: every person of the split plus the identities the protocol leaves out (2..K
    images), each enrolled with its first image and no probes. Larger still, only with
    `enroll_strangers`: `draws` seeded random sets of one-image identities enrolled as well
    (never probed), the other one-image identities staying the strangers; at most half of them
    are enrolled. The gallery's `people` says how many it reached. Not for calibration: in LFW
    a few one-image identities are another one's photo or person under a different name, and
    enrolling one of a pair makes the other a "stranger" with a genuine match.
    """
    lab = np.asarray(labels, dtype=object)
    people = np.array(sp.people, dtype=object)
    rng = np.random.default_rng(seed)
    if size <= 0 or size == len(people):
        return [Sized(sp.gallery, sp.mated, sp.nonmated, len(people))]
    if size < len(people):
        out = []
        for _ in range(draws):
            keep = people[rng.choice(len(people), size, replace=False)]
            g = sp.gallery[np.isin(lab[sp.gallery], keep)]
            m = sp.mated[np.isin(lab[sp.mated], keep)]
            out.append(Sized(g, m, sp.nonmated, size))
        return out
    _, first, counts = np.unique(lab, return_index=True, return_counts=True)
    left_out = np.sort(first[counts >= 2])
    left_out = left_out[~np.isin(lab[left_out], people)][: size - len(people)]
    g = np.sort(np.concatenate([sp.gallery, left_out]))
    n = len(people) + len(left_out)
    extra = min(size - n, len(sp.nonmated) // 2) if enroll_strangers else 0
    if extra <= 0:
        return [Sized(g, sp.mated, sp.nonmated, n)]
    out = []
    for _ in range(draws):
        pick = np.sort(rng.choice(len(sp.nonmated), extra, replace=False))
        enrolled = sp.nonmated[pick]
        out.append(
            Sized(
                np.sort(np.concatenate([g, enrolled])),
                sp.mated,
                np.delete(sp.nonmated, pick),
                n + extra,
            )
        )
    return out


def name_key(name: str) -> frozenset[str]:
    """A name's parts, case and order ignored: "Choi_Sung-hong" and "Sung_Hong_Choi" are one key."""
    return frozenset(t for t in name.lower().replace("-", "_").split("_") if t)


def drop_aliases(labels: Sequence[str], gallery: np.ndarray, strangers: np.ndarray) -> np.ndarray:
    """Strangers filed under another spelling of an enrolled identity's name are not strangers.

    LFW files a few people under two names ("Sung_Hong_Choi" and "Choi_Sung-hong",
    "Mireya_Moscoso" and "Mireya_Elisa_Moscoso_Rodriguez"); counting them as strangers sets the
    threshold on the same person's photos. Same name parts in any order, or all parts (two or
    more) of one name within the other. Decided from names only, never from scores.
    """
    lab = np.asarray(labels, dtype=object)
    by_part: dict[str, list[frozenset[str]]] = {}
    for key in {name_key(x) for x in set(lab[gallery])}:
        for part in key:
            by_part.setdefault(part, []).append(key)

    def alias(name: str) -> bool:
        k = name_key(name)
        cands = {c for part in k for c in by_part.get(part, ())}
        return any(min(len(k), len(c)) >= 2 and (k <= c or c <= k) for c in cands)

    keep = np.array([not alias(x) for x in lab[strangers]], dtype=bool)
    return strangers[keep] if len(strangers) else strangers
