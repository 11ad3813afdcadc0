"""The root ``tests/conftest.py`` helpers, imported by file path.

``from conftest import ...`` is ambiguous once pytest has imported another folder's ``conftest.py`` (for example
``tests/data/conftest.py``) under the same top-level name, so the security tests load the root one explicitly.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "imagerec_tests_root_conftest"


def _root_conftest():
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).resolve().parents[1] / "conftest.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


COLOURS = _root_conftest().COLOURS
make_image = _root_conftest().make_image
write_colour_dataset = _root_conftest().write_colour_dataset
