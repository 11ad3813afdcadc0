"""LiteRT conversion rewrites what XNNPACK would not take (squeeze-and-excitation reshapes) without changing the
function: the converted graph has no SHAPE op, stays in one delegate partition, and answers like Keras at every batch
size. int8 keeps the ops that lose in int8 (depthwise convolutions, hard-swish) in float32."""

from __future__ import annotations

import numpy as np
import pytest

from imagerec.export import tflite

SPEC = {"image_size": 16, "channels": 3, "resize": "stretch", "labels": ["a", "b", "c"]}


def _squeeze_excite_net():
    """A tiny network with the blocks of EfficientNet/MobileNetV3: GAP -> Reshape((1, 1, C)) -> gate, hard-swish."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same")(x)
    x = layers.Activation("hard_swish")(x)
    gate = layers.GlobalAveragePooling2D()(x)
    gate = layers.Reshape((1, 1, 8))(gate)
    gate = layers.Conv2D(8, 1, activation="sigmoid")(gate)
    x = layers.Multiply()([x, gate])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _ops(content: bytes) -> tuple[list[str], int]:
    """(names of the graph's ops, number of XNNPACK partitions)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    names = [op["op_name"] for op in it._get_ops_details()]
    return names, names.count("DELEGATE")


def test_rewritten_model_computes_the_same_function():
    model = _squeeze_excite_net()
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype(np.float32)
    rebuilt = tflite.xnnpack_friendly(model)
    assert rebuilt is not model
    np.testing.assert_allclose(np.asarray(rebuilt(images)), np.asarray(model(images)), atol=1e-5)
    kinds = {type(layer).__name__ for layer in rebuilt.layers}
    assert "Reshape" not in kinds and "StaticReshape" in kinds


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_squeeze_excite_reshape_converts_to_a_static_reshape(quantize, tmp_path, monkeypatch):
    model = _squeeze_excite_net()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    content = tflite.convert(model, SPEC, quantize, images)
    (tmp_path / "model.tflite").write_bytes(content)
    runtime = tflite.Runtime(tmp_path / "model.tflite", num_threads=1)
    names, partitions = _ops(content)
    assert "SHAPE" not in names and "STRIDED_SLICE" not in names and "PACK" not in names, names
    # without the rewrite, the dynamic reshape's SHAPE op cuts the delegated graph in two (or more)
    monkeypatch.setattr(tflite, "xnnpack_friendly", lambda m: m)
    unrewritten_names, unrewritten = _ops(tflite.convert(model, SPEC, quantize, images))
    assert "SHAPE" in unrewritten_names and partitions < unrewritten
    if quantize == "none":
        assert partitions == 1, names
    want = np.asarray(model(images.astype(np.float32)))
    for batch in (1, 3, 16):  # the reshape keeps the batch dimension free
        got = runtime(images[:batch])
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want[:batch], atol=1e-5 if quantize == "none" else 0.08)


def _depthwise_net():
    """conv -> depthwise conv -> 1x1 conv -> pool -> softmax: a MobileNet block in miniature."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2D(16, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax")(x))


def _op_input_dtypes(content: bytes) -> dict[str, set[str]]:
    """op name -> the dtypes of its inputs, read without the XNNPACK delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(
        model_content=content, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    it.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    out: dict[str, set[str]] = {}
    for op in it._get_ops_details():
        out.setdefault(op["op_name"], set()).update(dtypes[i] for i in op["inputs"] if i >= 0)
    return out


def _plain_net():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, activation="relu")(layers.Rescaling(1 / 255.0)(inputs))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(16, 3, activation="relu")(x))
    return keras.Model(inputs, layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize(
    ("net", "float_ops"),
    [
        (_depthwise_net, {"DEPTHWISE_CONV_2D"}),
        (_squeeze_excite_net, {"HARD_SWISH", "MUL"}),
        (_plain_net, set()),
    ],
)
def test_int8_keeps_depthwise_and_hard_swish_in_float32(net, float_ops, tmp_path):
    model = net()
    assert set(tflite.int8_float_ops(model)) == float_ops
    images = np.random.default_rng(2).integers(0, 256, (16, 16, 16, 3)).astype(np.uint8)
    content = tflite.convert(model, SPEC, "int8", images)
    ops = _op_input_dtypes(content)
    for op in float_ops:
        assert ops[op] == {"float32"}, (op, ops)
    assert "int8" in ops["CONV_2D"] and "float32" not in ops["CONV_2D"]
    (tmp_path / "model.tflite").write_bytes(content)
    # full-integer nets take the raw uint8 pixels; mixed ones float32 (the same 0..255 values)
    assert tflite.input_dtype(tmp_path / "model.tflite") == ("float32" if float_ops else "uint8")
    got = tflite.Runtime(tmp_path / "model.tflite", num_threads=1)(images)
    np.testing.assert_allclose(got, np.asarray(model(images.astype(np.float32))), atol=0.05)


def test_float_ops_are_found_in_nested_backbones_and_fused_activations():
    import keras
    from keras import layers

    from imagerec.models.registry import build_model

    assert tflite.int8_float_ops(build_model("mobilenetv3small", 32, 3, 3)) == (
        "DEPTHWISE_CONV_2D",
        "HARD_SWISH",
        "MUL",
    )
    assert tflite.int8_float_ops(build_model("efficientnetv2b0", 32, 3, 3)) == ("DEPTHWISE_CONV_2D",)
    assert tflite.int8_float_ops(build_model("imagerec-cnn", 28, 1, 3)) == ()
    inputs = keras.Input((16, 16, 3))
    x = layers.SeparableConv2D(4, 3)(layers.Conv2D(4, 3, activation="hard_swish")(inputs))
    assert tflite.int8_float_ops(keras.Model(inputs, x)) == ("DEPTHWISE_CONV_2D", "HARD_SWISH", "MUL")
