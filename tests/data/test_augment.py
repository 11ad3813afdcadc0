"""The fused augmentation: the warp is centred and bounded, flips are mirror images, seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from imagerec.data.augment import PRESETS, build_augment, random_affine
from imagerec.data.pipeline import PipelineSpec, make_dataset


def _blob_batch(n: int = 32, size: int = 33) -> np.ndarray:
    x = np.zeros((n, size, size, 1), np.float32)
    c = size // 2
    x[:, c - 1 : c + 2, c - 1 : c + 2] = 255.0
    return x


def test_zero_ranges_are_the_identity():
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 20, 3)).astype(np.float32)
    assert np.allclose(random_affine(x, 0.0, 0.0, 0.0, seed=1).numpy(), x, atol=1e-3)


def test_rotation_and_zoom_turn_about_the_centre():
    out = random_affine(_blob_batch(), translate=0.0, rotate=0.5, zoom=0.1, seed=3).numpy()
    assert (out[:, 16, 16, 0] > 200).all()  # the centre pixel stays where it was, whatever the angle


def test_translation_moves_at_most_its_fraction_of_the_side():
    out = random_affine(_blob_batch(64), translate=0.1, rotate=0.0, zoom=0.0, seed=4).numpy()
    shifts = []
    for img in out[..., 0]:
        ys, xs = np.nonzero(img > 100)
        shifts.append(max(abs(ys.mean() - 16), abs(xs.mean() - 16)))
    assert max(shifts) <= 0.1 * 33 + 0.5
    assert np.mean(shifts) > 0.5  # and it does move


def test_flip_gives_the_image_or_its_mirror_both_seen():
    x = np.tile(np.arange(10, dtype=np.float32)[None, None, :, None], (64, 4, 1, 3))
    out = build_augment("hflip", seed=0)(x).numpy()
    same = [np.array_equal(o, x[0]) for o in out]
    mirror = [np.array_equal(o, x[0][:, ::-1]) for o in out]
    assert all(a or b for a, b in zip(same, mirror, strict=True))
    assert 10 < sum(mirror) < 54


@pytest.mark.parametrize("preset", ["default", "strong"])
def test_same_seed_same_augmented_epoch(preset: str):
    x = np.random.default_rng(0).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    y = np.arange(40, dtype=np.int32) % 2
    spec = PipelineSpec(16, 3, batch_size=20, deterministic=True)

    def epoch(seed: int) -> np.ndarray:
        ds = make_dataset(None, ["a", "b"], spec, True, build_augment(preset, seed=seed), seed, (x, y))
        return np.concatenate([b.numpy() for b, _ in ds])

    first, again, other = epoch(5), epoch(5), epoch(6)
    # equal up to float rounding (multi-threaded reductions may sum in another order on a loaded machine)
    assert np.allclose(first, again, atol=1e-2)
    assert np.abs(first - other).mean() > 5


def test_presets_table_names_every_field_of_the_old_layers():
    assert set(PRESETS) == {"none", "light", "flip", "hflip", "hflip-erase", "default", "strong"}
    assert (
        PRESETS["hflip-erase"].flip
        and PRESETS["hflip-erase"].erase == 0.5
        and not PRESETS["hflip-erase"].translate
    )
    assert PRESETS["default"].rotate == 0.05 and PRESETS["default"].fill == "reflect"
    assert PRESETS["strong"].erase > 0 and PRESETS["none"] == type(PRESETS["none"])("no augmentation")
    with pytest.raises(ValueError, match="resolve 'auto'"):
        build_augment("auto")


def test_each_epoch_draws_new_augmentations():
    x = np.random.default_rng(1).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    y = np.zeros(20, np.int32)
    spec = PipelineSpec(16, 3, batch_size=20, deterministic=True)
    ds = make_dataset(None, ["a"], spec, True, build_augment("default", seed=0), 0, (x, y))
    one, two = (np.concatenate([b.numpy() for b, _ in ds]) for _ in range(2))
    assert not np.array_equal(one, two)
