"""A person record from the office (edge/fleet/people.py): checked whole before the person
already at the lane is replaced, so a malformed record never leaves them erased."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from edge import config as config_mod
from edge import tickets as tk
from edge.fleet import people
from edge.fleet.messages import MessageError
from edge.gallery.crypto import init_key, load_key
from edge.gallery.store import Gallery
from edge.lab.workspace import write_member

PID = "P-0123456789abcdef"


def _record(name="Ada Park", templates=None) -> bytes:
    rng = np.random.default_rng(3)
    embs = templates if templates is not None else rng.normal(size=(2, 8)).astype(np.float32)
    return json.dumps(
        {
            "name": name,
            "pass_ref": "S-1",
            "valid_until": None,
            "minor": False,
            "consent": {"notice_version": "1", "method": "written", "time": 1},
            "templates": [
                {
                    "model_id": "m",
                    "model_version": "1",
                    "embedding": base64.b64encode(np.asarray(e, np.float32).tobytes()).decode(),
                }
                for e in embs
            ],
        }
    ).encode()


@pytest.fixture
def lane(tmp_path):
    pub = tk.keygen(tmp_path / "keys")[1]
    m = write_member(tmp_path, "lane1", "mqtt://127.0.0.1:1", "park", pub)
    cfg = config_mod.load(m.config)
    init_key(cfg.resolve(cfg.gallery.key_file))
    people.import_record(cfg, PID, _record())
    return cfg


def _names(cfg) -> list[str]:
    with Gallery(cfg.resolve(cfg.gallery.db), load_key(cfg.resolve(cfg.gallery.key_file))) as g:
        return [p.name for p in g.people()]


@pytest.mark.parametrize(
    "record",
    [
        json.dumps({k: v for k, v in json.loads(_record()).items() if k != "name"}).encode(),
        json.dumps({**json.loads(_record()), "templates": []}).encode(),
        b"[1, 2]",  # not an object
        _record(name=["not", "text"]),
        _record(templates=np.array([[np.nan] * 8], np.float32)),
        json.dumps({**json.loads(_record()), "consent": "yes"}).encode(),
    ],
)
def test_a_malformed_record_replaces_nobody(lane, record):
    assert _names(lane) == ["Ada Park"]
    with pytest.raises(MessageError, match="malformed"):
        people.import_record(lane, PID, record)
    assert _names(lane) == ["Ada Park"]  # still enrolled, as the office last sent


def test_a_good_record_replaces_the_person(lane):
    people.import_record(lane, PID, _record(name="Ada P. Park"))
    assert _names(lane) == ["Ada P. Park"]


def test_a_record_exported_and_imported_keeps_the_person(lane):
    record = people.export_record(
        lane.resolve(lane.gallery.db), lane.resolve(lane.gallery.key_file), PID
    )
    r = json.loads(record)
    assert r["name"] == "Ada Park"
    assert r["consent"]["notice_version"] == "1"
    assert r["consent"]["method"] == "written"
    assert len(r["templates"]) == 2
    assert {(t["model_id"], t["model_version"]) for t in r["templates"]} == {("m", "1")}
