"""Open-set protocol, 1:N rates and the size-calibrated decision rule, on generated embeddings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edge.gallery.matcher import Matcher
from edge.gallery.rules import Rule, expected_rates, rules_from_catalogue, threshold_for
from edge.lab import openset
from edge.lab.evaluation import Embedded, calibrate_sizes, evaluate_open_set, write_rules


def _labels(counts: dict[str, int]) -> list[str]:
    return [name for name in sorted(counts) for _ in range(counts[name])]


def test_split_follows_the_protocol():
    labels = _labels({"a": 1, "b": 2, "c": 3, "d": 4, "e": 1})
    sp = openset.split(labels, 2)
    # c (3 images) and d (4) have >= K+1: first two enrolled, the rest mated probes
    assert sp.people == ("c", "d")
    assert [labels[i] for i in sp.gallery] == ["c", "c", "d", "d"]
    assert list(sp.gallery) == [3, 4, 6, 7]
    assert list(sp.mated) == [5, 8, 9]
    # one-image identities are the strangers; b (2 images, 2..K) is left out
    assert [labels[i] for i in sp.nonmated] == ["a", "e"]
    sp1 = openset.split(labels, 1)
    assert sp1.people == ("b", "c", "d")
    assert list(sp1.gallery) == [1, 3, 6]


def test_split_refuses_unsorted_labels_and_bad_k():
    with pytest.raises(ValueError):
        openset.split(["b", "a", "b"], 1)
    with pytest.raises(ValueError):
        openset.split(["a", "a"], 0)


def _world(
    seed: int = 0, people: int = 60, strangers: int = 400, dim: int = 32, noise: float = 0.5
):
    """People with a few noisy images each, and strangers with one; unit vectors."""
    rng = np.random.default_rng(seed)
    names, embs = [], []
    for p in range(people):
        centre = rng.normal(size=dim)
        for _ in range(4):
            names.append(f"p{p:03d}")
            embs.append(centre + noise * rng.normal(size=dim))
    for s in range(strangers):
        names.append(f"s{s:04d}")
        embs.append(rng.normal(size=dim))
    embs = np.array(embs, dtype=np.float32)
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    order = np.argsort(names, kind="stable")
    return [names[i] for i in order], embs[order]


def test_vectorised_rule_agrees_with_the_matcher():
    labels, x = _world()
    sp = openset.split(labels, 2)
    lab = np.array(labels, dtype=object)
    m = Matcher(x[sp.gallery], lab[sp.gallery], threshold=0.5, min_margin=0.05)
    for idx in (sp.mated, sp.nonmated):
        s = openset.search(m, x[idx])
        fast = openset.admitted(s, 0.5, 0.05)
        slow = np.array([r.person_id is not None for r in m.match_many(x[idx])])
        assert (fast == slow).all()


def test_threshold_at_fpir_admits_no_more_strangers_than_allowed():
    scores = np.linspace(0.0, 1.0, 1000)
    t = openset.threshold_at_fpir(scores, 0.01)
    assert (scores >= t).sum() == 10
    assert openset.threshold_at_fpir(scores, 0.0) > scores.max()
    assert openset.threshold_at_fpir(np.array([]), 0.01) is None


def test_rates_and_margin_study():
    labels, x = _world(noise=0.9)
    sp = openset.split(labels, 1)
    lab = np.array(labels, dtype=object)
    m = Matcher(x[sp.gallery], lab[sp.gallery], 1.0, 0.0)
    mated, nonmated = openset.search(m, x[sp.mated]), openset.search(m, x[sp.nonmated])
    truth = np.searchsorted(np.asarray(m.people, dtype=object), lab[sp.mated])
    r = openset.rule_at_fpir(mated, truth, nonmated, 0.01)
    assert r["fpir"] <= 0.01
    looser = openset.rates(mated, truth, nonmated, r["threshold"] - 0.05, 0.0)
    assert looser[0] >= r["fpir"]
    assert looser[1] <= r["fnir"]
    best, tried = openset.best_rule(mated, truth, nonmated, 0.01)
    assert [t["margin"] for t in tried] == [0.0, 0.01, 0.02, 0.04]
    assert best["fnir"] == min(t["fnir"] for t in tried)
    assert all(t["fpir"] <= 0.01 for t in tried)


def test_enough_data_says_how_much_is_needed():
    assert openset.enough_data(500, 5000, 1e-3) is None
    msg = openset.enough_data(500, 300, 1e-3)
    assert "2000 non-mated" in msg


def test_sized_galleries_subsample_and_pad_with_left_out_identities():
    labels = _labels(
        {
            **{f"p{i:02d}": 4 for i in range(30)},
            **{f"q{i:02d}": 2 for i in range(20)},
            **{f"s{i:03d}": 1 for i in range(200)},
        }
    )
    sp = openset.split(labels, 3)
    lab = np.array(labels, dtype=object)
    small = openset.sized_galleries(labels, sp, 10, draws=3)
    assert len(small) == 3
    assert all(len(set(lab[g.gallery])) == 10 for g in small)
    assert all(set(lab[g.mated]) <= set(lab[g.gallery]) for g in small)
    (big,) = openset.sized_galleries(labels, sp, 40, draws=2)
    assert big.people == 40
    assert len(set(lab[big.gallery])) == 40
    assert len(big.gallery) == 30 * 3 + 10  # padding: one image of 10 left-out identities
    assert list(big.nonmated) == list(sp.nonmated)  # one-image identities stay strangers
    (most,) = openset.sized_galleries(labels, sp, 10_000, draws=1)
    assert most.people == 50  # as many as the folder has without enrolling strangers
    padded = openset.sized_galleries(labels, sp, 120, draws=3, enroll_strangers=True)
    assert len(padded) == 3
    for g in padded:
        assert g.people == 120
        assert len(set(lab[g.gallery])) == 120
        singles_in = set(lab[g.gallery]) & set(lab[sp.nonmated])
        assert len(singles_in) == 70  # 50 people + 70 one-image identities, enrolled not probed
        assert not singles_in & set(lab[g.nonmated])
        assert len(g.nonmated) == 200 - 70
    assert len({tuple(g.gallery) for g in padded}) == 3  # each draw enrolls other strangers
    (capped,) = openset.sized_galleries(labels, sp, 10_000, draws=1, enroll_strangers=True)
    assert capped.people == 150  # at most half of the one-image identities are enrolled
    assert len(capped.nonmated) == 100


def test_name_aliases_are_not_strangers():
    labels = [
        "Choi_Sung-hong",
        "Choi_Sung-hong",
        "Mireya_Moscoso",
        "Mireya_Moscoso",
        "Ann_Lee",
        "Mireya_Elisa_Moscoso_Rodriguez",
        "Sung_Hong_Choi",
        "Tom_Lee",
    ]
    gallery, strangers = np.array([0, 2]), np.array([4, 5, 6, 7])
    kept = openset.drop_aliases(labels, gallery, strangers)
    assert [labels[i] for i in kept] == ["Ann_Lee", "Tom_Lee"]


def test_evaluate_open_set_json_has_the_contract_keys_and_no_nan():
    labels, x = _world()
    e = Embedded(labels, [v for v in x], [5.0] * len(labels))
    e.embeddings[3] = None  # an image without a face: its probe can never be admitted
    res = evaluate_open_set(e, 3, x.shape[1], lambda n: (0.6, 0.0, "test"))
    for key in (
        "gallery_people",
        "gallery_templates",
        "mated_probes",
        "nonmated_probes",
        "rank1",
        "threshold",
        "fpir",
        "fnir",
        "fnir_at_fpir_0_01",
        "fnir_at_fpir_0_001",
        "median_ms_per_image",
    ):
        assert key in res
    assert res["gallery_people"] == 60
    assert res["gallery_templates"] == 180
    assert res["mated_probes"] == 60
    assert res["nonmated_probes"] == 400
    text = json.dumps(res)
    assert "NaN" not in text
    assert res["nonmated_name_aliases"] == 0  # generated names have no aliases
    assert res["fnir_at_fpir_0_001_without_aliases"] == res["fnir_at_fpir_0_001"]
    sizes = res["by_gallery_size"]  # 60 people; beyond: one-image identities enrolled too
    assert [r["gallery_people"] for r in sizes] == [100, 260, 60]
    assert [r["draws"] for r in sizes] == [5, 5, 1]
    assert [r["nonmated_probes"] for r in sizes] == [5 * 360, 5 * 200, 400]
    whole = sizes[2]
    assert (whole["fpir"], whole["fnir"]) == (res["fpir"], res["fnir"])
    assert all(0 <= r["fpir"] <= 1 and 0 <= r["fnir"] <= 1 for r in sizes)
    # no strangers at all: the FPIR-set figures are undefined, so null
    people_only = Embedded(labels[:240], list(x[:240]), [1.0] * 240)
    res2 = evaluate_open_set(people_only, 1, x.shape[1], lambda n: (0.6, 0.0, "test"))
    assert res2["fpir"] is None
    assert res2["fnir_at_fpir_0_01"] is None


def test_threshold_for_picks_the_nearest_size_at_or_above():
    table = (Rule(1000, 0.5, 0.0), Rule(100, 0.4, 0.02), Rule(2000, 0.55, 0.0))
    assert threshold_for(1, table).gallery_people == 100
    assert threshold_for(100, table).gallery_people == 100
    assert threshold_for(101, table).gallery_people == 1000
    assert threshold_for(5000, table).gallery_people == 2000  # beyond all: the largest
    assert threshold_for(10, ()) is None
    e = expected_rates(5000, (Rule(2000, 0.55, 0.0, 0.001, 0.1),))
    assert e["beyond_calibration"]
    assert e["fpir"] == 0.001
    assert e["fnir"] == 0.1


def test_calibrate_and_write_rules_round_trip(tmp_path):
    labels, x = _world(people=150, strangers=2100, dim=48, noise=0.7)
    e = Embedded(labels, list(x), [1.0] * len(labels))
    table = calibrate_sizes(e, 1, x.shape[1], draws=2)
    sizes = [t["gallery_people"] for t in table]
    assert sizes == [100, 150]  # 1000 people cannot be formed: the largest size is kept once
    for t in table:
        assert t["too_little_data"] is None
        assert t["fpir"] <= 1e-3
        assert math.isfinite(t["threshold"])
    (tmp_path / "models.json").write_text(json.dumps({"embedders": {"m": {"threshold": 0.9}}}))
    write_rules(tmp_path, "m", table, "test")
    cat = json.loads((tmp_path / "models.json").read_text())
    rules = rules_from_catalogue(cat["embedders"]["m"]["thresholds"])
    assert [r.gallery_people for r in rules] == [100, 150]
    assert cat["embedders"]["m"]["threshold"] == 0.9  # the 1:1 threshold is left alone


def test_shipped_rule_follows_the_gallery_size():
    from edge import config as config_mod
    from edge.gallery.rules import describe, expected_for

    cfg = config_mod.load(None)
    small, big = expected_for(cfg, 50), expected_for(cfg, 5000)
    assert small["calibrated_for_people"] == 100
    assert not small["beyond_calibration"]
    assert big["beyond_calibration"]
    assert big["threshold"] >= small["threshold"]
    assert small["fpir"] <= 1e-3
    assert big["fpir"] <= 1e-3
    assert 0 < big["fnir"] < 0.2
    assert "fewer than enrolled" in describe(big)
    # the rate is the calibration set's, which leaves out a stranger filed under another
    # spelling of an enrolled name (it read as if all strangers were counted)
    line = describe(small)
    assert "strangers let in 0.09%" in line and "100 people" in line, line
    assert "another spelling of an enrolled name not counted" in line, line
    fixed = config_mod.override(cfg, gallery={"match_threshold": 0.7})
    assert expected_for(fixed, 50)["fpir"] is None  # a hand-set threshold has no measured rates


class _FakeGallery:
    """Just enough of Gallery for LiveMatcher: templates that grow when `version` changes."""

    def __init__(self, rng):
        self.version, self.rng, self.n = 0, rng, 50

    def data_version(self):
        return self.version

    def templates(self, model_id):
        from types import SimpleNamespace

        x = self.rng.normal(size=(self.n, 8)).astype(np.float32)
        return SimpleNamespace(
            matrix=x, person_ids=np.array([f"P{i}" for i in range(self.n)]), rejected=0
        )

    def person_valid_until(self):
        return {}

    def pass_refs(self):
        return {}


def test_live_matcher_switches_rule_as_people_enroll():
    from edge.gallery.matcher import LiveMatcher

    g = _FakeGallery(np.random.default_rng(0))
    table = (Rule(100, 0.6, 0.0), Rule(1000, 0.7, 0.01))
    live = LiveMatcher(g, "m", 0.9, 0.04, table)
    assert (live.threshold, live.min_margin) == (0.6, 0.0)
    assert live.matcher.threshold == 0.6
    g.n, g.version = 500, 1
    live.refresh()
    assert (live.threshold, live.min_margin, live.matcher.min_margin) == (0.7, 0.01, 0.01)
    fixed = LiveMatcher(g, "m", 0.9, 0.04)  # no table: the configured rule at any size
    assert (fixed.threshold, fixed.min_margin) == (0.9, 0.04)


def test_eval_open_set_cli_on_real_faces_and_refusal_to_write(fixtures, tmp_path):
    import shutil
    import subprocess
    import sys

    from edge.config import PROJECT_ROOT

    models = tmp_path / "models"
    shutil.copytree(PROJECT_ROOT / "models", models)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[vision]\nmodels_dir = "{models}"\nthreads = 1\n')

    def run(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "eval",
                str(fixtures / "faces"),
                "--open-set",
                "--json",
                "--config",
                str(cfg),
                *extra,
            ],
            capture_output=True,
            text=True,
        )

    p = run("--templates", "2")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["gallery_people"] > 0
    assert res["gallery_templates"] == 2 * res["gallery_people"]
    assert res["mated_probes"] > 0
    assert 0 <= res["rank1"] <= 1
    ones = sum(
        1 for d in (fixtures / "faces").iterdir() if d.is_dir() and len(list(d.iterdir())) == 1
    )
    assert res["nonmated_probes"] == ones
    assert "NaN" not in p.stdout
    before = (models / "models.json").read_text()
    p = run("--write-threshold")
    assert p.returncode == 2
    assert "needs at least" in p.stderr
    assert "non-mated" in p.stderr
    assert (models / "models.json").read_text() == before  # nothing written from too little data
