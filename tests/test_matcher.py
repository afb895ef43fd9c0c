"""The two-step 1:N search decides exactly as float32 scoring of every template would."""

from __future__ import annotations

import numpy as np
import pytest

from edge.gallery.matcher import Matcher, to_template_grid


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def gallery(rng, people: int, dim: int, spread: float, common: float = 0.0):
    """People with 1..5 templates around their own centre; `common` pulls everyone together
    (compressed scores, as with the dlib descriptor). Returns grid templates, ids, centres."""
    mean = unit(rng.standard_normal(dim))
    centres = unit(common * mean + rng.standard_normal((people, dim)).astype(np.float32))
    counts = rng.integers(1, 6, people)
    rows = np.repeat(centres, counts, axis=0)
    rows = unit(rows + spread * rng.standard_normal(rows.shape).astype(np.float32))
    pids = np.repeat(np.array([f"P{i:05d}" for i in range(people)], dtype=object), counts)
    return to_template_grid(rows), pids, centres


def probes_for(rng, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    """Mated probes, strangers, and probes half-way between two people (near-ties)."""
    k = n // 3
    pick = rng.integers(0, len(centres), (3, k))
    mated = centres[pick[0]] + spread * rng.standard_normal((k, centres.shape[1]))
    strangers = rng.standard_normal((k, centres.shape[1]))
    between = (
        centres[pick[1]] + centres[pick[2]] + 0.01 * rng.standard_normal((k, centres.shape[1]))
    )
    return unit(np.concatenate([mated, strangers, between]).astype(np.float32))


def exact_top2(mat: np.ndarray, pids: np.ndarray, probe: np.ndarray):
    """Reference: float32 scores of every template, best per person by masks."""
    sims = mat @ probe
    per = {p: float(sims[pids == p].max()) for p in dict.fromkeys(pids)}
    ranked = sorted(per.items(), key=lambda kv: -kv[1])
    return ranked[0], (ranked[1] if len(ranked) > 1 else (None, float("-inf")))


@pytest.mark.parametrize(
    ("dim", "spread", "common"), [(512, 0.05, 0.0), (192, 0.04, 0.5), (128, 0.03, 3.0)]
)
def test_two_step_search_equals_exact_float32_scoring(dim, spread, common):
    rng = np.random.default_rng(dim)
    mat, pids, centres = gallery(rng, 600, dim, spread, common)
    m = Matcher(mat, pids, threshold=0.5, min_margin=0.04)
    assert np.array_equal(m.dense(), mat)  # grid templates are held exactly
    probes = probes_for(rng, centres, 90, spread)
    decided = {"match": 0, "below_threshold": 0, "ambiguous": 0}
    for probe, got in zip(probes, m.match_many(probes), strict=True):
        (p1, s1), (_, s2) = exact_top2(mat, pids, probe)
        assert got.candidate == p1
        assert abs(got.score - s1) <= 1e-6
        assert abs(got.margin - (s1 - s2)) <= 2e-6
        reason = "below_threshold" if s1 < 0.5 else "ambiguous" if s1 - s2 < 0.04 else ""
        assert got.reason == reason
        assert got.person_id == (p1 if not reason else None)
        decided[reason or "match"] += 1
        assert len(m.candidates(probe)[0]) < len(mat)  # the coarse step did prune
    assert decided["match"]
    assert decided["below_threshold"]  # both sides of the rule exercised


def test_coarse_bound_holds_for_every_row():
    rng = np.random.default_rng(7)
    mat, pids, centres = gallery(rng, 300, 256, 0.05)
    m = Matcher(mat, pids, 0.5, 0.04)
    for probe in probes_for(rng, centres, 30, 0.05):
        a, eps = (x.copy() for x in m.coarse(probe))
        exact = mat.astype(np.float64) @ probe.astype(np.float64)
        assert np.all(np.abs(exact - a) <= eps)
        assert float(np.median(eps)) < 0.05  # tight enough to prune


def test_person_scores_and_the_second_person_with_one_template():
    rng = np.random.default_rng(3)
    mat, pids, centres = gallery(rng, 50, 64, 0.05)
    m = Matcher(mat, pids, 0.0, 0.0)
    probes = probes_for(rng, centres, 12, 0.05)
    per = m.person_scores(probes)
    people = list(dict.fromkeys(pids))
    ref = np.array([[float((mat[pids == p] @ q).max()) for p in people] for q in probes])
    assert np.allclose(per, ref, atol=1e-6)


def test_grid_is_idempotent_and_close():
    rng = np.random.default_rng(1)
    v = unit(rng.standard_normal((200, 512)).astype(np.float32))
    g = to_template_grid(v)
    assert np.array_equal(to_template_grid(g), g)
    peak = np.abs(v).max(axis=1, keepdims=True)
    assert np.all(np.abs(g - v) <= peak / 32512)
    assert to_template_grid(v[0]).shape == (512,)
    assert np.array_equal(to_template_grid(np.zeros((2, 8), np.float32)), np.zeros((2, 8)))


def test_non_finite_never_matches():
    e = np.eye(8, dtype=np.float32)
    bad = e[:3].copy()
    bad[1, 2] = np.nan
    m = Matcher(bad, np.array(["A", "B", "C"], dtype=object), 0.5, 0.0)
    assert len(m) == 2
    assert list(m.people) == ["A", "C"]  # the damaged row is never scored
    assert m.match(e[0]).person_id == "A"
    for probe in (np.full(8, np.nan), np.where(e[0] > 0, np.inf, 0), np.zeros(8)):
        assert m.match(probe.astype(np.float32)).person_id is None
    nan_probe = e[0].copy()
    nan_probe[5] = np.nan
    assert m.match(nan_probe).reason == "non_finite"


def test_single_person_and_memory():
    rng = np.random.default_rng(2)
    mat = to_template_grid(unit(rng.standard_normal((4, 512)).astype(np.float32)))
    m = Matcher(mat, np.array(["A"] * 4, dtype=object), 0.5, 0.04)
    r = m.match(mat[2])
    assert r.person_id == "A"
    assert r.margin == 1.0
    assert abs(r.score - float(mat[2] @ mat[2])) < 1e-6
    assert m.nbytes <= len(mat) * 512 * 2 + len(mat) * 48  # two bytes a number, plus per-row


def test_wide_templates_keep_exact_coarse_sums():
    rng = np.random.default_rng(5)
    mat = to_template_grid(unit(rng.standard_normal((40, 1100)).astype(np.float32)))
    pids = np.array([f"P{i // 2}" for i in range(40)], dtype=object)
    m = Matcher(mat, pids, 0.5, 0.04)
    probe = unit(mat[7] + 0.01 * rng.standard_normal(1100).astype(np.float32))
    a, eps = (x.copy() for x in m.coarse(probe))
    assert np.all(np.abs(mat.astype(np.float64) @ probe - a) <= eps)
    assert m.match(probe).person_id == "P3"


def test_threshold_and_margin_must_be_finite():
    e = np.eye(4, dtype=np.float32)
    for t, mm in ((np.nan, 0.0), (0.5, np.nan), (np.inf, 0.0)):
        with pytest.raises(ValueError, match="finite"):
            Matcher(e, np.array(list("ABCD"), dtype=object), t, mm)
