import numpy as np
import pytest

from edge.lab.metrics import auc, pair_scores, tar_at_far, threshold_at_far


def test_auc_perfect_random_and_ties():
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    g, i = rng.normal(1, 1, 50), rng.normal(0, 1, 70)
    brute = ((g[:, None] > i[None, :]).sum() + 0.5 * (g[:, None] == i[None, :]).sum()) / (50 * 70)
    assert auc(g, i) == pytest.approx(brute)


def test_threshold_and_tar_at_far():
    imp = np.linspace(0, 1, 1000)  # 1000 impostor scores
    t = threshold_at_far(imp, 0.01)
    assert (imp >= t).mean() <= 0.01
    assert (
        imp >= np.nextafter(t, -np.inf) - 1e-3
    ).mean() > 0.01  # a lower threshold breaks the FAR
    tar, t2 = tar_at_far(np.array([0.995, 0.999, 0.5]), imp, 0.01)
    assert t2 == t
    assert tar == pytest.approx(2 / 3)


def test_pair_scores_split_by_label():
    e = np.eye(3, dtype=np.float32)
    ps = pair_scores(np.vstack([e[0], e[0], e[1]]), ["a", "a", "b"])
    assert ps.genuine.tolist() == [1.0]
    assert sorted(ps.impostor.tolist()) == [0.0, 0.0]
