"""What every model builder shares: fetching packages, the build context, the demo photos that
calibrate every int8 model, the detector that cuts faces from them, conversion to TFLite.

A leaf: scripts/build_models.py (the command) and each family's builder (build_pad.py,
build_mobilefacenet.py, ...) import it; it imports none of them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # edge/ importable when a script runs from scripts/
FACE_API = ("@vladmandic/face-api", "1.7.15")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_pypi_wheel(name: str, version: str, dest: Path) -> zipfile.ZipFile:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            "-d",
            str(dest),
            f"{name}=={version}",
        ],
        check=True,
    )
    (whl,) = dest.glob(f"{name.replace('-', '_')}-{version}-*.whl")
    return zipfile.ZipFile(whl)


def fetch_npm(name: str, version: str, dest: Path) -> tarfile.TarFile:
    out = (
        subprocess.run(
            ["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", str(dest)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return tarfile.open(dest / out)


@dataclass
class BuildContext:
    """What every builder needs: where to write, the manifest to fill, scratch folder, packages."""

    out: Path
    tmp: Path
    manifest: dict
    align: dict
    template: np.ndarray
    _npm: dict = field(default_factory=dict)

    def npm(self, name: str, version: str) -> tarfile.TarFile:
        """Fetch an npm package once per build."""
        if (name, version) not in self._npm:
            self._npm[(name, version)] = fetch_npm(name, version, self.tmp)
        return self._npm[(name, version)]


def face_api_demo_photos(ctx: BuildContext) -> list[bytes]:
    """The demo photos inside npm @vladmandic/face-api: calibration source of every int8 model."""
    tar = ctx.npm(*FACE_API)
    return [
        tar.extractfile(m).read()
        for m in sorted(tar.getmembers(), key=lambda m: m.name)
        if m.name.startswith("package/demo/sample") and m.name.endswith(".jpg")
    ]


def build_detector():
    """BlazeFace short range from models/, run by TensorFlow's interpreter in the build venv."""
    import edge.vision.runtime as rt
    from edge.vision.detector import BlazeFace

    if rt._Interpreter is None:
        import tensorflow as tf

        rt._Interpreter = tf.lite.Interpreter
    return BlazeFace(ROOT / "models" / "blazeface_short.tflite", "short", threads=2, min_score=0.5)


def calibration_chips(
    images: list[bytes], template: np.ndarray, size: int, gains: tuple[float, ...] = (0.6, 1.0, 1.3)
) -> np.ndarray:
    """Aligned RGB face chips (float 0..255) from photos, with flips and exposure changes."""
    import cv2

    from edge.vision.align import align_face
    from edge.vision.image import decode_image

    det = build_detector()
    chips = []
    for data in images:
        bgr = decode_image(data)
        for d in det.detect(bgr):
            chip = align_face(bgr, d.keypoints, template, size)
            rgb = cv2.cvtColor(chip, cv2.COLOR_BGR2RGB).astype(np.float32)
            for img in (rgb, rgb[:, ::-1]):
                for gain in gains:
                    chips.append(np.clip(img * gain, 0, 255))
    return np.stack(chips)


def convert(model, rep: np.ndarray | None):
    import tensorflow as tf

    if isinstance(model, tf.keras.Model):
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        conv = tf.lite.TFLiteConverter.from_concrete_functions(
            [model.__call__.get_concrete_function()], model
        )
    if rep is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([c[None]] for c in rep)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def write_twins(
    out: Path, manifest: dict, stem: str, model, rep: np.ndarray, spec: dict, int8_model=None
) -> None:
    """STEM_float.tflite and STEM_int8.tflite, each entered in the manifest with its SHA-256.

    int8_model: an equivalent graph spelled for integer kernels (default: the float model).
    """
    twins = ((f"{stem}_float", model, None), (f"{stem}_int8", int8_model or model, rep))
    for name, net, rep_or_none in twins:
        dst = out / f"{name}.tflite"
        dst.write_bytes(convert(net, rep_or_none))
        manifest["embedders"][name] = {
            "file": dst.name,
            "sha256": sha256(dst),
            "quantization": "int8" if rep_or_none is not None else "float32",
            **spec,
        }
        print(f"wrote {dst} ({dst.stat().st_size // 1024} KiB)")
