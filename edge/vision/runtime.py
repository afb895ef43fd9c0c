"""LiteRT interpreter with a tflite-runtime fallback, and int8 tensor handling.

The runtime is chosen once at import so a Pi image with only tflite-runtime still works.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import ModelError, RuntimeMissingError

log = logging.getLogger(__name__)

try:  # the maintained successor of tflite-runtime
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    RUNTIME = "ai-edge-litert"
except ImportError:  # pragma: no cover - depends on the platform's wheel
    try:
        from tflite_runtime.interpreter import Interpreter as _Interpreter

        RUNTIME = "tflite-runtime"
    except ImportError:
        _Interpreter = None
        RUNTIME = ""


def resolve_threads(threads: int) -> int:
    """0 means every core; anything else is taken as is."""
    return threads if threads > 0 else (os.cpu_count() or 1)


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and quantisation of one model input or output."""

    index: int
    shape: tuple[int, ...]
    dtype: type
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        """True for an int8/uint8 tensor with a scale."""
        return self.dtype in (np.int8, np.uint8) and self.scale > 0


class TFLiteModel:
    """One interpreter: float in, float out, whatever the model's own tensor types are."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 0):
        if _Interpreter is None:
            raise RuntimeMissingError(
                "no TFLite runtime is installed",
                "pip install ai-edge-litert (or tflite-runtime on platforms without it)",
            )
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(
                f"model file {self.path} does not exist", "run scripts/build_models.py or reinstall"
            )
        try:
            self._it = _Interpreter(model_path=str(self.path), num_threads=resolve_threads(threads))
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(
                f"model file {self.path} cannot be loaded: {e}",
                "the file is corrupt; rebuild or reinstall it",
            ) from None
        self.inputs = [self._spec(d) for d in self._it.get_input_details()]
        self.outputs = [self._spec(d) for d in self._it.get_output_details()]

    @staticmethod
    def _spec(d: dict) -> TensorSpec:
        scale, zp = d.get("quantization", (0.0, 0))
        return TensorSpec(
            int(d["index"]), tuple(int(s) for s in d["shape"]), d["dtype"], float(scale), int(zp)
        )

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run on a float batch shaped like the first input; returns float outputs."""
        spec = self.inputs[0]
        if tuple(x.shape) != spec.shape:
            self._it.resize_tensor_input(spec.index, list(x.shape))
            self._it.allocate_tensors()
            self.inputs[0] = spec = self._spec(self._it.get_input_details()[0])
        self._it.set_tensor(spec.index, quantize(x, spec))
        self._it.invoke()
        return [dequantize(self._it.get_tensor(o.index), o) for o in self.outputs]

    def delegation(self) -> Delegation:
        """Which ops the runtime handed to its delegate (XNNPACK), read from the node list."""
        try:
            ops = self._it._get_ops_details()  # the runtime exposes no public equivalent
        except AttributeError:  # pragma: no cover - a runtime without the node list
            return Delegation(0, 0, 0, ())
        return delegation_of(ops)


@dataclass(frozen=True)
class Delegation:
    """Ops run by the delegate's fast kernels, and the ones left on the built-in kernels."""

    ops: int
    delegated: int
    partitions: int
    builtin: tuple[str, ...]  # op names not delegated, one per op

    def summary(self) -> str:
        """One line, e.g. XNNPACK runs 50 of 55 ops (5 partitions); built-in kernels: PAD x5."""
        if not self.ops:
            return "the runtime does not list its ops"
        if not self.partitions:
            return f"no delegate: all {self.ops} ops on the built-in kernels"
        s = f"XNNPACK runs {self.delegated} of {self.ops} ops ({self.partitions} partitions)"
        names = sorted(set(self.builtin))
        if names:
            s += "; built-in kernels: " + ", ".join(f"{n} x{self.builtin.count(n)}" for n in names)
        return s


def delegation_of(ops: list[dict]) -> Delegation:
    """Walk back from each DELEGATE node's outputs to its inputs: the ops in between are its."""
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    plain = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {int(t): o["index"] for o in plain for t in o["outputs"]}
    by_index = {o["index"]: o for o in plain}
    covered: set[int] = set()
    for d in delegates:
        stop = {int(t) for t in d["inputs"]}
        todo = [int(t) for t in d["outputs"]]
        while todo:
            t = todo.pop()
            n = producer.get(t)
            if t in stop or n is None or n in covered:
                continue
            covered.add(n)
            todo.extend(int(x) for x in by_index[n]["inputs"] if int(x) >= 0)
    builtin = tuple(o["op_name"] for o in plain if o["index"] not in covered)
    return Delegation(len(plain), len(covered), len(delegates), builtin)


def quantize(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Float -> the input tensor's type, using its scale and zero point when quantized."""
    if not spec.quantized:
        return np.ascontiguousarray(x, dtype=spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.round(x / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The output tensor's type -> float32."""
    if not spec.quantized:
        return q.astype(np.float32, copy=False)
    return ((q.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)
