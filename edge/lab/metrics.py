"""Verification metrics from labelled embeddings: pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairScores:
    """Genuine and impostor similarity scores of every pair in a labelled set."""

    genuine: np.ndarray
    impostor: np.ndarray


def pair_scores(embeddings: np.ndarray, labels: list[str]) -> PairScores:
    """Cosine similarity of every unordered pair, split into same-person and different-person."""
    e = np.asarray(embeddings, dtype=np.float32)
    sims = e @ e.T
    lab = np.asarray(labels)
    iu = np.triu_indices(len(lab), k=1)
    same = (lab[:, None] == lab[None, :])[iu]
    s = sims[iu]
    return PairScores(s[same].astype(np.float64), s[~same].astype(np.float64))


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability a genuine pair outscores an impostor pair (ties count half): Mann-Whitney U."""
    if len(genuine) == 0 or len(impostor) == 0:
        return float("nan")
    allv = np.concatenate([genuine, impostor])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_gen = ranks[: len(genuine)].sum()
    u = r_gen - len(genuine) * (len(genuine) + 1) / 2
    return float(u / (len(genuine) * len(impostor)))


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Smallest threshold whose false accept rate (score >= t) does not exceed `far`."""
    if len(impostor) == 0:
        return float("nan")
    imp = np.sort(impostor)[::-1]
    allowed = int(np.floor(far * len(imp)))  # how many impostors may score at or above t
    if allowed >= len(imp):
        return float(imp[-1])
    # strictly above the (allowed+1)-th highest impostor score
    return float(np.nextafter(imp[allowed], np.inf))


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(true accept rate, threshold) at the given false accept rate."""
    t = threshold_at_far(impostor, far)
    if len(genuine) == 0 or np.isnan(t):
        return float("nan"), t
    return float((genuine >= t).mean()), t


def gate_threshold(impostor_max: float) -> float:
    """The gate's default: just above every impostor pair seen, rounded up to 3 decimals.

    A visitor who is missed shows a ticket; a stranger let in cannot be undone.
    """
    return float(np.ceil((impostor_max + 1e-6) * 1000) / 1000)


def summarise(ps: PairScores) -> dict[str, float]:
    """AUC, TAR at fixed FARs and the strict gate threshold, from pair scores."""
    tar1, t1 = tar_at_far(ps.genuine, ps.impostor, 0.01)
    tar01, t01 = tar_at_far(ps.genuine, ps.impostor, 0.001)
    tar0, t0 = tar_at_far(ps.genuine, ps.impostor, 0.0)
    return {
        "genuine_pairs": int(len(ps.genuine)),
        "impostor_pairs": int(len(ps.impostor)),
        "auc": round(auc(ps.genuine, ps.impostor), 6),
        "tar_at_far_1pct": round(tar1, 4),
        "threshold_at_far_1pct": round(t1, 4),
        "tar_at_far_0_1pct": round(tar01, 4),
        "threshold_at_far_0_1pct": round(t01, 4),
        "tar_at_far_0": round(tar0, 4),
        "threshold_at_far_0": round(t0, 4),
        "genuine_min": round(float(ps.genuine.min()), 4) if len(ps.genuine) else None,
        "impostor_max": round(float(ps.impostor.max()), 4) if len(ps.impostor) else None,
    }
