"""Silent-Face PAD models: minivision's MiniFASNetV2 (2.7x crop) and MiniFASNetV1SE (4.0x crop).

Source: the released PyTorch state dicts of minivision-ai/Silent-Face-Anti-Spoofing (Apache-2.0;
`../shared/models-src/silent-face-anti-spoofing`, SOURCE.md names the commit), pinned here by
SHA-256. No torch: a legacy .pth is a pickle of tensor records followed by raw little-endian
storages, read by a restricted unpickler that builds nothing but numpy arrays.

The network is described once (`walk`) and spelled twice: in numpy, NCHW, batch norm and PReLU as
PyTorch defines them (the reference), and in TensorFlow, NHWC, batch norm folded into the
convolutions and PReLU as `slope*x + relu((1-slope)*x)` (two 1x1 depthwise convolutions, the
ReLU fused into the second: the int8 graph stays one XNNPACK partition). The TensorFlow float
model must match the numpy reference on every calibration crop or the build stops. Each network
is written as a float32 twin and a full-integer int8 model calibrated on crops of the face-api
demo photos and on printed and on-screen renderings of them (never on fixtures).

Input: one 80x80 BGR crop, float 0..255, no normalisation (upstream's ToTensor does not divide by
255). Output: softmax over 3 classes, class 1 = live; upstream fuses the two models by summing
their softmaxes (live score = p[1] / 2).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# beside the fixtures: EDGE_FIXTURES/../models-src (default ../shared), or EDGE_SILENTFACE_DIR
_SHARED = Path(os.environ.get("EDGE_FIXTURES", ROOT.parent / "shared" / "fixtures")).parent
SF_DIR = Path(
    os.environ.get("EDGE_SILENTFACE_DIR", _SHARED / "models-src" / "silent-face-anti-spoofing")
)
SF_COMMIT = "b6d5f04ad78778917853b25c778acef6d5626d15"
SF_SIZE = 80
SF_LIVE_INDEX = 1
# name -> (.pth file, its SHA-256, crop scale, squeeze-excitation in the last residual block)
SF_MODELS = {
    "minifasnetv2": (
        "2.7_80x80_MiniFASNetV2.pth",
        "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
        2.7,
    ),
    "minifasnetv1se": (
        "4_0_0_80x80_MiniFASNetV1SE.pth",
        "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
        4.0,
    ),
}
BOX_MAP_FILE = ROOT / "scripts" / "pad_box_map.json"
BN_EPS = 1e-5  # PyTorch's BatchNorm default
# The TensorFlow float model against the numpy reference (softmax outputs): the build stops above.
MAX_FLOAT_DIFF = 1e-4

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _TensorRecord(tuple):
    """(storage key, offset, size, stride) as the pickle describes a tensor."""


def _rebuild_tensor(storage, offset, size, stride, *_rest):
    return _TensorRecord((storage, int(offset), tuple(size), tuple(stride)))


class _StateDictUnpickler(pickle.Unpickler):
    """Builds an OrderedDict of tensor records; any other class in the pickle is refused."""

    def __init__(self, f):
        super().__init__(f)
        self.storages: dict[str, tuple[np.dtype, int]] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a state dict")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, _view = pid
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid[:2]}")
        self.storages.setdefault(key, (np.dtype(_STORAGE_DTYPES[storage_type]), int(numel)))
        return key


def read_legacy_pth(data: bytes) -> dict[str, np.ndarray]:
    """A PyTorch legacy-format state dict as {name: array}, 'module.' prefixes dropped."""
    import io

    f = io.BytesIO(data)
    magic, protocol = pickle.load(f), pickle.load(f)
    if magic != 0x1950A86A20F9469CFC6C or protocol != 1001:
        raise SystemExit("not a legacy PyTorch state dict (magic number or protocol differ)")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", False):
        raise SystemExit("big-endian state dict: not supported")
    u = _StateDictUnpickler(f)
    records = u.load()
    keys = pickle.load(f)
    storages = {}
    for key in keys:
        (n,) = struct.unpack("<q", f.read(8))
        dtype, numel = u.storages[key]
        if n != numel:
            raise SystemExit(f"storage {key}: {n} elements on disk, {numel} in the pickle")
        storages[key] = np.frombuffer(f.read(n * dtype.itemsize), dtype)
    if f.read():
        raise SystemExit("bytes left after the last storage: not a plain state dict")
    out = {}
    for name, rec in records.items():
        key, off, size, stride = rec
        flat = storages[key]
        it = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[off:], size, [st * it for st in stride])
        out[name.removeprefix("module.")] = np.array(view, dtype=np.float32)
    return out


def load_state_dict(name: str) -> tuple[dict[str, np.ndarray], str]:
    """The pinned .pth of one model, checked against its SHA-256."""
    fname, digest, _scale = SF_MODELS[name]
    path = SF_DIR / fname
    if not path.is_file():
        raise SystemExit(f"{path} is missing: set EDGE_SILENTFACE_DIR to the models-src folder")
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != digest:
        raise SystemExit(f"{path}: SHA-256 {got}, expected {digest}")
    return read_legacy_pth(data), got


# --- the network, described once ----------------------------------------------------------------

STAGES = (  # (name, kind, stride): conv_* stages with `.model.N` are residual stacks
    ("conv1", "block", 2),
    ("conv2_dw", "block", 1),
    ("conv_23", "depthwise", 2),
    ("conv_3", "residual", 1),
    ("conv_34", "depthwise", 2),
    ("conv_4", "residual", 1),
    ("conv_45", "depthwise", 2),
    ("conv_5", "residual", 1),
    ("conv_6_sep", "block", 1),
    ("conv_6_dw", "linear", 1),
)


def walk(sd: dict[str, np.ndarray], ops, x):
    """MiniFASNet (V2 or V1SE, 80x80) in upstream's order; `ops` spells each piece.

    A block is conv -> batch norm [-> PReLU]; a depthwise unit is a 1x1 block, a 3x3 depthwise
    block and a 1x1 linear projection, in a residual stack with the input added back (the stack's
    last unit with squeeze-excitation on the projection first, when the dict has one).
    """
    used: set[str] = set()

    def block(p, y, stride, act=True):
        w = sd[f"{p}.conv.weight"]
        bn = [sd[f"{p}.bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        used.update(f"{p}.{k}" for k in ("conv.weight", "bn.weight", "bn.bias"))
        used.update(f"{p}.bn.{k}" for k in ("running_mean", "running_var", "num_batches_tracked"))
        pad = (w.shape[2] - 1) // 2 if p != "conv_6_dw" else 0
        slope = sd.get(f"{p}.prelu.weight") if act else None
        if act:
            used.add(f"{p}.prelu.weight")
        return ops.conv_bn(y, w, bn, stride, pad, slope)

    def unit(p, y, stride):
        z = block(f"{p}.conv", y, 1)
        z = block(f"{p}.conv_dw", z, stride)
        return block(f"{p}.project", z, 1, act=False)

    for name, kind, stride in STAGES:
        if kind == "block":
            x = block(name, x, stride)
        elif kind == "linear":
            x = block(name, x, stride, act=False)
        elif kind == "depthwise":
            x = unit(name, x, stride)
        else:
            n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"{name}.model."))
            for i in range(n):
                p = f"{name}.model.{i}"
                z = unit(p, x, 1)
                if f"{p}.se_module.fc1.weight" in sd:
                    se = {
                        k.split("se_module.")[1]: v for k, v in sd.items() if f"{p}.se_module." in k
                    }
                    used.update(k for k in sd if f"{p}.se_module." in k)
                    z = ops.squeeze_excite(z, se)
                x = ops.add(x, z)
    bn = [sd[f"bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    used.update(
        ["linear.weight", "prob.weight"]
        + [f"bn.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        + ["bn.num_batches_tracked"]
    )
    out = ops.head(x, sd["linear.weight"], bn, sd["prob.weight"])
    left = set(sd) - used
    if left:
        raise SystemExit(f"state dict entries not in the network: {sorted(left)[:5]}")
    return out


def _bn_scale(bn: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    g, b, mu, var = (v.astype(np.float64) for v in bn)
    k = g / np.sqrt(var + BN_EPS)
    return k, b - mu * k


class NumpyOps:
    """The reference: NCHW float64, batch norm and PReLU exactly as PyTorch's eval mode."""

    @staticmethod
    def conv_bn(x, w, bn, stride, pad, slope):
        from numpy.lib.stride_tricks import sliding_window_view

        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        kh, kw = w.shape[2:]
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
        if w.shape[1] == 1 and x.shape[1] > 1:  # depthwise (groups = channels)
            y = np.einsum("bchwij,cij->bchw", win, w[:, 0].astype(np.float64))
        else:
            y = np.einsum("bchwij,ocij->bohw", win, w.astype(np.float64))
        g, b, mu, var = (v.astype(np.float64)[None, :, None, None] for v in bn)
        y = (y - mu) / np.sqrt(var + BN_EPS) * g + b
        if slope is not None:
            y = np.where(y >= 0, y, slope.astype(np.float64)[None, :, None, None] * y)
        return y

    @staticmethod
    def squeeze_excite(x, se):
        s = x.mean(axis=(2, 3), keepdims=True)
        s = NumpyOps.conv_bn(s, se["fc1.weight"], _bn4(se, "bn1"), 1, 0, None)
        s = np.maximum(s, 0)
        s = NumpyOps.conv_bn(s, se["fc2.weight"], _bn4(se, "bn2"), 1, 0, None)
        return x * (1 / (1 + np.exp(-s)))

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def head(x, lin, bn, prob):
        e = x.reshape(len(x), -1) @ lin.T.astype(np.float64)
        g, b, mu, var = (v.astype(np.float64) for v in bn)
        e = (e - mu) / np.sqrt(var + BN_EPS) * g + b
        z = e @ prob.T.astype(np.float64)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def _bn4(se: dict, name: str) -> list[np.ndarray]:
    return [se[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


class TFOps:
    """NHWC TensorFlow ops; batch norm folded into each convolution; PReLU fused-ReLU spelled."""

    def __init__(self):
        import tensorflow as tf

        self.tf = tf

    def conv_bn(self, x, w, bn, stride, pad, slope):
        tf = self.tf
        k, b = _bn_scale(bn)
        if pad:
            x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        st = [1, stride, stride, 1]
        if w.shape[1] == 1 and x.shape[3] > 1:  # depthwise: (C, 1, kh, kw) -> (kh, kw, C, 1)
            kern = (w[:, 0] * k[:, None, None]).transpose(1, 2, 0)[..., None]
            y = tf.nn.depthwise_conv2d(x, kern.astype(np.float32), st, "VALID")
        else:  # (O, I, kh, kw) -> (kh, kw, I, O)
            kern = (w * k[:, None, None, None]).transpose(2, 3, 1, 0)
            y = tf.nn.conv2d(x, kern.astype(np.float32), st, "VALID")
        y = y + b.astype(np.float32)
        return y if slope is None else self.prelu(y, slope)

    def prelu(self, x, slope):
        # slope*x + relu((1-slope)*x), both products 1x1 depthwise convolutions (per-channel int8
        # scales; TFLite's int8 PRELU has no XNNPACK kernel). The ReLU follows its convolution so
        # the converter fuses it: a standalone int8 RELU splits the XNNPACK graph. Needs slope<=1.
        tf = self.tf
        if np.any(slope > 1):
            raise SystemExit(f"PReLU slope above 1 ({slope.max():.3f}): respell needed")
        a = slope.reshape(1, 1, -1, 1).astype(np.float32)
        return tf.nn.depthwise_conv2d(x, a, [1, 1, 1, 1], "VALID") + tf.nn.relu(
            tf.nn.depthwise_conv2d(x, 1.0 - a, [1, 1, 1, 1], "VALID")
        )

    def squeeze_excite(self, x, se):
        tf = self.tf
        s = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        s = tf.nn.relu(self.conv_bn(s, se["fc1.weight"], _bn4(se, "bn1"), 1, 0, None))
        s = self.conv_bn(s, se["fc2.weight"], _bn4(se, "bn2"), 1, 0, None)
        return x * tf.sigmoid(s)

    def add(self, a, b):
        return a + b

    def head(self, x, lin, bn, prob):
        # linear -> batch norm -> (dropout, off in eval) -> prob: all linear, one 512x3 matrix
        tf = self.tf
        k, b = _bn_scale(bn)
        w = (lin.T.astype(np.float64) * k) @ prob.T.astype(np.float64)
        bias = b @ prob.T.astype(np.float64)
        z = tf.matmul(tf.reshape(x, [1, -1]), w.astype(np.float32)) + bias.astype(np.float32)
        return tf.nn.softmax(z)


def reference_probs(sd: dict[str, np.ndarray], crops: np.ndarray) -> np.ndarray:
    """Softmax (N, 3) of the numpy reference on BGR 0..255 crops (N, 80, 80, 3)."""
    out = []
    for i in range(0, len(crops), 16):
        x = crops[i : i + 16].astype(np.float64).transpose(0, 3, 1, 2)
        out.append(walk(sd, NumpyOps, x))
    return np.concatenate(out)


def tf_function(sd: dict[str, np.ndarray]):
    """The network as a tf.Module: one (1, 80, 80, 3) BGR 0..255 crop in, 3 probabilities out."""
    import tensorflow as tf

    ops = TFOps()

    class MiniFASNet(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([1, SF_SIZE, SF_SIZE, 3], tf.float32, name="bgr_0_255")]
        )
        def __call__(self, x):
            return walk(sd, ops, x)

    return MiniFASNet()


# --- crops, calibration, build ------------------------------------------------------------------


def face_boxes(photos: list[bytes]):
    """(BGR frame, upstream-style box) for every BlazeFace face of the photos."""
    import build_common as bc  # the builders' shared leaf (scripts/ is on sys.path)

    from edge.vision.image import decode_image

    det = bc.build_detector()
    bm = box_map()
    for data in photos:
        bgr = decode_image(data)
        for d in det.detect(bgr):
            yield bgr, bm.apply(d.box)


def box_map():
    """The BlazeFace -> RetinaFace-style box map fitted by scripts/fit_pad_box.py."""
    from edge.vision.liveness import BoxMap

    return BoxMap.from_dict(json.loads(BOX_MAP_FILE.read_text())["box_map"])


def crops_at(photos: list[bytes], scale: float) -> list[np.ndarray]:
    """80x80 BGR crops (uint8) of every face at this context scale, cut as the gate cuts them."""
    from edge.vision.liveness import crop_upstream

    return [crop_upstream(bgr, box, scale, SF_SIZE)[0] for bgr, box in face_boxes(photos)]


def calibration_set(photos: list[bytes], scale: float, seed: int = 0) -> np.ndarray:
    """Live crops (three scales about the model's, flips, three exposures) and printed and
    on-screen renderings of the same photos, cut at the model's scale."""
    import cv2

    from edge.lab.padsynth import render_print, render_screen

    rng = np.random.default_rng(seed)
    out = []
    for s in (scale * 0.8, scale * 0.9, scale):
        for c in crops_at(photos, s):
            for img in (c, c[:, ::-1]):
                for gain in (0.7, 1.0, 1.25):
                    out.append(np.clip(img.astype(np.float32) * gain, 0, 255))
    for data in photos:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for render in (render_print, render_screen) * 4:
            png = cv2.imencode(".png", render(bgr, rng))[1].tobytes()
            out.extend(c.astype(np.float32) for c in crops_at([png], scale))
    return np.stack(out)


def tflite_probs(model_bytes: bytes, crops: np.ndarray) -> np.ndarray:
    """Run a TFLite model (float or int8 in/out) on crops with TensorFlow's interpreter."""
    import tensorflow as tf

    from edge.vision.runtime import TensorSpec, dequantize, quantize

    it = tf.lite.Interpreter(model_content=model_bytes, num_threads=1)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    ispec = TensorSpec(i["index"], tuple(i["shape"]), i["dtype"], *i["quantization"])
    ospec = TensorSpec(o["index"], tuple(o["shape"]), o["dtype"], *o["quantization"])
    out = []
    for c in crops:
        it.set_tensor(i["index"], quantize(c[None].astype(np.float32), ispec))
        it.invoke()
        out.append(dequantize(it.get_tensor(o["index"]), ospec)[0])
    return np.array(out)


def build_silentface(ctx) -> None:
    """Both networks: float32 twin and int8 each, and the fused catalogue entries."""
    import build_common as bc  # the builders' shared leaf (scripts/ is on sys.path)

    photos = bc.face_api_demo_photos(ctx)
    ctx.manifest.setdefault("liveness", {})
    members: dict[str, list[dict]] = {"float32": [], "int8": []}
    checks = {}
    for name, (fname, _digest, scale) in SF_MODELS.items():
        sd, digest = load_state_dict(name)
        model = tf_function(sd)
        rep = calibration_set(photos, scale)
        ref = reference_probs(sd, rep)
        print(f"{name}: calibrating int8 on {len(rep)} crops from {len(photos)} demo photos")
        for quant, r in (("float32", None), ("int8", rep)):
            tag = "float" if r is None else "int8"
            blob = bc.convert(model, r)
            got = tflite_probs(blob, rep)
            diff = np.abs(got - ref)
            if r is None and diff.max() > MAX_FLOAT_DIFF:
                raise SystemExit(f"{name} float TFLite differs from the reference: {diff.max()}")
            dst = Path(ctx.out) / f"{name}_{tag}.tflite"
            dst.write_bytes(blob)
            checks[f"{name}_{tag}"] = {
                "crops": len(rep),
                "max_abs_diff_to_reference": float(f"{diff.max():.3g}"),
                "median_abs_diff_live": float(f"{np.median(np.abs(got[:, 1] - ref[:, 1])):.3g}"),
                "argmax_agree": float(f"{np.mean(got.argmax(1) == ref.argmax(1)):.4f}"),
            }
            members[quant].append(
                {
                    "file": dst.name,
                    "sha256": bc.sha256(dst),
                    "network": "MiniFASNetV2" if name == "minifasnetv2" else "MiniFASNetV1SE",
                    "crop_scale": scale,
                    "size": SF_SIZE,
                    "channels": "BGR",
                    "input_range": "0..255 (no normalisation)",
                    "live_index": SF_LIVE_INDEX,
                    "classes": 3,
                    "pth": fname,
                    "pth_sha256": digest,
                }
            )
            print(f"wrote {dst} ({dst.stat().st_size // 1024} KiB): {checks[f'{name}_{tag}']}")
    for quant, tag in (("float32", "float"), ("int8", "int8")):
        ctx.manifest["liveness"][f"silentface_{tag}"] = {
            "quantization": quant,
            "models": members[quant],
            "fusion": "mean of the members' softmax outputs; live = mean p[live_index]"
            " (upstream: sum of the softmaxes, live score p[1] / 2)",
            "crop": "upstream: box scaled by min(crop_scale, (H-1)/h, (W-1)/w) about its centre,"
            " shifted inside the frame, 80x80 bilinear",
            "box_map": box_map().as_dict(),
            "box_map_source": json.loads(BOX_MAP_FILE.read_text())["source"],
            "source": f"minivision-ai/Silent-Face-Anti-Spoofing @ {SF_COMMIT}"
            " resources/anti_spoof_models (MiniFASNetV2 2.7x, MiniFASNetV1SE 4.0x)",
            "license": "Apache-2.0 (the repository's LICENSE covers the weights); training data"
            " not published",
            "conversion_check": {k: v for k, v in checks.items() if k.endswith("_" + tag)},
        }
