"""ONNX export through ``tf2onnx`` (opset 17), float32 or int8, and its ``onnxruntime`` runtime.

``int8`` is ONNX Runtime's static quantization in the QDQ format (``quantize_static``: uint8 activations calibrated
by min/max on up to 200 training images, int8 weights per channel; softmax and the embedding's normalisation stay
float), run by ONNX Runtime's integer kernels (MLAS: VPMADDUBSW on AVX2, VNNI where the CPU has it). The input
stays float32 pixels.

The graph takes ``image``: float32 ``[N, S, S, C]`` pixels 0..255 (preprocessing inside) and returns
``probabilities`` (the softmax, ``[N, K]``, first) and ``embedding`` (``[N, D]``, L2-normalised; absent from
exports written before embeddings); class names travel in the ``labels.json`` sidecar and in the model's
metadata (``labels``, JSON).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.export.formats import PROBABILITIES
from imagerec.openworld.features import EMBEDDING

OPSET = 17


def export_artifact(model, spec: dict[str, Any], quantize: str, path: Path, representative=None) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        import tf2onnx
    except ImportError:
        raise ImportError("ONNX export needs tf2onnx: pip install 'imagerec[export]'") from None
    shape = [None, spec["image_size"], spec["image_size"], spec["channels"]]
    input_signature = [tf.TensorSpec(shape, tf.float32, name="image")]
    fn = tf.function(lambda image: model(image, training=False), input_signature=input_signature)
    # Frozen here rather than by tf2onnx.convert.from_function: that one lists every captured tensor among the
    # graph inputs, so the constants a layer holds as plain tensors (the Normalization mean/variance inside
    # EfficientNetV2's preprocessing) became required ONNX inputs that no caller can feed.
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    image = frozen.inputs[0].name
    outputs = [t.name for t in frozen.outputs]  # probabilities, then the embedding (with_embedding's order)
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[image],
        output_names=outputs,
        opset=OPSET,
        tensors_to_rename={image: "image", **dict(zip(outputs, (PROBABILITIES, EMBEDDING), strict=False))},
    )
    extra = [i.name for i in proto.graph.input if i.name != "image"]
    if extra:
        raise ValueError(f"the ONNX graph has inputs besides 'image': {', '.join(extra)}")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "labels", json.dumps(spec["labels"])
    if quantize == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 needs representative images")
        path.write_bytes(quantize_int8(proto.SerializeToString(), np.asarray(representative, np.float32)))
    elif quantize == "none":
        path.write_bytes(proto.SerializeToString())
    else:
        raise ValueError(f"ONNX export supports none or int8, not {quantize!r}")


def float_tail(model) -> list[str]:
    """The nodes between the last convolution or matrix product and each graph output (the softmax, the embedding's
    L2 normalisation): kept in float, so probabilities are not steps of 1/255 and the embedding keeps its precision."""
    producers = {out: node for node in model.graph.node for out in node.output}
    tail: set[str] = set()
    todo = [o.name for o in model.graph.output]
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in tail or node.op_type in ("Conv", "MatMul", "Gemm"):
            continue
        tail.add(node.name)
        todo.extend(node.input)
    return sorted(tail)


def quantize_int8(model: bytes, images: np.ndarray) -> bytes:
    """The float ONNX model ``model`` quantized to int8 QDQ, calibrated on ``images`` (float32 pixels 0..255)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": images[i : i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="imagerec-onnx-int8-") as tmp:
        float_path, prepared, out = (Path(tmp) / n for n in ("float.onnx", "prepared.onnx", "int8.onnx"))
        float_path.write_bytes(model)
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        # uint8 activations, int8 weights (U8S8): ONNX Runtime's fast path on x86 (VPMADDUBSW); int8 activations
        # (S8S8) ran EfficientNetV2B0 2.7x slower on an AVX2 EPYC (37.4 ms against 13.7 ms). U8S8 may saturate on
        # CPUs without VNNI; the parity check is what refuses an export that lost answers to it.
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=float_tail(onnx.load(str(prepared))),
        )  # fmt: skip
        return out.read_bytes()


class Runtime:
    """``onnxruntime.InferenceSession`` on CPU (``run`` is thread-safe)."""

    name = "onnx"

    def __init__(self, artifact: Path, record: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 num_threads: int | None = None):  # fmt: skip
        import onnxruntime as ort

        from imagerec.export.tflite import default_threads

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.output_names = [PROBABILITIES if PROBABILITIES in names else names[0]]
        if EMBEDDING in names:  # not in an export written before embeddings
            self.output_names.append(EMBEDDING)

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), embedding (N, D) or None)``: None for an export written before embeddings."""
        x = np.asarray(batch, dtype=np.float32)
        out = [
            o.astype(np.float32, copy=False)
            for o in self.session.run(self.output_names, {self.input_name: x})
        ]
        return out[0], (out[1] if len(out) > 1 else None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch, dtype=np.float32)
        return self.session.run(self.output_names[:1], {self.input_name: x})[0].astype(np.float32, copy=False)
