"""The run directory: the only place that knows its file names.

```
RUN/
  model.keras          best model (atomic write) + model.keras.sha256.json (hash manifest, checked at load)
  labels.json          class names, in output order
  config.json          every resolved setting, library versions, seed, data fingerprint
  manifest.csv         the split (path, label, split, sha256)
  history.csv          one row per epoch (CSVLogger)
  metrics.json         final validation and test metrics
  thresholds.json      a multi-label run's per-class thresholds (tuned on val)
  drift.json           the validation answers' statistics live traffic is compared with (drift gauges)
  train.log            what was printed
  logs/                TensorBoard
  backup/              resumable state (AtomicBackupAndRestore)
  evaluation/          written by `imagerec evaluate`
  exports/             written by `imagerec export`
```
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagerec.errors import RunError
from imagerec.run.model_file import MODEL_FILE, load_model_file, save_model_file
from imagerec.utils import atomic_write_json, read_json

FORMAT_VERSION = 1
#: a multi-label run's threshold of a class its thresholds.json does not list (or without thresholds.json)
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    # file names -------------------------------------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def labels(self) -> Path:
        return self.path / "labels.json"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.csv"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.path / "logs"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation"

    @property
    def exports(self) -> Path:
        return self.path / "exports"

    @property
    def calibration(self) -> Path:
        return self.path / "calibration.json"

    @property
    def thresholds(self) -> Path:
        """A multi-label run's per-class thresholds, tuned on validation (``imagerec.multilabel``)."""
        return self.path / "thresholds.json"

    @property
    def reference(self) -> Path:
        """The training embeddings' reference of the out-of-distribution score (``imagerec.openworld``)."""
        return self.path / "reference.npz"

    @property
    def drift_baseline(self) -> Path:
        """What live answers are compared with for drift: the validation answers' statistics
        (``imagerec.monitoring.drift``; written by training and ``imagerec calibrate``)."""
        return self.path / "drift.json"

    # state ------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config.exists() or self.model.exists() or self.backup.exists()

    def require(self, *names: str) -> RunDir:
        """Raise :class:`RunError` unless this is a complete run (model, labels, config, plus ``names``)."""
        if not self.path.is_dir():
            raise RunError(
                f"run directory {str(self.path)!r} does not exist; train one with 'imagerec train'"
            )
        if not self.exists():
            raise RunError(self._not_a_run())
        for name in (MODEL_FILE, "labels.json", "config.json", *names):
            if not (self.path / name).exists():
                raise RunError(
                    f"run {str(self.path)!r} is incomplete: {name} is missing (was training finished?)"
                )
        version = self.read_config().get("format_version")
        if version != FORMAT_VERSION:
            raise RunError(
                f"run {str(self.path)!r} was written by another imagerec version (format {version!r}, "
                f"expected {FORMAT_VERSION}); retrain it with this version"
            )
        return self

    def _not_a_run(self) -> str:
        """What to say for a folder that holds no run at all (a dataset folder is the usual mistake)."""
        from imagerec.data.images import IMAGE_EXTENSIONS

        near = itertools.islice(self.path.rglob("*"), 500)  # a dataset shows images within a few entries
        has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in near)
        what = (
            "a folder of images (a dataset?)" if has_images else "a folder without model.keras or config.json"
        )
        return (
            f"{str(self.path)!r} is not a run directory: it is {what}; a run is the folder that "
            "'imagerec train DATA --out RUN' writes (model.keras, labels.json, config.json, metrics.json...); "
            "pass that folder instead"
        )

    def model_sha256(self) -> str | None:
        """The sha256 of ``model.keras`` as its manifest records it (None when there is none)."""
        try:
            value = read_json(self.path / (MODEL_FILE + ".sha256.json"))["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return value if isinstance(value, str) else None

    def read_config(self) -> dict[str, Any]:
        try:
            return read_json(self.config)
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot read {str(self.config)!r}: {exc}") from None

    def read_labels(self) -> list[str]:
        try:
            labels = read_json(self.labels)
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot read {str(self.labels)!r}: {exc}") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
            raise RunError(f"{str(self.labels)!r} must be a JSON list of at least two class names")
        return labels

    def read_thresholds(self, labels: list[str]) -> list[float]:
        """A multi-label run's per-class thresholds in ``labels`` order (``DEFAULT_THRESHOLD`` where none)."""
        table = (read_json(self.thresholds).get("thresholds") or {}) if self.thresholds.exists() else {}
        return [float(table.get(name, DEFAULT_THRESHOLD)) for name in labels]

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path / name
        atomic_write_json(path, obj)
        return path

    def clear(self) -> None:
        """Remove a previous run's files (``--force``)."""
        if self.path.exists():
            shutil.rmtree(self.path)

    # the model --------------------------------------------------------------------------------------------
    def save_model(self, model) -> str:
        """Save ``model`` atomically and write its sha256 manifest; return the hash."""
        return save_model_file(model, self.model)

    def load_model(self):
        return load_model_file(self.model)
