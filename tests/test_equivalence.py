"""Cross-CPU equivalence comparator, CPU facts and the runtime's delegation report.

The comparator must pass identical runs and fail every kind of gap it exists to catch; the
inputs here are generated, the real x86-vs-aarch64 comparison is scripts/check-aarch64.sh.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from edge.lab.crosscpu import BOUND_KEY, compare, cosines, pairwise_delta
from edge.lab.equivalence import pick_photos
from edge.vision.cpu import parse_cpuinfo, read_cpu
from edge.vision.models import load_catalogue
from edge.vision.runtime import TFLiteModel, delegation_of
from tests.helpers import MODELS

PI4 = (
    "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU part\t: 0xd08\n\nprocessor\t: 1\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU part\t: 0xd08\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
)
PI5_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimddp"


def test_read_cpu_names_the_pi_core_and_its_int8_features(tmp_path):
    (tmp_path / "cpuinfo").write_text(PI4)
    cpu = read_cpu(tmp_path / "cpuinfo", tmp_path / "no-device-tree")
    assert (cpu.board, cpu.core, cpu.cores, cpu.int8_dot) == (
        "Raspberry Pi 4 Model B Rev 1.1", "Cortex-A72", 2, False,
    )  # fmt: skip
    (tmp_path / "cpuinfo").write_text(PI4.replace("0xd08", "0xd0b").replace("cpuid", PI5_FEATURES))
    (tmp_path / "model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    cpu = read_cpu(tmp_path / "cpuinfo", tmp_path / "model")
    assert (cpu.board, cpu.core, cpu.int8_dot) == (
        "Raspberry Pi 5 Model B Rev 1.0",
        "Cortex-A76",
        True,
    )
    assert "Cortex-A76" in cpu.summary()


def test_read_cpu_never_raises_on_missing_or_odd_files(tmp_path):
    cpu = read_cpu(tmp_path / "absent", tmp_path / "absent")
    assert cpu.cores >= 1
    assert cpu.board == ""
    assert isinstance(cpu.summary(), str)
    assert parse_cpuinfo("garbage\n: no key\nCPU part : 0xd08\nCPU part : 0xd03") == {
        "CPU part": "0xd08"
    }


def test_delegation_walks_each_partition_back_to_its_inputs():
    ops = [  # t0 -conv-> t1 -pool-> t2 -conv-> t3; the delegate took conv and conv separately
        {"index": 0, "op_name": "CONV_2D", "inputs": [0, 9], "outputs": [1]},
        {"index": 1, "op_name": "AVERAGE_POOL_2D", "inputs": [1], "outputs": [2]},
        {"index": 2, "op_name": "CONV_2D", "inputs": [2, -1], "outputs": [3]},
        {"index": 3, "op_name": "DELEGATE", "inputs": [0], "outputs": [1]},
        {"index": 4, "op_name": "DELEGATE", "inputs": [2], "outputs": [3]},
    ]
    d = delegation_of(ops)
    assert (d.ops, d.delegated, d.partitions, d.builtin) == (3, 2, 2, ("AVERAGE_POOL_2D",))
    assert "AVERAGE_POOL_2D x1" in d.summary()
    assert "no delegate" in delegation_of(ops[:3]).summary()


def test_shipped_int8_embedder_runs_on_the_delegate():
    spec = load_catalogue(MODELS)["embedders"]["dlib_resnet_int8"]
    d = TFLiteModel(MODELS / spec["file"], 1).delegation()
    assert d.partitions >= 1
    assert 0 < d.delegated <= d.ops


def test_pick_photos_is_repeatable_and_spread(tmp_path):
    for person in "abcd":
        (tmp_path / person).mkdir()
        for i in range(3):
            (tmp_path / person / f"{i}.jpg").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("not a photo")
    got = pick_photos(tmp_path, 4)
    assert got == pick_photos(tmp_path, 4)
    assert [p.parent.name for p in got] == list("abcd")
    assert len(pick_photos(tmp_path, 100)) == 12


def _run(rng: np.random.Generator, n: int = 6) -> dict:
    vecs = rng.normal(size=(n, 16))
    rows = [{"vector": list(v), "det_score": 0.9} for v in vecs]
    det = [{"faces": 1, "vector": [10.0, 10.0, 50.0, 50.0], "score": 0.9} for _ in range(n)]
    events = [{"frame": 93, "decision": "grant", "via": "face", "reason": "ok", "enrolled": True,
               "score": 0.97}]  # fmt: skip
    return {
        "machine": "x86_64", "python": "3.11", "qemu_cpu": "",
        "photos": [f"p{i}" for i in range(n)],
        "catalogue": {"embedders": ["e"], "detectors": ["d"]},
        "embedders": {"e": rows}, "detectors": {"d": det}, "models": {"pad/m": copy.deepcopy(rows)},
        "gate": {"embedder": "e", "frames": 275, "events": events},
    }  # fmt: skip


def test_compare_passes_identical_runs_and_prints_figures():
    ref = _run(np.random.default_rng(0))
    rep = compare(ref, copy.deepcopy(ref))
    assert rep.failures == []
    assert rep.figures["e"]["min_cosine"] == pytest.approx(1.0)
    assert rep.figures["gate"]["same"] is True
    assert any("pad/m" in line for line in rep.lines)


@pytest.mark.parametrize(
    "break_it, expect",
    [
        (
            lambda o: o["embedders"]["e"][2].update(
                vector=list(-np.array(o["embedders"]["e"][2]["vector"]))
            ),
            "e: cosine",
        ),
        (lambda o: o["models"]["pad/m"][0].update(vector=[0.0] * 15 + [1.0]), "pad/m: cosine"),
        (lambda o: o["embedders"]["e"][1].update(vector=None), "one side only"),
        (
            lambda o: o["gate"]["events"][0].update(reason="not_enrolled", decision="deny"),
            "gate decisions differ",
        ),
        (lambda o: o["gate"].update(frames=274), "gate decisions differ"),
        (lambda o: o["catalogue"].update(pad=["m"]), "different photos or model catalogues"),
    ],
)  # fmt: skip
def test_compare_fails_every_kind_of_gap(break_it, expect):
    ref = _run(np.random.default_rng(1))
    other = copy.deepcopy(ref)
    break_it(other)
    rep = compare(ref, other)
    assert any(expect in f for f in rep.failures), rep.failures


def test_small_noise_passes_and_is_measured():
    rng = np.random.default_rng(2)
    ref = _run(rng)
    other = copy.deepcopy(ref)
    for row in other["embedders"]["e"]:
        row["vector"] = list(np.array(row["vector"]) + rng.normal(scale=1e-3, size=16))
    rep = compare(ref, other)
    assert rep.failures == []
    assert 0 < rep.figures["e"]["max_pairwise_delta"] < 0.01
    assert 0.999 < rep.figures["e"]["min_cosine"] < 1.0


def test_cosine_and_pairwise_delta_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]])
    assert cosines(a, b) == pytest.approx([1.0, np.sqrt(0.5)])
    assert pairwise_delta(a, b) == pytest.approx(np.sqrt(0.5))  # 0 on one side, 0.707 on the other


def test_a_model_may_carry_its_own_measured_bound(monkeypatch):
    import edge.lab.crosscpu as eq

    rng = np.random.default_rng(3)
    ref = _run(rng)
    other = copy.deepcopy(ref)
    v = np.array(ref["embedders"]["e"][0]["vector"])
    u = rng.normal(size=16)
    u -= (u @ v) / (v @ v) * v  # orthogonal to v: cosine(v, v + u) = 1 / sqrt(1 + |u|^2/|v|^2)
    u *= np.linalg.norm(v) * np.tan(np.arccos(0.995)) / np.linalg.norm(u)
    other["embedders"]["e"][0]["vector"] = list(v + u)
    assert any("e: cosine" in f for f in compare(ref, other).failures)
    monkeypatch.setattr(eq, "load_catalogue", lambda _: {"embedders": {"e": {BOUND_KEY: 0.99}}})
    rep = compare(ref, other)
    assert rep.failures == []
    assert rep.figures["e"]["bound"] == 0.99
    assert 0.99 < rep.figures["e"]["min_cosine"] < 0.999
