"""The run directory: the only place that knows its file names.

```
RUN/
  model.keras          best model (atomic write) + model.keras.sha256.json (hash manifest, checked at load)
  labels.json          class names, in output order
  config.json          every resolved setting, library versions, seed, data fingerprint
  manifest.csv         the split (path, label, split, sha256)
  history.csv          one row per epoch (CSVLogger)
  metrics.json         final validation and test metrics
  train.log            what was printed
  logs/                TensorBoard
  backup/              resumable state (AtomicBackupAndRestore)
  evaluation/          written by `imagerec evaluate`
  exports/             written by `imagerec export`
```
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagerec.errors import ModelFileError, RunError
from imagerec.utils import atomic_write_json, read_json, sha256_file

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
HASH_SUFFIX = ".sha256.json"


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

    # state ------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config.exists() or self.model.exists() or self.backup.exists()

    def require(self, *names: str) -> RunDir:
        """Raise :class:`RunError` unless this is a complete run (model, labels, config, plus ``names``)."""
        if not self.path.is_dir():
            raise RunError(f"run directory {str(self.path)!r} does not exist; train one with 'imagerec train'")
        for name in (MODEL_FILE, "labels.json", "config.json", *names):
            if not (self.path / name).exists():
                raise RunError(f"run {str(self.path)!r} is incomplete: {name} is missing (was training finished?)")
        version = self.read_config().get("format_version")
        if version != FORMAT_VERSION:
            raise RunError(
                f"run {str(self.path)!r} was written by another imagerec version (format {version!r}, "
                f"expected {FORMAT_VERSION}); retrain it with this version"
            )
        return self

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


def save_model_file(model, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(Path(str(path) + HASH_SUFFIX), {"file": path.name, "sha256": digest})
    return digest


# Members a Keras 3 .keras archive written by imagerec may hold.
_ALLOWED_MEMBERS = {"metadata.json", "config.json", "model.weights.h5", "assets"}
MAX_MODEL_MEMBERS = 16
MAX_MODEL_UNCOMPRESSED = 2 << 30
MAX_RATIO = 200


def prescan_keras_file(path: Path) -> None:
    """Refuse a ``.keras`` archive that is not what imagerec writes, before Keras reads a byte of it."""
    if path.suffix != ".keras":
        raise ModelFileError(f"{str(path)!r}: only imagerec's own .keras files are loaded (got {path.suffix or 'no suffix'})")
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelFileError(f"{str(path)!r}: missing or empty model file")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{str(path)!r}: not a .keras (zip) archive")
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MODEL_MEMBERS:
            raise ModelFileError(f"{str(path)!r}: {len(infos)} archive members (at most {MAX_MODEL_MEMBERS})")
        total = 0
        for info in infos:
            name = info.filename
            top = name.split("/", 1)[0]
            if name.startswith("/") or ".." in name.split("/") or "\\" in name or top not in _ALLOWED_MEMBERS:
                raise ModelFileError(f"{str(path)!r}: unexpected archive member {name!r}")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise ModelFileError(f"{str(path)!r}: symlink member {name!r}")
            if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_RATIO and info.file_size > 1 << 20:
                raise ModelFileError(f"{str(path)!r}: member {name!r} expands {info.file_size / info.compress_size:.0f}x")
            total += info.file_size
        if total > MAX_MODEL_UNCOMPRESSED:
            raise ModelFileError(f"{str(path)!r}: archive expands to {total} bytes")
        try:
            config = json.loads(zf.read("config.json"))
        except (KeyError, ValueError):
            raise ModelFileError(f"{str(path)!r}: archive has no readable config.json") from None
    text = json.dumps(config)
    for banned in ('"Lambda"', '"TFSMLayer"', "enable_unsafe_deserialization", "safe_mode"):
        if banned in text:
            raise ModelFileError(f"{str(path)!r}: model config uses {banned.strip(chr(34))}, which imagerec never loads")


def verify_hash(path: Path) -> str:
    manifest = Path(str(path) + HASH_SUFFIX)
    if not manifest.exists():
        raise ModelFileError(f"{str(path)!r}: hash manifest {manifest.name} is missing; refusing to load")
    try:
        expected = read_json(manifest)["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelFileError(f"{str(manifest)!r}: unreadable hash manifest") from None
    actual = sha256_file(path)
    if actual != expected:
        raise ModelFileError(f"{str(path)!r}: sha256 mismatch (expected {expected}, actual {actual}); refusing to load")
    return actual


def load_model_file(path: Path):
    """Load one of imagerec's own ``.keras`` files: pre-scan, hash check, then Keras with ``safe_mode=True``."""
    import keras

    path = Path(path)
    prescan_keras_file(path)
    verify_hash(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a refused or broken file
        raise ModelFileError(f"{str(path)!r}: Keras refused the model: {str(exc).splitlines()[0][:300]}") from None
    finally:
        _assert_safe_mode_on()
    return model


def _assert_safe_mode_on() -> None:
    """The global unsafe-deserialization flag must still be off after any load (a hostile file may flip it)."""
    from keras.src.saving import serialization_lib

    if serialization_lib.in_safe_mode() is False:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("safe_mode_saving", None)
        raise ModelFileError("unsafe deserialization was switched on during a model load; refusing the model")
