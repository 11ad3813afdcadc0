"""LiteRT (``.tflite``) export in float32, float16, dynamic-range or full-integer int8, and its runtime.

* ``none``: float32 weights and activations.
* ``float16``: float16 weights (half the size), float32 compute on CPU.
* ``dynamic``: int8 weights, activations quantized on the fly; float32 input and output.
* ``int8``: full-integer weights and activations, calibrated on up to 200 images of the run's training split.
  The input is **uint8** (the raw pixels 0..255, which the model's own input scale maps exactly) and the output
  stays **float32** probabilities, so callers feed ``Classifier.preprocess`` output unchanged. Nets with depthwise
  convolutions or hard-swish (MobileNet, EfficientNet) keep those ops in float32 (:func:`int8_float_ops`,
  selective quantization with TensorFlow's quantization debugger); their input is then float32 (the same 0..255
  values).

Outputs: ``probabilities`` first and ``embedding`` second (both float32), named so in the ``serving_default``
signature and as tensor names. The converter orders a signature's outputs by name (``embedding`` first), so the
flatbuffer's output list is put back in that order after conversion (:func:`probabilities_first`); the runtime
still picks them by name, as LiteRT gives no order guarantee.

The converter reads a float SavedModel written to a temporary folder (the reliable route for Keras 3 models).
The runtime is ``ai_edge_litert.interpreter.Interpreter`` with XNNPACK and ``num_threads`` set; one interpreter per
thread (the server calls from worker threads), input resized to the batch size on demand.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.export.formats import PROBABILITIES
from imagerec.openworld.features import EMBEDDING


def default_threads() -> int:
    return int(os.environ.get("IMAGEREC_NUM_THREADS", 0)) or (os.cpu_count() or 1)


def _static_reshape_layer():
    from keras import layers, ops

    class StaticReshape(layers.Layer):
        """``Reshape(target)`` with the batch written as -1: the converter emits one RESHAPE with a constant shape
        instead of SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE (a dynamic shape), which XNNPACK does not take."""

        def __init__(self, target_shape, **kwargs):
            super().__init__(**kwargs)
            self.target_shape = tuple(target_shape)

        def call(self, x):
            return ops.reshape(x, (-1, *self.target_shape))

        def compute_output_shape(self, input_shape):
            return (input_shape[0], *self.target_shape)

    return StaticReshape


def xnnpack_friendly(model):
    """The same function, rewritten where LiteRT's XNNPACK delegate would otherwise cut the graph: ``Reshape``
    layers (the squeeze-and-excitation blocks of EfficientNet and MobileNetV3) get a constant shape. Keras writes
    the batch dimension as ``shape(x)[0]``, and the SHAPE op this becomes is not delegated, so each block split the
    graph (EfficientNetV2B0: 17 partitions in float32, 18 in int8).

    Returns ``model`` itself when nothing needed rewriting.
    """
    import keras
    from keras import layers

    found = []
    static_reshape = _static_reshape_layer()

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, layers.Reshape) and -1 not in tuple(config["target_shape"]):
            found.append(layer.name)
            return static_reshape(config["target_shape"], name=layer.name)
        return layer.__class__.from_config(config)

    rebuilt = keras.models.clone_model(model, clone_function=clone, recursive=True)
    if not found:
        return model
    rebuilt.set_weights(model.get_weights())
    return rebuilt


HARD_SWISH = ("hard_swish", "hard_silu")  # Keras 3's name for the function, and its alias


def int8_float_ops(model) -> tuple[str, ...]:
    """The LiteRT ops an int8 export of ``model`` keeps in float32, chosen by measurement (bench/RESULTS-export.md,
    2-core AVX-512 EPYC, XNNPACK, batch 1 at 224 px):

    * ``DEPTHWISE_CONV_2D`` in nets that have depthwise convolutions: XNNPACK's float32 depthwise kernels are as
      fast as its int8 ones, and the answers stay closer to float32 (EfficientNetV2B0: 3.74 ms vs 3.70 ms full
      int8, float32 9.55 ms).
    * ``HARD_SWISH`` and ``MUL`` in nets with hard-swish activations (MobileNetV3): XNNPACK takes no int8
      HARD_SWISH, and the int8 form ``(x / 6) * relu6(x + 3)`` plus the squeeze-and-excitation products cost more
      than they save. MobileNetV3Small: 0.74 ms mixed vs 1.00 ms full int8 and 0.92 ms float32.

    Empty (full int8) for plain convolutional nets (imagerec-cnn, ResNet50V2), which gain the most from int8.
    """
    from keras import layers

    from imagerec.models.registry import sublayers

    every = list(sublayers(model))
    ops: tuple[str, ...] = ()
    if any(isinstance(layer, (layers.DepthwiseConv2D, layers.SeparableConv2D)) for layer in every):
        ops += ("DEPTHWISE_CONV_2D",)
    # an Activation layer, or any layer's fused activation (a Conv2D(activation="hard_swish"))
    if any(getattr(getattr(layer, "activation", None), "__name__", "") in HARD_SWISH for layer in every):
        ops += ("HARD_SWISH", "MUL")
    return ops


def _selective_int8(converter, samples, float_ops: tuple[str, ...]) -> bytes:
    """int8 with ``float_ops`` left in float32: TensorFlow's quantization debugger builds the calibrated model and
    quantizes all but the denylisted ops (float32 input and output). The debugger also builds a numeric-verify
    model that is not used (its public API has no way around it): a few seconds more per export, nothing at
    inference."""
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(float_ops))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=samples, debug_options=options
    )
    return debugger.get_nondebug_quantized_model()


def convert(model, spec: dict[str, Any], quantize: str, representative: np.ndarray | None = None) -> bytes:
    """Convert ``model`` to LiteRT flatbuffer bytes."""
    import tensorflow as tf

    from imagerec.export.savedmodel import write_float_savedmodel

    model = xnnpack_friendly(model)

    with tempfile.TemporaryDirectory(prefix="imagerec-tflite-") as tmp:
        write_float_savedmodel(model, spec, Path(tmp) / "sm")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"))
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize == "int8":
            if representative is None or len(representative) == 0:
                raise ValueError("int8 needs representative images")
            images = np.asarray(representative, dtype=np.float32)

            def samples() -> Iterator[list[np.ndarray]]:
                for img in images:
                    yield [img[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = samples
            if float_ops := int8_float_ops(model):
                return probabilities_first(_selective_int8(converter, samples, float_ops))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.float32
        return probabilities_first(converter.convert())


def input_dtype(artifact: Path) -> str:
    """The dtype name of the flatbuffer's image input: ``uint8`` for a full-integer int8 export, ``float32`` for
    float exports and mixed int8 ones (:func:`int8_float_ops`)."""
    from ai_edge_litert.interpreter import Interpreter

    with _quiet_once():
        it = Interpreter(model_path=str(artifact))
    return np.dtype(it.get_input_details()[0]["dtype"]).name


def probabilities_first(content: bytes) -> bytes:
    """The flatbuffer with ``probabilities`` as its first output and the output tensors named after the signature's
    keys (what consumers that read ``get_output_details()[0]`` relied on before the embedding output existed)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    if not model.signatureDefs or len(model.subgraphs[0].outputs) < 2:
        return content
    graph = model.subgraphs[0]
    by_name = {t.name.decode(): t.tensorIndex for t in model.signatureDefs[0].outputs}
    order = [by_name[name] for name in (PROBABILITIES, EMBEDDING) if name in by_name]
    graph.outputs = np.asarray(order + [i for i in graph.outputs if i not in order], dtype=np.int32)
    for name, index in by_name.items():
        graph.tensors[index].name = name.encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def output_indices(it) -> tuple[int, int | None]:
    """The tensor indices of ``(probabilities, embedding or None)`` of an interpreter, by name: the signature's
    output keys, else the tensor names; an export written before embeddings has its one output only."""
    details = it.get_output_details()
    try:
        named = {k: d["index"] for k, d in it.get_signature_runner().get_output_details().items()}
    except (ValueError, KeyError, RuntimeError):  # a flatbuffer without signatures
        named = {}
    named = named or {d["name"]: d["index"] for d in details}
    probs = named.get(PROBABILITIES, details[0]["index"])
    return probs, named.get(EMBEDDING)


def export_artifact(model, spec: dict[str, Any], quantize: str, path: Path, representative=None) -> None:
    path.write_bytes(convert(model, spec, quantize, representative))


_QUIETED = threading.Event()


def _quiet_once():
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." from C++ on the first interpreter of
    a process; under the CLI (see :mod:`imagerec.quiet`) that first creation happens with fd 2 caught."""
    import contextlib

    from imagerec.quiet import quiet_stderr

    if _QUIETED.is_set():
        return contextlib.nullcontext()
    _QUIETED.set()
    return quiet_stderr()  # a no-op outside the CLI; replays what was written if the interpreter fails


class Runtime:
    """Thread-safe LiteRT runner: one ``Interpreter`` per calling thread, resized to each batch size."""

    name = "tflite"

    def __init__(self, artifact: Path, record: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 num_threads: int | None = None):  # fmt: skip
        self.content = Path(artifact).read_bytes()
        self.num_threads = num_threads or default_threads()
        self._local = threading.local()
        self._interpreter()  # fail at load, not on the first request

    def _interpreter(self):
        state = getattr(self._local, "state", None)
        if state is None:
            from ai_edge_litert.interpreter import Interpreter

            with _quiet_once():
                it = Interpreter(model_content=self.content, num_threads=self.num_threads)
                it.allocate_tensors()
            inp = it.get_input_details()[0]
            state = self._local.state = {"it": it, "in": inp, "n": int(inp["shape"][0])}
            state["idx"] = output_indices(it)  # tensor indices stay when the input is resized
            state["out"] = _outputs(it, state["idx"])
        return state

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities (N, K), embedding (N, D) or None)``: None for an export written before embeddings."""
        state = self._interpreter()
        it, inp = state["it"], state["in"]
        batch = np.asarray(batch)
        if len(batch) != state["n"]:
            it.resize_tensor_input(inp["index"], [len(batch), *inp["shape"][1:]])
            it.allocate_tensors()
            state["in"], state["out"], state["n"] = (
                it.get_input_details()[0],
                _outputs(it, state["idx"]),
                len(batch),
            )
            inp = state["in"]
        it.set_tensor(inp["index"], quantize_input(batch, inp))
        it.invoke()
        probs, embedding = state["out"]
        return (
            dequantize_output(it.get_tensor(probs["index"]), probs),
            None if embedding is None else dequantize_output(it.get_tensor(embedding["index"]), embedding),
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]


def _outputs(it, indices: tuple[int, int | None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The output details of ``(probabilities, embedding or None)`` at ``indices`` (:func:`output_indices`)."""
    by_index = {d["index"]: d for d in it.get_output_details()}
    probs, embedding = indices
    return by_index[probs], (None if embedding is None else by_index[embedding])


def quantize_input(batch: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return np.asarray(batch, dtype=np.float32)
    scale, zero = detail["quantization"]
    x = np.asarray(batch, dtype=np.float32)
    if scale:
        x = x / scale + zero
    info = np.iinfo(dtype)
    return np.clip(np.round(x), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if y.dtype == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
