"""The embedding of a model: its penultimate features (the input of the ``logits`` layer), L2-normalised.

Every model of the registry ends ``... -> Dense(name="logits") -> Activation(name="probs")``, so the embedding is
found by name, and one two-output model (probabilities, embedding) serves every runtime: the Keras runtime calls
it, and exports write it, so a SavedModel, ONNX or LiteRT artifact returns the same embedding as its second output.
"""

from __future__ import annotations

from imagerec.errors import ImagerecError

#: the name of the embedding output of :func:`with_embedding` models and their exports
EMBEDDING = "embedding"


def with_embedding(model):
    """``model`` with a second output: the L2-normalised input of its ``logits`` layer (float32).

    Raises:
        ImagerecError: the model has no layer named ``logits`` (not built by imagerec's registry).
    """
    import keras
    from keras import layers

    try:
        features = model.get_layer("logits").input
    except ValueError:
        raise ImagerecError(
            f"model {model.name!r} has no 'logits' layer, so it has no embedding (models of 'imagerec models' do)"
        ) from None
    features = layers.Activation("linear", dtype="float32", name="embedding_f32")(features)
    embedding = layers.UnitNormalization(axis=-1, dtype="float32", name=EMBEDDING)(features)
    return keras.Model(model.inputs, [model.outputs[0], embedding], name=f"{model.name}_with_embedding")


__all__ = ["EMBEDDING", "with_embedding"]
