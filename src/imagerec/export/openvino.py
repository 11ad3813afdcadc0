"""OpenVINO export (float32, or int8 by NNCF post-training quantization) and its runtime.

The model is converted through the ONNX export (:mod:`imagerec.export.onnx`, the same graph: ``image`` float32
``[N, S, S, C]`` pixels 0..255 in, ``probabilities`` and ``embedding`` out) by ``openvino.convert_model``, and
written as ``openvino_model/model.xml`` + ``model.bin`` (OpenVINO's IR). ``int8`` runs ``nncf.quantize`` with the
MIXED preset (symmetric int8 weights, asymmetric activations: NNCF's choice for non-ReLU networks such as
EfficientNet's SiLU and MobileNetV3's hard-swish; calibrated on up to 200 training images) on that IR;
the input stays float32 pixels, as the float export's.

The runtime compiles the IR for ``IMAGEREC_OPENVINO_DEVICE`` (default ``CPU``; ``GPU``, ``NPU`` or ``AUTO`` on
machines that have them) with ``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 or AMX OpenVINO would otherwise
compute a float model in bf16, which is not what the parity check measured. One infer request per calling thread.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.export.formats import PROBABILITIES
from imagerec.openworld.features import EMBEDDING

IR = "model.xml"  # inside the artifact folder, beside model.bin
DEVICE_ENV = "IMAGEREC_OPENVINO_DEVICE"


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ImportError("OpenVINO export needs openvino: pip install 'imagerec[export]'") from None
    return ov


def export_artifact(model, spec: dict[str, Any], quantize: str, path: Path, representative=None) -> None:
    """Write the IR folder at ``path`` (``none`` or ``int8``; int8 needs ``representative`` uint8 images)."""
    from imagerec.export import onnx

    ov = _openvino()
    with tempfile.TemporaryDirectory(prefix="imagerec-openvino-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx.export_artifact(model, spec, "none", onnx_path)
        ir = ov.convert_model(str(onnx_path))
    if quantize == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 needs representative images")
        ir = _quantize(ir, np.asarray(representative, np.float32))
    elif quantize != "none":
        raise ValueError(f"OpenVINO export supports none or int8, not {quantize!r}")
    path.mkdir(parents=True, exist_ok=True)
    ov.save_model(ir, str(path / IR), compress_to_fp16=False)


def _quantize(ir, images: np.ndarray):
    try:
        import nncf
    except ImportError:
        raise ImportError("OpenVINO int8 export needs nncf: pip install 'imagerec[export]'") from None
    nncf.set_log_level(logging.ERROR)
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    # NNCF draws rich progress bars on stdout, where `imagerec export` writes its own lines: they go nowhere
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(ir, dataset, subset_size=len(images), preset=nncf.QuantizationPreset.MIXED)


def default_device() -> str:
    return os.environ.get(DEVICE_ENV, "CPU")


class Runtime:
    """A compiled OpenVINO model; thread-safe (one infer request per calling thread and batch shape).

    OpenVINO's CPU kernels are much faster on static shapes (MobileNetV3Small at batch 1: 3.8 ms against 6.0 ms
    with the batch dimension left dynamic; EfficientNetV2B0 int8 8.7 against 13.6 ms), so the IR is compiled per
    batch shape: a batch of N runs on the model compiled for the next power of two >= N (rows padded with zeros
    and dropped from the answers; every row is computed on its own), at most 7 shapes up to 64; larger batches run
    on the dynamic model. Batch 1 is compiled at load, the others on first use.
    """

    name = "openvino"
    MAX_STATIC_BATCH = 64

    def __init__(self, artifact: Path, record: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 num_threads: int | None = None, device: str | None = None):  # fmt: skip
        from imagerec.export.tflite import default_threads

        ov = _openvino()
        self.core = ov.Core()
        self.device = device or default_device()
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.device == "CPU":
            self.config["INFERENCE_NUM_THREADS"] = num_threads or default_threads()
        self.ir = self.core.read_model(str(Path(artifact) / IR))
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._compiled_for(1)  # fail at load, not on the first request

    def _compiled_for(self, rows: int):
        """``(compiled model, its batch size or None when dynamic)`` for a batch of ``rows``."""
        size = 1 << max(rows - 1, 0).bit_length() if rows <= self.MAX_STATIC_BATCH else 0
        compiled = self._compiled.get(size)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(size)
                if compiled is None:
                    model = self.ir.clone()
                    if size:
                        shape = list(self.ir.inputs[0].get_partial_shape())
                        shape[0] = size
                        model.reshape({self.ir.inputs[0].get_any_name(): shape})
                    compiled = self.core.compile_model(model, self.device, self.config)
                    self._compiled[size] = compiled
        return compiled, size or None

    @staticmethod
    def _outputs_of(compiled) -> list[Any]:
        names = [next(iter(o.get_names()), "") for o in compiled.outputs]
        first = names.index(PROBABILITIES) if PROBABILITIES in names else 0
        outputs = [compiled.outputs[first]]
        if EMBEDDING in names:
            outputs.append(compiled.outputs[names.index(EMBEDDING)])
        return outputs

    def _request(self, compiled):
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        entry = requests.get(id(compiled))
        if entry is None:
            entry = requests[id(compiled)] = (compiled.create_infer_request(), self._outputs_of(compiled))
        return entry

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), embedding (N, D) or None)``."""
        x = np.asarray(batch, dtype=np.float32)
        rows = len(x)
        compiled, size = self._compiled_for(rows)
        if size is not None and size != rows:
            x = np.concatenate([x, np.zeros((size - rows, *x.shape[1:]), np.float32)])
        request, outputs = self._request(compiled)
        result = request.infer({0: x})
        out = [np.array(result[o][:rows], dtype=np.float32) for o in outputs]
        return out[0], (out[1] if len(out) > 1 else None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]
