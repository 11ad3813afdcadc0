"""The model registry: every architecture picked by name is one row here (``@register_model``).

A builder takes ``(image_size, channels, num_classes, config)`` and returns an uncompiled ``keras.Model`` whose
input is a float32 image batch in 0..255 of shape ``(S, S, C)``; rescaling/normalisation lives inside the model.
Its last layers are a Dense named ``logits`` and a float32 softmax named ``probs``; :func:`build_model` swaps the
softmax for a sigmoid of the same name for a multi-label run (``config.task``), so every builder serves both tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imagerec.errors import ImagerecError, did_you_mean


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable
    description: str
    kind: str = "scratch"  # scratch | backbone
    min_size: int = 8
    default_size: int | None = None  # preferred input side (None: follow the data)
    input_range: str = "[0,1] via Rescaling"


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, description: str, **kwargs) -> Callable:
    def wrap(fn: Callable) -> Callable:
        MODELS[name] = ModelSpec(name=name, build=fn, description=description, **kwargs)
        return fn

    return wrap


def _ensure_loaded() -> None:
    from imagerec.models import backbones, small_cnn  # noqa: F401 - registration side effect


def list_models() -> list[ModelSpec]:
    _ensure_loaded()
    return list(MODELS.values())


def get_model_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    if name not in MODELS:
        hint = did_you_mean(name, MODELS)
        raise ImagerecError(f"unknown model {name!r}{hint} (see 'imagerec models': {', '.join(MODELS)})")
    return MODELS[name]


def build_model(name: str, image_size: int, channels: int, num_classes: int, config=None):
    """Build registry model ``name`` for ``image_size``x``image_size``x``channels`` inputs and ``num_classes``."""
    from imagerec.settings import ModelConfig

    spec = get_model_spec(name)
    if image_size < spec.min_size:
        raise ImagerecError(
            f"model {name!r} needs an image size of at least {spec.min_size}, got {image_size}"
        )
    config = config or ModelConfig(name=name)
    model = spec.build(image_size, channels, num_classes, config)
    return sigmoid_head(model) if config.task == "multilabel" else model


def sigmoid_head(model):
    """``model`` with its softmax ``probs`` replaced by a float32 sigmoid ``probs`` on the same ``logits``: one
    independent probability per class (multi-label)."""
    import keras
    from keras import layers

    probs = layers.Activation("sigmoid", dtype="float32", name="probs")(model.get_layer("logits").output)
    return keras.Model(model.inputs, probs, name=model.name)


def sublayers(layer):
    """Every layer inside ``layer`` (a model), nested models' layers included, depth first."""
    for sub in getattr(layer, "layers", ()):
        yield sub
        yield from sublayers(sub)


def count_flops(model) -> int:
    """Multiply-adds x2 per image of ``model``'s forward pass (conv, depthwise conv and dense layers)."""
    from keras import layers

    total = 0
    for layer in (sub for sub in sublayers(model) if not getattr(sub, "layers", None)):  # leaves only
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)) and not isinstance(
            layer, layers.Conv2DTranspose
        ):
            out = layer.output.shape
            k = layer.kernel.shape
            per_out = k[0] * k[1] * (k[2] if not isinstance(layer, layers.DepthwiseConv2D) else 1)
            total += 2 * per_out * out[1] * out[2] * out[3]
        elif isinstance(layer, layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)
