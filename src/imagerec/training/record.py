"""What a run records about itself beside the model: the library versions, and the :class:`Run` handle."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imagerec.run import RunDir


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
