"""imagerec: image recognition with TensorFlow/Keras, end to end.

Example:
    >>> import imagerec
    >>> run = imagerec.train("builtin:fashion-mnist", out="runs/fmnist")
    >>> clf = imagerec.Classifier.load("runs/fmnist")
    >>> clf.predict("shoe.png")[0].label
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter is not ours to print

from imagerec.quiet import quiet_tensorflow
from imagerec.version import __version__

quiet_tensorflow()  # only where the CLI asked for it (IMAGEREC_TF_QUIET=1, inherited by its worker processes)

__all__ = ["Classifier", "train", "evaluate", "scan_dataset", "__version__"]


def __getattr__(name: str):
    # Lazy: importing imagerec loads no TensorFlow, no model, starts no thread.
    if name == "Classifier":
        from imagerec.classifier import Classifier

        return Classifier
    if name == "train":
        from imagerec.training.trainer import train

        return train
    if name == "evaluate":
        from imagerec.classifier import evaluate

        return evaluate
    if name == "scan_dataset":
        from imagerec.data.scan import scan_dataset

        return scan_dataset
    raise AttributeError(f"module 'imagerec' has no attribute {name!r}")
