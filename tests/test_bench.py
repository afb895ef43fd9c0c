"""`edge-gate bench`: what it measures is what it says it measures (figures are printed, never
asserted: speed is the benchmark's to report, not a test's to time)."""

from __future__ import annotations

import json

import pytest

from edge.cli import main


@pytest.mark.fixtures
def test_bench_gate_runs_the_embedder_and_detector_it_is_given(tmp_path, monkeypatch, capsys):
    """`bench --gate --embedder E` measured the demo config's embedder whatever E was, so the
    whole-gate figures of two embedders were the same run twice."""
    monkeypatch.chdir(tmp_path)  # bench --gate works in ./var/bench-gate
    reports = {}
    for name in ("dlib_resnet_int8", None):
        argv = ["bench", "--gate", "--json"] + (["--embedder", name] if name else [])
        assert main(argv) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    assert reports["dlib_resnet_int8"]["embedder"] == "dlib_resnet_int8"
    assert reports[None]["embedder"] == "mobilefacenet_float"  # the shipped default
    for rep in reports.values():  # each enrolled and granted with its own templates
        assert rep["detector"] == "blazeface_short"
        assert rep["grants"] >= 1 and rep["granted_person_is_enrolled"], rep
