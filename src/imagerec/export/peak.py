"""How far a runtime is from the machine's limit: the model's FLOPs per image over a measured GEMM peak.

``imagerec benchmark`` prints each runtime's share of the float32 peak at batch 1 and batch 64: FLOPs per image
(TensorFlow's graph profiler on the Keras model, the count every runtime of the run computes) times images per
second, over the FLOP/s of a float32 matrix product measured here on the same threads (OpenBLAS through NumPy, the
best of a few). A float32 runtime near 100% has nothing left to gain on this machine but fewer FLOPs; an int8 one
can pass 100% (its peak is higher), which is the point of quantizing.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def model_flops(model: Any, image_size: int, channels: int) -> int | None:
    """Floating-point operations of one image through ``model`` (2 per multiply-add), or None when TensorFlow's
    profiler cannot count the graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        spec = tf.TensorSpec([1, image_size, image_size, channels], tf.float32)
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        graph = convert_variables_to_constants_v2(concrete).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        total = tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops
    except Exception:  # noqa: BLE001 - the share is extra information; a model it cannot count goes without
        return None
    return int(total) or None


def gemm_peak(threads: int | None = None, size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``size x size`` matrix product on ``threads`` BLAS threads (None: the library's
    default), the best of ``repeats`` after one warm-up."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def peak_share(flops: int | None, images_per_second: float, peak: float) -> float | None:
    """The fraction of ``peak`` FLOP/s that ``images_per_second`` of ``flops`` each amounts to."""
    if not flops or not peak or images_per_second <= 0:
        return None
    return round(flops * images_per_second / peak, 4)
