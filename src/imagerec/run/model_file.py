"""imagerec's own ``.keras`` model files: atomic save with a sha256 manifest, pre-scan, hash check, safe load.

imagerec loads only the model files it wrote itself (RELIABILITY A1-A7): the archive is pre-scanned before Keras
reads a byte, hashed against its manifest, then loaded with Keras ``safe_mode``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from imagerec.errors import ModelFileError
from imagerec.utils import atomic_write_json, read_json, sha256_file

MODEL_FILE = "model.keras"
HASH_SUFFIX = ".sha256.json"

logger = logging.getLogger(__name__)


def save_model_file(model, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        # Crash-safe pair: the manifest names the new hash *and* the one being replaced before the model file
        # moves, so a kill -9 between the two renames leaves a model that still verifies (old or new).
        manifest = Path(str(path) + HASH_SUFFIX)
        record = {"file": path.name, "sha256": digest}
        previous = _manifest_hash(manifest) if path.exists() else None
        if previous and previous != digest:
            record["replacing"] = previous
        atomic_write_json(manifest, record)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if "replacing" in record:
        atomic_write_json(manifest, {"file": path.name, "sha256": digest})
    return digest


def _manifest_hash(manifest: Path) -> str | None:
    try:
        value = read_json(manifest)["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


# Model loading (RELIABILITY A1-A7) ------------------------------------------------------------------------
# imagerec loads only the .keras archives it writes itself: a zip of these members, Keras layers only.
_ALLOWED_MEMBERS = {"metadata.json", "config.json", "model.weights.h5", "assets"}
MAX_MODEL_MEMBERS = 16
MAX_CENTRAL_DIRECTORY = 64 << 10
MAX_MODEL_UNCOMPRESSED = 2 << 30
MAX_CONFIG_BYTES = 16 << 20
MAX_RATIO = 100  # Keras stores members uncompressed; deflate reaches ~1000x only on a bomb
_BANNED_CLASSES = {"Lambda", "TFSMLayer", "__lambda__", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"}
_BANNED_TEXT = ("enable_unsafe_deserialization", "safe_mode", "__import__", "marshal")
_ALLOWED_PACKAGES = ("keras",)


def _refuse(path: Path, why: str) -> ModelFileError:
    logger.warning("model file %s refused: %s", path, why)
    return ModelFileError(f"{str(path)!r}: {why}; imagerec loads only the .keras files it wrote itself")


def prescan_keras_file(path: Path) -> None:
    """Refuse a ``.keras`` archive that is not what imagerec writes, before Keras reads a byte of it.

    Checks, in order and each bounded in time and memory: the suffix (no ``.h5``, SavedModel, pickle), a
    regular non-empty file, the zip end record (member count, central directory size) *before* the central
    directory is parsed, each member (allow-listed name, no absolute/``..``/symlink, declared size and
    compression ratio caps, no duplicates), then the layer config (Keras modules only; no ``Lambda``,
    ``TFSMLayer``, lambdas, or any mention of unsafe deserialization).

    Raises:
        ModelFileError: the file is refused; the message says why.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise _refuse(
            path,
            f"format {path.suffix or '(no suffix)'} is not allowed (h5, SavedModel, pickle are never loaded)",
        )
    if path.is_symlink() or not path.is_file():
        raise _refuse(path, "not a regular file (a directory, symlink or missing)")
    size = path.stat().st_size
    if size == 0:
        raise _refuse(path, "empty file (0 bytes)")
    if size > MAX_MODEL_UNCOMPRESSED:
        raise _refuse(path, f"{size} bytes on disk (at most {MAX_MODEL_UNCOMPRESSED})")
    with open(path, "rb") as fh:
        try:
            endrec = zipfile._EndRecData(fh)  # the end record only: the central directory is not parsed yet
        except (OSError, struct.error):
            endrec = None
        if not endrec:
            raise _refuse(path, "not a zip archive")
        count, cd_size = endrec[zipfile._ECD_ENTRIES_TOTAL], endrec[zipfile._ECD_SIZE]
        if count > MAX_MODEL_MEMBERS or cd_size > MAX_CENTRAL_DIRECTORY:
            raise _refuse(
                path, f"{count} archive members / {cd_size}-byte directory (at most {MAX_MODEL_MEMBERS})"
            )
        try:
            with zipfile.ZipFile(fh) as zf:
                config = _scan_members(path, zf)
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            OSError,
            EOFError,
            struct.error,
            UnicodeError,
        ) as exc:
            raise _refuse(path, f"broken zip archive ({exc})") from None
    _scan_config(path, config)


def _scan_members(path: Path, zf: zipfile.ZipFile) -> Any:
    infos = zf.infolist()
    if len(infos) > MAX_MODEL_MEMBERS:
        raise _refuse(path, f"{len(infos)} archive members (at most {MAX_MODEL_MEMBERS})")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise _refuse(path, "duplicate archive members")
    total = 0
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ":" in name or ".." in parts or "\x00" in name:
            raise _refuse(path, f"unsafe archive member name {name!r}")
        if parts[0] not in _ALLOWED_MEMBERS:
            raise _refuse(path, f"unexpected archive member {name!r}")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise _refuse(path, f"symlink archive member {name!r}")
        if info.file_size > max(info.compress_size, 1) * MAX_RATIO and info.file_size > 1 << 20:
            ratio = info.file_size / max(info.compress_size, 1)
            raise _refuse(
                path, f"member {name!r} declares {info.file_size} bytes, {ratio:.0f}x its compressed size"
            )
        total += info.file_size
    if total > MAX_MODEL_UNCOMPRESSED:
        raise _refuse(path, f"archive expands to {total} bytes (at most {MAX_MODEL_UNCOMPRESSED})")
    try:
        info = zf.getinfo("config.json")
    except KeyError:
        raise _refuse(path, "archive has no config.json") from None
    if info.file_size > MAX_CONFIG_BYTES:
        raise _refuse(path, f"config.json is {info.file_size} bytes (at most {MAX_CONFIG_BYTES})")
    try:
        return json.loads(zf.read(info))
    except (ValueError, RecursionError):
        raise _refuse(path, "config.json is not valid JSON") from None


def _scan_config(path: Path, config: Any) -> None:
    """Walk the layer config: every object names a Keras module, none is a lambda or a foreign layer."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            cls = node.get("class_name")
            if cls in _BANNED_CLASSES:
                raise _refuse(path, f"model config uses {cls}, which can run arbitrary code")
            module = node.get("module")
            if "module" in node and module is not None:
                if not isinstance(module, str) or module.split(".", 1)[0] not in _ALLOWED_PACKAGES:
                    raise _refuse(
                        path, f"model config names module {module!r} (only keras modules are allowed)"
                    )
            registered = node.get("registered_name")
            if isinstance(registered, str) and ">" in registered and not registered.startswith("imagerec>"):
                raise _refuse(path, f"model config needs a custom object {registered!r}")
            stack.extend(node.values())
            stack.extend(node.keys())
        elif isinstance(node, str) and any(word in node for word in _BANNED_TEXT):
            raise _refuse(path, f"model config mentions {node[:60]!r}")


def verify_hash(path: Path, actual: str | None = None) -> str:
    """Compare ``path`` (or its already computed ``actual`` digest) with its sha256 manifest; return the hash.

    Raises:
        ModelFileError: the manifest is missing or unreadable, or the hashes differ (both are logged).
    """
    path = Path(path)
    manifest = Path(str(path) + HASH_SUFFIX)
    if not manifest.is_file():
        raise _refuse(path, f"hash manifest {manifest.name} is missing, so the file cannot be verified")
    try:
        record = read_json(manifest)
        expected = record["sha256"]
        replacing = record.get("replacing")  # present only while save_model_file swaps the file
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise _refuse(path, f"hash manifest {manifest.name} is unreadable") from None
    actual = actual or sha256_file(path)
    if isinstance(replacing, str) and hmac.compare_digest(actual, replacing.lower()):
        return actual
    if not isinstance(expected, str) or not hmac.compare_digest(actual, expected.lower()):
        logger.error("model file %s: sha256 expected %s, actual %s", path, expected, actual)
        raise _refuse(path, f"sha256 mismatch (expected {expected}, actual {actual})")
    return actual


def load_model_file(path: Path):
    """Load one of imagerec's own ``.keras`` files safely.

    The file is copied once into a private temporary folder (so that what is checked is what is loaded), hashed
    while copying and compared with its manifest, pre-scanned (:func:`prescan_keras_file`), then loaded by Keras
    with ``safe_mode=True``. The global unsafe-deserialization flag is checked before and after.

    Raises:
        ModelFileError: the file was refused; the message says why.
    """
    import keras

    path = Path(path)
    prescan_keras_file(path)  # cheap refusals first, on the original (suffix, symlink, zip shape)
    _assert_safe_mode_on()
    private = Path(tempfile.mkdtemp(prefix="imagerec-model-"))
    try:
        copy = private / MODEL_FILE
        digest = _copy_and_hash(path, copy)
        verify_hash(path, actual=digest)
        prescan_keras_file(copy)
        try:
            model = keras.saving.load_model(copy, compile=False, safe_mode=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types for a refused or broken file
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise _refuse(path, f"Keras refused the model: {first}") from None
        finally:
            _assert_safe_mode_on()
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return model


def _copy_and_hash(src: Path, dst: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while block := fin.read(chunk):
            digest.update(block)
            fout.write(block)
    return digest.hexdigest()


def _assert_safe_mode_on() -> None:
    """The global unsafe-deserialization flag must never be off around a load (a hostile file may flip it)."""
    from keras.src.saving import serialization_lib

    if serialization_lib.in_safe_mode() is False:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("safe_mode_saving", None)
        logger.error("keras unsafe deserialization was switched on; switched it off again")
        raise ModelFileError(
            "Keras unsafe deserialization was switched on in this process; refusing to load models "
            "(imagerec never calls keras.config.enable_unsafe_deserialization)"
        )
