"""``imagerec benchmark``'s share of the machine's peak: FLOPs per image counted by TensorFlow's profiler."""

from __future__ import annotations

import math

import pytest

from imagerec.export.peak import gemm_peak, model_flops, peak_share


def test_flops_are_two_per_multiply_add_of_each_layer():
    import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)  # 8*8*4 outputs x 9 MACs
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)  # 8*8*4 outputs x 9 MACs
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, use_bias=False)(x)  # 256 x 3 MACs
    model = keras.Model(inputs, outputs)
    assert model_flops(model, 8, 1) == 2 * (8 * 8 * 4 * 9 + 8 * 8 * 4 * 9 + 256 * 3)


def test_share_is_flops_times_rate_over_peak():
    assert peak_share(1_000_000, 500.0, 1e9) == pytest.approx(0.5)
    assert peak_share(None, 500.0, 1e9) is None and peak_share(10, 0.0, 1e9) is None
    peak = gemm_peak(threads=1, size=256, repeats=2)
    assert math.isfinite(peak) and peak > 0
