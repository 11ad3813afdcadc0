"""The run directory contract: its layout (:class:`RunDir`) and the model files inside it."""

from imagerec.run.layout import FORMAT_VERSION, RunDir
from imagerec.run.model_file import (
    HASH_SUFFIX,
    MODEL_FILE,
    load_model_file,
    prescan_keras_file,
    save_model_file,
    verify_hash,
)

__all__ = [
    "FORMAT_VERSION",
    "HASH_SUFFIX",
    "MODEL_FILE",
    "RunDir",
    "load_model_file",
    "prescan_keras_file",
    "save_model_file",
    "verify_hash",
]
