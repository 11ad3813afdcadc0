"""Export a trained run to SavedModel, LiteRT or ONNX with a parity check: ``exporter.py`` (export_run,
export_records), ``formats.py`` (THE table of formats), one module per format (``savedmodel``, ``tflite``,
``onnx``: the converter and its ``Runtime``), ``parity.py``, ``publish.py`` (where an export goes) and
``benchmark.py``.

This ``__init__`` imports nothing: :mod:`imagerec.runtime` reads the format table and the formats' runtimes, and
importing those must not run the exporter (which itself uses the runtimes for parity).
"""
