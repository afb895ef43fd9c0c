"""The Silent-Face build's pieces that need no TensorFlow: the .pth reader and the reference net.

The shipped float twins must compute upstream's network: the numpy reference (batch norm and
PReLU as PyTorch defines them, NCHW) run on the released weights agrees with them on face crops.
"""

from __future__ import annotations

import io
import os
import pickle
import sys

import numpy as np
import pytest

from edge.config import PROJECT_ROOT
from edge.vision import liveness as lv

from .helpers import MODELS

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import build_silentface as bs  # noqa: E402


def legacy_pth(monkeypatch, arrays: dict[str, np.ndarray], extra=None) -> bytes:
    """A state dict in PyTorch's legacy layout, pickled through stand-ins named like torch's
    own classes (so the pickle holds the same GLOBAL opcodes torch.save writes)."""
    import collections
    import types

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        def __init__(self, key: str, n: int):
            self.key, self.n = key, n

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = (
        FloatStorage,
        _rebuild_tensor_v2,
        utils,
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __init__(self, key: str, a: np.ndarray):
            self.args = (FloatStorage(key, a.size), 0, a.shape, tuple(s // 4 for s in a.strides))

        def __reduce__(self):
            return (_rebuild_tensor_v2, (*self.args, False, collections.OrderedDict()))

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, FloatStorage):
                return ("storage", FloatStorage, o.key, "cpu", o.n, None)
            return None

    f = io.BytesIO()
    for head in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(head, f, protocol=2)
    records = collections.OrderedDict(
        (name, Tensor(str(i), a)) for i, (name, a) in enumerate(arrays.items())
    )
    if extra is not None:
        records["extra"] = extra
    P(f, protocol=2).dump(records)
    pickle.dump([str(i) for i in range(len(arrays))], f, protocol=2)
    for a in arrays.values():
        f.write(np.int64(a.size).tobytes() + np.ascontiguousarray(a, "<f4").tobytes())
    return f.getvalue()


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_reader_rebuilds_tensors_and_drops_the_module_prefix(monkeypatch):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    data = legacy_pth(monkeypatch, {"module.conv.weight": w, "bn.bias": np.ones(5, np.float32)})
    got = bs.read_legacy_pth(data)
    assert list(got) == ["conv.weight", "bn.bias"]
    np.testing.assert_array_equal(got["conv.weight"], w)
    np.testing.assert_array_equal(got["bn.bias"], np.ones(5))


def test_reader_refuses_anything_but_tensors(monkeypatch):
    data = legacy_pth(monkeypatch, {"w": np.zeros(2, np.float32)}, extra=_Evil())
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        bs.read_legacy_pth(data)
    with pytest.raises(SystemExit, match="bytes left"):
        bs.read_legacy_pth(legacy_pth(monkeypatch, {"w": np.zeros(2, np.float32)}) + b"x")


@pytest.fixture(scope="module")
def state_dicts(fixtures):
    if not (bs.SF_DIR / bs.SF_MODELS["minifasnetv2"][0]).is_file():
        msg = f"Silent-Face weights not found in {bs.SF_DIR}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return {name: bs.load_state_dict(name)[0] for name in bs.SF_MODELS}


def test_released_weights_are_read_whole(state_dicts):
    v2, v1se = state_dicts["minifasnetv2"], state_dicts["minifasnetv1se"]
    assert len(v2) == 334 and len(v1se) == 370  # every entry; walk() checks none is left over
    assert v2["conv1.conv.weight"].shape == (32, 3, 3, 3)
    assert v1se["conv_3.model.3.se_module.fc1.weight"].shape == (16, 64, 1, 1)
    assert v2["prob.weight"].shape == (3, 128)


def test_shipped_float_twins_compute_upstreams_network(state_dicts, fixtures):
    """Face crops of faces/ fixtures through the numpy reference and the shipped float files."""
    import cv2

    from edge.vision.detector import BlazeFace
    from edge.vision.runtime import TFLiteModel

    det = BlazeFace(MODELS / "blazeface_short.tflite", "short", threads=1, min_score=0.5)
    spec = lv.PadSpec.load(MODELS, "silentface_float")
    files = sorted((fixtures / "faces").glob("*/*"))[::10]
    for name, member in zip(bs.SF_MODELS, spec.members, strict=True):
        crops = []
        for p in files:
            img = cv2.imread(str(p))
            found = det.detect(img) if img is not None else []
            if found:
                box = spec.box_map.apply(max(found, key=lambda d: d.width).box)
                crops.append(lv.crop_upstream(img, box, member.crop_scale, 80)[0])
        x = np.stack(crops).astype(np.float32)
        ref = bs.reference_probs(state_dicts[name], x)
        m = TFLiteModel(member.path, 1)
        got = np.concatenate([m.run(c[None])[0] for c in x])
        assert len(x) >= 6
        assert np.abs(got - ref).max() < bs.MAX_FLOAT_DIFF, name
        assert (got.argmax(1) == ref.argmax(1)).all()
