"""What a run records about itself beside the model: config.json (with the library versions), labels.json, the
split manifest, and the :class:`Run` handle."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.data.split import write_manifest
from imagerec.run import FORMAT_VERSION, RunDir


@dataclass
class Run:
    """A finished (or resumable) training run."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.path)

    @classmethod
    def load(cls, path) -> Run:
        """The finished run at ``path`` (its config.json and metrics.json)."""
        from imagerec.utils import read_json

        run = RunDir(path)
        return cls(run.path, run.read_config(), read_json(run.metrics))


def library_versions() -> dict[str, str]:
    """The versions a run records in config.json."""
    import keras
    import PIL
    import sklearn
    import tensorflow as tf

    from imagerec.version import __version__

    return {
        "imagerec": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "scikit-learn": sklearn.__version__,
    }


def write_run_record(learner) -> dict[str, Any]:
    """Write the split manifest (a new run only), labels.json and config.json of a built ``Learner``; return the
    config record."""
    lr, run, d = learner, learner.run, learner.config.data
    previous = lr.previous or {}
    run.path.mkdir(parents=True, exist_ok=True)
    fingerprint = previous.get("data_fingerprint") if lr.previous else write_manifest(lr.rows, run.manifest)
    run.write_json("labels.json", lr.class_names)
    record = {
        "format_version": FORMAT_VERSION,
        "config": lr.config.to_dict(),
        "class_names": lr.class_names,
        "num_classes": len(lr.class_names),
        "task": lr.config.model.task,  # multiclass | multilabel (sigmoid head, RUN/thresholds.json)
        "image_size": d.image_size,
        "channels": d.channels,
        "resize": d.resize,
        "input": {"shape": [d.image_size, d.image_size, d.channels], "dtype": "float32", "range": "0..255"},
        "source": {"data": str(lr.data), "root": str(lr.source.root), "kind": lr.source.kind},
        "data_fingerprint": fingerprint,
        "seed": lr.config.train.seed,
        "versions": library_versions(),
        "model": {
            "name": lr.config.model.name,
            "params": int(lr.model.count_params()),
            "flops_per_image": lr.flops,
        },
        "precision": lr.policy,
        "strategy": lr.strategy_info,
        "resumed_changes": previous.get("resumed_changes", []) + lr.changed,
    }
    run.write_json("config.json", record)
    return record
