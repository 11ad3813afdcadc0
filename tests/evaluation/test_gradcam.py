"""Grad-CAM on small trained models: it shows where the class evidence is, and says in one line when it cannot.

Two tiny learnable sets, trained with ``model.fit`` on an ``imagerec-cnn`` from the registry (seconds on a CPU):
a coloured patch on a grey background (the class is the patch's colour, so the evidence is in one known place) and
crops of scikit-image's real texture photos (brick, grass, gravel: the evidence is everywhere).
"""

from __future__ import annotations

import numpy as np
import pytest

from imagefixtures import run_cli
from imagerec.models.backbones import BACKBONES

SIDE, PATCH, MARGIN = 32, 10, 2
PATCH_COLOURS = ((220, 40, 40), (40, 200, 60), (40, 60, 220))
TEXTURES = ("brick", "grass", "gravel")


def patch_images(rng: np.random.Generator, n: int):
    """``(images, labels, top-left corners)``: grey noise with one PATCH x PATCH square of the class colour."""
    images = np.clip(rng.normal(128, 20, (n, SIDE, SIDE, 3)), 0, 255)
    labels = rng.integers(0, len(PATCH_COLOURS), n)
    corners = rng.integers(0, SIDE - PATCH, (n, 2))
    for image, label, (r, c) in zip(images, labels, corners, strict=True):
        image[r : r + PATCH, c : c + PATCH] = PATCH_COLOURS[label]
    return images.astype(np.uint8), labels.astype(np.int32), corners


def texture_crops(rng: np.random.Generator, per_class: int):
    """``(images, labels)``: random 64 px crops of the real photos, halved to SIDE, grey repeated to RGB."""
    data = pytest.importorskip("skimage.data")
    images, labels = [], []
    for label, name in enumerate(TEXTURES):
        photo = getattr(data, name)()
        for r, c in rng.integers(0, photo.shape[0] - 2 * SIDE, (per_class, 2)):
            images.append(np.repeat(photo[r : r + 2 * SIDE : 2, c : c + 2 * SIDE : 2, None], 3, axis=-1))
            labels.append(label)
    return np.stack(images).astype(np.uint8), np.array(labels, np.int32)


def fit(images: np.ndarray, labels: np.ndarray, epochs: int):
    import keras

    from imagerec.models.registry import build_model

    keras.utils.set_random_seed(0)
    model = build_model("imagerec-cnn", SIDE, 3, int(labels.max()) + 1)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(images.astype(np.float32), labels, epochs=epochs, batch_size=24, verbose=0)
    return model


def confident(model, images: np.ndarray, at_least: float = 0.8) -> np.ndarray:
    probs = model.predict(images.astype(np.float32), verbose=0)
    return probs.max(axis=1) >= at_least


@pytest.fixture(scope="module")
def patch_model():
    return fit(*patch_images(np.random.default_rng(0), 240)[:2], epochs=5)


@pytest.fixture(scope="module")
def texture_model():
    return fit(*texture_crops(np.random.default_rng(0), 40), epochs=8)


def test_a_confident_texture_photo_gets_a_map_with_spatial_variation(texture_model):
    from keras import layers

    from imagerec.evaluation import GradCAM

    images, _ = texture_crops(np.random.default_rng(1), 4)
    sure = confident(texture_model, images)
    assert sure.sum() >= 6, "the tiny texture model should be confident on most crops"
    cam = GradCAM(texture_model)
    heat, notes = cam.maps(images[sure])
    # the raw Conv2D before BatchNorm gave all-zero maps here (its weighted sum is negative everywhere)
    assert isinstance(cam.model.get_layer(cam.layer_name), layers.ReLU)
    assert heat.shape == (sure.sum(), SIDE, SIDE) and np.isfinite(heat).all()
    assert np.allclose(heat.max(axis=(1, 2)), 1.0) and (heat.std(axis=(1, 2)) > 0.1).all()
    assert notes == [None] * len(notes)


def test_the_map_concentrates_on_the_patch_that_carries_the_class(patch_model):
    from imagerec.evaluation import GradCAM

    images, labels, corners = patch_images(np.random.default_rng(1), 12)
    assert confident(patch_model, images, at_least=0.9).all()
    heat, notes = GradCAM(patch_model).maps(images, labels)
    assert notes == [None] * len(notes)
    for h, (r, c) in zip(heat, corners, strict=True):
        near = np.zeros((SIDE, SIDE), bool)
        near[max(r - MARGIN, 0) : r + PATCH + MARGIN, max(c - MARGIN, 0) : c + PATCH + MARGIN] = True
        peak = np.unravel_index(h.argmax(), h.shape)
        assert near[peak], f"the map peaks at {peak}, away from the patch at {(r, c)}"
        # more mass on the patch than its share of the area
        assert h[near].sum() / h.sum() > 1.5 * near.mean()


def test_a_uniform_map_is_reported_flat_instead_of_drawn_silently():
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 1, activation="relu", kernel_initializer="ones", bias_initializer="ones")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="logits", kernel_initializer="ones")(x))
    from imagerec.evaluation import GradCAM

    heat, notes = GradCAM(model).maps(np.full((1, 8, 8, 3), 100, np.uint8))  # the same pixel everywhere
    assert heat.std() < 1e-6
    assert notes[0].startswith("Grad-CAM is flat") and "cannot say where" in notes[0] and "\n" not in notes[0]


def test_a_map_that_is_zero_everywhere_says_why():
    import keras
    from keras import layers

    from imagerec.evaluation import GradCAM

    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", bias_initializer="ones")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="logits", kernel_initializer="zeros")(x))
    heat, notes = GradCAM(model).maps(np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), np.uint8))
    assert (heat == 0).all()
    assert all(n.startswith("Grad-CAM is blank") and "gradients are zero" in n for n in notes)


def test_explain_cli_warns_in_one_line_when_the_map_shows_no_place(
    trained_run, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    from imagerec.evaluation import gradcam

    def blank(self, images, classes=None):
        return np.zeros(np.shape(images)[:3], np.float32), [self._note(np.zeros((8, 8)), zero_grads=True)]

    monkeypatch.setattr(gradcam.GradCAM, "maps", blank)
    image = tmp_path / "red.png"
    Image.fromarray(np.full((32, 32, 3), (220, 30, 30), np.uint8)).save(image)
    code, out, err = run_cli(
        capsys, "explain", str(trained_run), str(image), "--out", str(tmp_path / "h.png")
    )
    assert code == 0 and (tmp_path / "h.png").exists() and "Grad-CAM of 'red'" in out
    warning = [line for line in err.splitlines() if line.startswith("imagerec: warning: Grad-CAM is blank")]
    assert len(warning) == 1 and "gradients are zero" in warning[0]


@pytest.mark.parametrize("row", [row.name for row in BACKBONES])
def test_a_backbone_at_a_small_size_is_explained_on_a_map_of_at_least_min_side_cells(row):
    from imagerec.evaluation import GradCAM
    from imagerec.evaluation.gradcam import MIN_SIDE
    from imagerec.models.registry import build_model

    model = build_model(row, 64, 3, 3)  # the backbone's last map is 2x2 here: it cannot say where
    cam = GradCAM(model)
    assert cam.layer_name.startswith("backbone/") and min(cam.map_size) >= MIN_SIDE
    heat = cam(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8))
    assert heat.shape == (2, 64, 64) and np.isfinite(heat).all()
