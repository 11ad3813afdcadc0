"""Pick the ``tf.distribute`` strategy for a training run.

``auto``: MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster of more than one task, MirroredStrategy
for several local GPUs, the default strategy otherwise.
"""

from __future__ import annotations

import json
import os
from typing import Any

from imagerec.errors import ImagerecError

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


def read_tf_config() -> dict[str, Any] | None:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        cluster = cfg["cluster"]
        task = cfg["task"]
        if not isinstance(cluster, dict) or "type" not in task or "index" not in task:
            raise KeyError("task")
    except (ValueError, KeyError, TypeError) as exc:
        raise ImagerecError(f"TF_CONFIG is malformed ({exc}); expected {{'cluster': {{...}}, 'task': {{'type', 'index'}}}}") from None
    return cfg


def get_strategy(name: str = "auto"):
    """Return ``(strategy, info)`` where ``info`` records what was chosen and why."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ImagerecError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    tf_config = read_tf_config()
    workers = sum(len(v) for v in tf_config["cluster"].values()) if tf_config else 1
    gpus = len(tf.config.list_physical_devices("GPU"))
    if name == "multiworker" or (name == "auto" and workers > 1):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        chosen = "multiworker"
    elif name == "mirrored" or (name == "auto" and gpus > 1):
        strategy = tf.distribute.MirroredStrategy()
        chosen = "mirrored"
    else:
        strategy = tf.distribute.get_strategy()
        chosen = "default"
    info = {"name": chosen, "replicas": int(strategy.num_replicas_in_sync), "workers": workers, "gpus": gpus}
    if tf_config:
        info["task"] = tf_config["task"]
    return strategy, info
