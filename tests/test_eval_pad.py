"""`edge-gate eval-pad DIR --json`: the ISO/IEC 30107-3 report contract, on real fixture images."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from edge import config as config_mod
from edge.cli import main
from edge.errors import ImageError
from edge.lab.pad_eval import threshold_for
from edge.lab.padsynth import write_attack_clip

from .helpers import MODELS


@pytest.fixture(scope="module")
def pad_dir(tmp_path_factory, fixtures):
    d = tmp_path_factory.mktemp("pad")
    live, prints, screens = d / "live", d / "attack" / "print", d / "attack" / "screen"
    for p in (live, prints, screens):
        p.mkdir(parents=True)
    nuaa_live = sorted((fixtures / "pad" / "live").glob("nuaa_*"))[:3]
    nuaa_print = sorted((fixtures / "pad" / "attack" / "print").glob("nuaa_*"))[:3]
    for src in nuaa_live:
        shutil.copy(src, live)
    for src in nuaa_print:
        shutil.copy(src, prints)
    shutil.copy(fixtures / "spoof" / "image_F2.jpg", screens)
    photo = cv2.imread(str(fixtures / "faces" / "obama" / "obama2.jpg"))
    write_attack_clip(screens / "obama2.mp4", photo, "screen", seconds=1.5, seed=3)
    (d / "live" / "notes.txt").write_text("ignored")
    return d


def run_json(capsys, *argv) -> dict:
    assert main(["eval-pad", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_report_keys_and_counts(pad_dir, capsys):
    r = run_json(capsys, pad_dir, "--per-file")
    assert {
        "live",
        "attacks",
        "apcer",
        "apcer_by_type",
        "bpcer",
        "threshold",
        "median_ms_per_face",
    } <= set(r)
    assert r["live"] == 3
    assert r["attacks"] == {"print": 3, "screen": 2}
    per = r["results"]
    for kind, rate in r["apcer_by_type"].items():  # APCER: the share of that type accepted
        mine = [x for x in per if x["kind"] == kind]
        assert rate == round(sum(x["accepted"] for x in mine) / len(mine), 4)
    assert r["apcer"] == max(r["apcer_by_type"].values())
    live = [x for x in per if x["kind"] == "live"]
    assert r["bpcer"] == round(sum(not x["accepted"] for x in live) / len(live), 4)
    assert r["apcer_by_type"]["print"] == 0.0
    assert r["bpcer"] == 0.0  # NUAA: the clear case
    clip = next(x for x in per if x["file"].endswith(".mp4"))  # a video is one presentation
    assert clip["kind"] == "screen"
    assert clip["accepted"] is False
    assert r["median_ms_per_face"] > 0


def test_fusion_is_a_measurement_never_written(pad_dir, tmp_path, capsys):
    """--fusion judges with another rule; writing the threshold it found would give the gate
    (which fuses by the entry's rule) a threshold measured with a different score."""
    mean = run_json(capsys, pad_dir, "--per-file")
    high = run_json(capsys, pad_dir, "--per-file", "--fusion", "max")
    scores = lambda r: {x["file"]: x["score"] for x in r["results"] if x["score"]}  # noqa: E731
    assert scores(high).keys() == scores(mean).keys()
    assert all(scores(high)[f] >= scores(mean)[f] - 1e-6 for f in scores(mean))
    assert any(scores(high)[f] > scores(mean)[f] + 1e-4 for f in scores(mean))
    assert main(["eval-pad", str(pad_dir), "--fusion", "max", "--write-threshold"]) == 2
    assert "--fusion is a measurement" in capsys.readouterr().err


def test_write_threshold_goes_to_models_json(pad_dir, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[vision]\nmodels_dir = "{models}"\n')
    r = run_json(capsys, pad_dir, "--config", cfg, "--write-threshold")
    name = config_mod.load(None).liveness.model
    entry = json.loads((models / "models.json").read_text())["liveness"][name]
    assert entry["threshold"] == r["written_threshold"] == r["threshold"]
    assert "eval-pad" in entry["threshold_source"]
    assert r["bpcer"] <= 0.05


def test_threshold_rule():
    """Halfway between the attacks and the live budget; the budget binds when they cross."""
    live = [
        {"file": f"l{i}.jpg", "kind": "live", "score": s} for i, s in enumerate([0.99, 1.0, 0.97])
    ]
    att = [
        {"file": "a.jpg", "kind": "print", "score": 0.4},
        {"file": "v.mp4", "kind": "print", "score": 0.999},
    ]
    t, why = threshold_for(live + att)  # the video's score is a share of frames, not a probability
    assert t == round((0.4001 + 0.97) / 2, 4)  # no live refused: 10% of 3 is less than one
    assert "halfway" in why and "APCER 0.000 on 1 attack" in why
    strong = att + [{"file": "b.jpg", "kind": "screen", "score": 0.995}]
    t, why = threshold_for(live + strong)  # an attack above the live: the budget binds
    assert t == 0.97 and "strictest" in why and "APCER 0.500" in why
    many = [{"file": f"m{i}.jpg", "kind": "live", "score": 0.9 + i / 1000} for i in range(40)]
    low = [{"file": "x.jpg", "kind": "live", "score": 0.2}]
    t, why = threshold_for(many + low + strong, target_bpcer=0.05)  # 41 live: two may go
    assert t == 0.9010 and "BPCER 0.049" in why
    cued = [{"file": "c.jpg", "kind": "live", "score": 1.0, "cue": "frame"}]
    assert threshold_for(many + low + cued + strong, target_bpcer=0.05)[0] == 0.9  # cue refuses
    bad = [{"file": f"b{i}.jpg", "kind": "live", "score": 0.1} for i in range(5)]
    t, why = threshold_for(bad + att)
    assert t == 0.1 and "APCER 1.000" in why
    with pytest.raises(ImageError, match="no usable threshold"):
        threshold_for(bad + att, strict=False)  # it would accept every attack


def test_threshold_midpoints_lie_nearer_the_attacks():
    """The midpoints `eval-pad --midpoint` measures: between the same two ends, the geometric
    mean and the log-odds midpoint sit below halfway; the budget still binds when they cross."""
    live = [{"file": f"l{i}.jpg", "kind": "live", "score": s} for i, s in enumerate([0.9, 1.0])]
    att = [{"file": "a.jpg", "kind": "print", "score": 0.0099}]
    half, _ = threshold_for(live + att)
    geo, why = threshold_for(live + att, midpoint="geometric")
    logit, _ = threshold_for(live + att, midpoint="logit")
    assert half == 0.455 and geo == round((0.01 * 0.9) ** 0.5, 4) and "geometric midpoint" in why
    assert geo < logit < half and logit == 0.2317  # log-odds -4.595 and 2.197: midpoint -1.199
    strong = att + [{"file": "b.jpg", "kind": "screen", "score": 0.95}]
    assert threshold_for(live + strong, midpoint="geometric")[0] == 0.9


def test_midpoint_is_a_measurement_never_written(pad_dir, capsys):
    assert main(["eval-pad", str(pad_dir), "--midpoint", "logit", "--write-threshold"]) == 2
    assert "--midpoint is a measurement" in capsys.readouterr().err
    r = run_json(capsys, pad_dir, "--leave-one-source-out", "--midpoint", "geometric")
    assert r["loso"]["rule"].endswith("geometric midpoint")


def test_by_source_and_leave_one_source_out(pad_dir, tmp_path, capsys):
    r = run_json(capsys, pad_dir, "--per-file", "--leave-one-source-out")
    per = r["results"]
    assert set(r["by_source"]) == {x["source"] for x in per} == {"nuaa", "image", "obama2"}
    nuaa = r["by_source"]["nuaa"]
    assert nuaa["live"] == 3 and nuaa["attacks"] == {"print": 3}
    loso = r["loso"]
    # the NUAA fold is judged at a threshold picked on the rest: no live image there, no rule
    assert loso["by_source"]["nuaa"]["threshold"] is None
    image = loso["by_source"]["image"]  # image_F2 judged at the threshold NUAA alone gives
    assert image["threshold"] == threshold_for([x for x in per if x["source"] == "nuaa"])[0]
    assert loso["pooled"]["attacks"] == {"screen": 1} and r["loso_apcer"] == image["loso_apcer"]
    # a frames.csv source column wins over the file name; --source-pattern names subjects
    (pad_dir / "frames.csv").write_text(
        "file,source\n" + "".join(f"{x['file']},camX\n" for x in per if x["kind"] == "live")
    )
    try:
        r = run_json(capsys, pad_dir, "--per-file")
        assert {x["source"] for x in r["results"] if x["kind"] == "live"} == {"camX"}
    finally:
        (pad_dir / "frames.csv").unlink()
    r = run_json(capsys, pad_dir, "--per-file", "--source-pattern", r"^(nuaa_\d+)")
    assert {x["source"] for x in r["results"] if x["file"].startswith("live/")} == {"nuaa_0002"}
    r = run_json(capsys, pad_dir, "--per-file", "--include", "nuaa_*")
    assert {x["source"] for x in r["results"]} == {"nuaa"}


def test_files_left_out_are_listed_with_why(pad_dir, tmp_path, capsys):
    """A damaged image or an empty clip is left out of the figures (an empty clip was counted
    as an attack refused, lowering APCER); the report lists each with the reason."""
    d = tmp_path / "pad"
    shutil.copytree(pad_dir, d)
    (d / "live" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (d / "attack" / "screen" / "empty.mp4").touch()
    r = run_json(capsys, d)
    assert r["live"] == 3 and r["attacks"] == {"print": 3, "screen": 2}
    assert {x["file"] for x in r["skipped"]} == {"live/cut.jpg", "attack/screen/empty.mp4"}
    assert all(x["reason"] for x in r["skipped"])
    assert run_json(capsys, pad_dir)["skipped"] == []


def test_nothing_measured_is_an_error_not_a_report_of_none(pad_dir, tmp_path, capsys):
    """Files that are all unreadable gave a report of APCER and BPCER None, exit 0, as if
    something had been measured; an unusable --source-pattern was an internal error."""
    d = tmp_path / "pad"
    (d / "live").mkdir(parents=True)
    (d / "attack" / "print").mkdir(parents=True)
    (d / "live" / "empty.jpg").touch()
    (d / "attack" / "print" / "text.jpg").write_text("no image")
    assert main(["eval-pad", str(d), "--json"]) == 2
    err = capsys.readouterr().err
    assert "nothing to measure: 2 of 2 file(s) could not be read" in err
    (d / "live" / "empty.mp4").touch()  # clips too
    (d / "attack" / "print" / "text.mp4").write_text("no video")
    assert main(["eval-pad", "--clips", str(d), "--json"]) == 2
    assert "nothing to measure: 2 of 2 file(s)" in capsys.readouterr().err
    assert main(["eval-pad", str(pad_dir), "--source-pattern", "(", "--json"]) == 2
    assert "--source-pattern: '(' is not a regular expression" in capsys.readouterr().err
