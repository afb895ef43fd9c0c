"""Nobody gets in under someone else's pass: same-person check, re-enrollment, pass renewal and
edits, validity bound to the sealed record, non-finite scores, validated thresholds, eval."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sqlite3

import numpy as np
import pytest

from edge import config as config_mod
from edge.errors import ConfigError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.matcher import LiveMatcher, Matcher, resolve_threshold
from edge.gallery.store import Gallery
from edge.gate.audit import AuditLog

from .gallery_helpers import CONSENT, cli, config, file_bytes, unit


def gallery_args(tmp_path) -> list[str]:
    return [
        "--config", str(config(tmp_path)), "--db", str(tmp_path / "g.db"),
        "--key-file", str(tmp_path / "k.key"),
    ]  # fmt: skip


def people_json(capsys, tmp_path) -> dict[str, dict]:
    rc, out, err = cli(capsys, "people", *gallery_args(tmp_path), "--json")
    assert rc == 0, err
    return {r["id"]: r for r in json.loads(out)}


# --- adding faces to a person --------------------------------------------------------------------


def test_enroll_person_id_refuses_someone_elses_face(tmp_path, capsys, fixtures, pipeline):
    faces = fixtures / "faces"
    g = gallery_args(tmp_path)
    assert cli(capsys, "keys", "init", "--key-file", str(tmp_path / "k.key"))[0] == 0
    consent = ["--consent-version", "v1"]
    rc, out, err = cli(
        capsys, "enroll", *g, "--name", "Barack Obama", *consent, "--min-templates", "1",
        str(faces / "obama" / "obama.jpg"),
    )  # fmt: skip
    assert rc == 0, err
    obama = out.split()[-1]
    # Kit Harington's photo offered as more faces of Obama: refused, nothing written
    rc, out, err = cli(
        capsys, "enroll", *g, "--person-id", obama, *consent,
        str(faces / "kit_harington" / "john1.jpeg"),
    )  # fmt: skip
    assert rc == 2
    assert f"does not match person {obama}" in err
    assert "--replace-templates" in err
    assert people_json(capsys, tmp_path)[obama]["template_count"] == 1
    # so another photo of Kit is not granted as Obama
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key")) as gal:
        t = gal.templates(pipeline.spec.name)
    from edge.vision.image import load_image

    kit = pipeline.embed_still(load_image(faces / "kit_harington" / "john2.jpeg")).embedding
    m = Matcher(t.matrix, t.person_ids, pipeline.spec.threshold, 0.04)
    assert m.match(kit).person_id is None
    # a second photo of Obama himself is added
    rc, out, err = cli(
        capsys, "enroll", *g, "--person-id", obama, *consent, str(faces / "obama" / "obama2.jpg")
    )
    assert rc == 0, err
    assert people_json(capsys, tmp_path)[obama]["template_count"] == 2


def test_replace_templates_reenrolls_with_consent_and_an_audit_record(
    tmp_path, capsys, fixtures, pipeline
):
    faces = fixtures / "faces"
    g = gallery_args(tmp_path)
    cli(capsys, "keys", "init", "--key-file", str(tmp_path / "k.key"))
    rc, out, _ = cli(
        capsys, "enroll", *g, "--name", "Obama", "--consent-version", "v1", "--min-templates", "1",
        str(faces / "obama" / "obama.jpg"),
    )  # fmt: skip
    pid = out.split()[-1]
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key")) as gal:
        (old,) = [r[0] for r in gal.conn.execute("SELECT embedding FROM templates")]
    rc, out, err = cli(
        capsys, "enroll", *g, "--person-id", pid, "--replace-templates", "--min-templates", "1",
        "--consent-version", "v2", str(faces / "obama" / "obama2.jpg"),
    )  # fmt: skip
    assert rc == 0, err
    assert "previous templates erased" in out
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key")) as gal:
        versions = [r[0] for r in gal.conn.execute("SELECT notice_version FROM consents")]
        assert sorted(versions) == ["v1", "v2"]  # consent recorded again
        assert gal.person(pid).template_count == 1
    assert old[12:40] not in file_bytes(tmp_path / "g.db")  # the replaced template is erased
    rec = AuditLog(tmp_path / "audit.db").records("enroll")[-1]
    assert rec.subject == pid
    assert rec.reason == "replace_templates"
    rc, _, err = cli(
        capsys, "enroll", *g, "--replace-templates", "--name", "X", "--consent-version", "v1",
        str(faces / "obama" / "obama.jpg"),
    )  # fmt: skip
    assert rc == 2
    assert "needs --person-id" in err


# --- pass renewal and edits -----------------------------------------------------------------------


@pytest.fixture
def one_person(tmp_path):
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        return g.add_person(
            "Ada Park", CONSENT, list(unit(np.random.default_rng(0), 1)), "m", "v",
            pass_ref="AP-1", valid_until=1_700_000_000,
        )  # fmt: skip


def test_enroll_person_id_with_pass_flags_is_refused_not_ignored(tmp_path, capsys, one_person):
    for flags in (["--valid-until", "2030-01-01"], ["--pass-id", "AP-2"], ["--name", "Other"]):
        rc, _, err = cli(
            capsys, "enroll", *gallery_args(tmp_path), "--person-id", one_person,
            "--consent-version", "v1", *flags, str(tmp_path / "photo.jpg"),
        )  # fmt: skip
        assert rc == 2, flags
        assert "edge-gate pass" in err, flags
    assert people_json(capsys, tmp_path)[one_person]["valid_until"].startswith("2023-11-14")
    rc, _, err = cli(
        capsys, "enroll", *gallery_args(tmp_path), "--person-id", "P-nobody",
        "--consent-version", "v1", str(tmp_path / "photo.jpg"),
    )  # fmt: skip
    assert rc == 2
    assert "no person P-nobody" in err  # not "already matches enrolled person"


def test_a_pass_enrolled_already_ended_is_said(tmp_path, capsys, fixtures):
    """`enroll --valid-until` a date already past (the year mistyped, most often): enrolled,
    and told that the gate refuses them by face, as `pass renew` tells it."""
    g = gallery_args(tmp_path)
    assert cli(capsys, "keys", "init", "--key-file", str(tmp_path / "k.key"))[0] == 0
    photo = sorted((fixtures / "faces" / "rose_leslie").iterdir())[0]
    for until, said in (("2099-05-01", False), ("2020-05-01", True)):
        rc, out, err = cli(
            capsys, "enroll", *g, "--name", f"Rose {until}", "--consent-version", "v1",
            "--min-templates", "1", "--force", "--valid-until", until, str(photo),
        )  # fmt: skip
        assert rc == 0, err
        pid = out.split()[-1]
        assert (f"already ended: the gate refuses {pid} by face" in err) is said, err
    hint = re.search(r"`edge-gate (pass renew [^`]*)`", err)  # this person, this run's gallery
    assert hint and f"pass renew {pid} --valid-until YYYY-MM-DD" in err, err
    rc, _, err = cli(capsys, *shlex.split(hint.group(1).replace("YYYY-MM-DD", "2099-05-01")))
    assert rc == 0 and "already ended" not in err, err


def test_photos_of_two_people_are_not_enrolled_as_one(tmp_path, capsys, fixtures):
    """Two people's photos given to one `enroll` made one person with both faces: either could
    then come in on the pass. Refused, nothing stored; one person's photos still enroll."""
    g = gallery_args(tmp_path)
    assert cli(capsys, "keys", "init", "--key-file", str(tmp_path / "k.key"))[0] == 0
    alex = sorted((fixtures / "faces" / "alex_lacamoire").iterdir())[:2]
    biden = sorted((fixtures / "faces" / "biden").iterdir())[:2]
    consent = ["--consent-version", "v1", "--min-templates", "1"]
    rc, out, err = cli(capsys, "enroll", *g, "--name", "Mix", *consent, *map(str, alex + biden))
    assert rc == 2 and "not all of one person" in err and "biden" in err, err
    assert people_json(capsys, tmp_path) == {}
    rc, out, err = cli(capsys, "enroll", *g, "--name", "Alex", *consent, *map(str, alex))
    assert rc == 0, err
    assert list(people_json(capsys, tmp_path).values())[0]["template_count"] == 2


def test_pass_renew_and_edit(tmp_path, capsys, one_person):
    g = gallery_args(tmp_path)
    rc, out, err = cli(capsys, "pass", "renew", one_person, *g, "--valid-until", "2031-05-01")
    assert rc == 0, err
    assert "already ended" not in err
    rc, out, err = cli(capsys, "pass", "renew", one_person, *g, "--valid-until", "2020-05-01")
    assert rc == 0  # ending a pass early is allowed, and said
    assert "already ended: the gate refuses" in err
    rc, out, err = cli(capsys, "pass", "renew", one_person, *g, "--valid-until", "2031-05-01")
    row = people_json(capsys, tmp_path)[one_person]
    assert row["valid_until"][:10] in ("2031-05-01", "2031-05-02")  # end of that local day
    rc, out, err = cli(
        capsys, "pass", "edit", one_person, *g, "--pass-id", "AP-9", "--name", "Ada P."
    )
    assert rc == 0, err
    row = people_json(capsys, tmp_path)[one_person]
    assert (row["pass"], row["name"], row["intact"]) == ("AP-9", "Ada P.", True)
    assert row["valid_until"][:4] == "2031"  # untouched by edit
    rc, _, _ = cli(capsys, "pass", "renew", one_person, *g, "--no-expiry")
    assert rc == 0
    assert people_json(capsys, tmp_path)[one_person]["valid_until"] is None
    with Gallery(tmp_path / "g.db", load_key(tmp_path / "k.key")) as gal:
        assert gal.person_valid_until() == {one_person: None}  # still bound to the sealed copy
    kinds = [(r.kind, r.reason) for r in AuditLog(tmp_path / "audit.db").records("pass")]
    assert kinds == [("pass", "renew")] * 3 + [("pass", "edit"), ("pass", "renew")]
    rc, _, err = cli(capsys, "pass", "renew", "P-nobody", *g, "--valid-until", "2031-01-01")
    assert rc == 2
    assert "no person P-nobody" in err
    rc, _, err = cli(capsys, "pass", "edit", one_person, *g)
    assert rc == 2
    assert "nothing to change" in err


# --- validity bound to the sealed record ----------------------------------------------------------


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE people SET valid_until = NULL",
        "UPDATE people SET valid_until = 4102444800",
        "UPDATE people SET minor = 1 - minor",
        "DELETE FROM person_keys",
    ],
)
def test_changed_validity_row_is_rejected_as_tampered(tmp_path, capsys, tamper):
    rng = np.random.default_rng(9)
    e = unit(rng, 1)
    with Gallery(tmp_path / "g.db", init_key(tmp_path / "k.key")) as g:
        pid = g.add_person("Expired Pat", CONSENT, list(e), "m", "v", valid_until=1_700_000_000)
        live = LiveMatcher(g, "m", 0.9, 0.0)
        assert live.match_many(e)[0].person_id == pid
        assert live.valid_until == {pid: 1_700_000_000}
        raw = sqlite3.connect(tmp_path / "g.db", isolation_level=None)  # no key needed
        raw.execute(tamper)
        raw.close()
        assert live.match_many(e)[0].person_id is None  # no match at all, not "valid forever"
        assert pid not in live.valid_until
        assert live.rejected == 1
    row = people_json(capsys, tmp_path)[pid]
    assert row["intact"] is False
    assert row["name"] == "<damaged>"
    rc, _, err = cli(
        capsys, "pass", "renew", pid, *gallery_args(tmp_path), "--valid-until", "2030-01-01"
    )
    assert rc == 2
    assert "failed authentication" in err  # a tampered person is not re-blessed


# --- non-finite scores ----------------------------------------------------------------------------


def test_non_finite_probe_or_template_never_matches():
    e = np.eye(4, dtype=np.float32)
    people = np.array(["A", "B"], dtype=object)
    m = Matcher(e[:2], people, threshold=0.5, min_margin=0.0)
    for bad in (np.nan, np.inf, -np.inf):
        probe = e[0].copy()
        probe[1] = bad
        r = m.match(probe)
        assert r.person_id is None, bad
        assert r.reason == "non_finite", bad
        assert np.isfinite(r.score)  # decisions and logs stay valid JSON
    nan_t = e[:2].copy()
    nan_t[0, 0] = np.nan
    single = Matcher(nan_t[:1], people[:1], threshold=0.5, min_margin=0.0)
    assert single.match(e[0]).person_id is None
    assert single.match(np.full(4, np.nan, np.float32)).person_id is None
    two = Matcher(nan_t, people, threshold=0.5, min_margin=0.0)
    assert two.match(e[0]).person_id is None  # A's only template is NaN
    assert two.match(e[1]).person_id == "B"  # the healthy person still matches
    with pytest.raises(ValueError):
        Matcher(e[:2], people, threshold=float("nan"), min_margin=0.0)


# --- thresholds validated at load, doctor shows what is used --------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("[gallery]\nmatch_threshold = 5.0\n", "gallery.match_threshold' = 5.0"),
        ("[gallery]\nmatch_threshold = -1.0\n", "gallery.match_threshold' = -1.0"),
        ("[gallery]\nmatch_threshold = 0.05\n", "gallery.match_threshold' = 0.05"),
        ("[gallery]\nmatch_threshold = nan\n", "gallery.match_threshold' = nan"),
        ("[gallery]\nmin_margin = 0.9\n", "gallery.min_margin' = 0.9"),
        ("[gallery]\nmin_margin = -0.1\n", "gallery.min_margin' = -0.1"),
        ("[policy]\ncooldown_s = 30.0\nanti_passback_s = 10.0\n", "policy.anti_passback_s' = 10.0"),
        ("[tickets]\nclock_skew_s = 86400.0\n", "tickets.clock_skew_s' = 86400.0"),
        ("[tickets]\nclock_skew_s = -5.0\n", "tickets.clock_skew_s' = -5.0"),
        ("[policy]\nwindow_s = inf\n", "policy.window_s' = inf"),
        ("[gallery]\naudit_retention_days = 90\n", "gallery.audit_retention_days' was removed"),
    ],
)
def test_unsafe_matching_values_refuse_to_load(tmp_path, text, key):
    p = tmp_path / "gate.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        config_mod.load(p)
    assert str(p) in str(e.value)
    assert key in str(e.value)


def test_sane_values_load_and_resolve():
    assert config_mod.load().gallery.match_threshold == 0.0  # the shipped file
    assert resolve_threshold(0.0, 0.936) == 0.936
    assert resolve_threshold(0.95, 0.936) == 0.95
    with pytest.raises(ConfigError):
        resolve_threshold(0.0, float("nan"))  # a broken models.json is not a threshold


def test_doctor_reports_the_threshold_in_use(tmp_path, capsys):
    cfg = config(tmp_path, "[gallery]\nmatch_threshold = 0.95\nmin_margin = 0.1\n")
    out = cli(capsys, "doctor", "--config", str(cfg))[1]
    line = next(x for x in out.splitlines() if "match threshold" in x)
    assert "gate and enrollment: cosine >= 0.95 (gallery.match_threshold)" in line
    assert "lead >= 0.1" in line
    cfg = config(tmp_path)
    out = cli(capsys, "doctor", "--config", str(cfg))[1]
    line = next(x for x in out.splitlines() if "match threshold" in x)
    # match_threshold = 0: the rule per gallery size measured for the default embedder
    assert (
        "gate: the threshold and lead per gallery size from models.json (mobilefacenet_float"
        in line
    )
    assert "enrollment's checks" in line  # the other threshold, labelled with where it applies


# --- eval: no threshold from thin data, valid JSON ------------------------------------------------


def test_eval_refuses_to_write_a_threshold_from_thin_data_and_prints_valid_json(
    tmp_path, capsys, fixtures
):
    models = tmp_path / "models"
    models.mkdir()
    for f in (config_mod.PROJECT_ROOT / "models").iterdir():  # models.json copied, models linked
        (models / f.name).symlink_to(f) if f.name != "models.json" else shutil.copy(f, models)
    before = (models / "models.json").read_bytes()
    cfg = config(tmp_path, f'[vision]\nmodels_dir = "{models}"\n')
    folder = tmp_path / "two"
    for person in ("obama", "biden"):  # one photo each: no genuine pair, one impostor pair
        img = sorted((fixtures / "faces" / person).iterdir())[0]
        (folder / person).mkdir(parents=True)
        (folder / person / img.name).symlink_to(img)
    rc, out, err = cli(capsys, "eval", str(folder), "--config", str(cfg), "--write-threshold")
    assert rc == 2
    assert "0 genuine and 1 impostor pairs" in err
    assert "need at least 50 genuine" in err
    assert (models / "models.json").read_bytes() == before
    rc, out, err = cli(capsys, "eval", str(folder), "--config", str(cfg), "--json")
    assert rc == 0, err

    def no_nan(token):
        raise AssertionError(f"invalid JSON constant {token}")

    result = json.loads(out, parse_constant=no_nan)
    assert result["genuine_pairs"] == 0
    assert result["tar_at_far_0"] is None


def test_eval_write_threshold_also_writes_the_same_person_floor(tmp_path, capsys, fixtures):
    """Enrollment holds a person's faces to the embedder's same-person floor; `eval
    --write-threshold` records it beside the threshold, from the same pairs."""
    models = tmp_path / "models"
    models.mkdir()
    for f in (config_mod.PROJECT_ROOT / "models").iterdir():  # models.json copied, models linked
        (models / f.name).symlink_to(f) if f.name != "models.json" else shutil.copy(f, models)
    cfg = config(tmp_path, f'[vision]\nmodels_dir = "{models}"\n')
    faces = str(fixtures / "faces")
    rc, out, err = cli(capsys, "eval", faces, "--config", str(cfg), "--write-threshold", "--json")
    assert rc == 0, err
    result = json.loads(out)
    entry = json.loads((models / "models.json").read_text())["embedders"][result["embedder"]]
    assert entry["same_person_floor"] == round(result["threshold_at_far_1pct"], 4)
    assert "threshold_at_far_1pct" in entry["same_person_floor_source"]
    assert entry["same_person_floor"] < entry["threshold"]
