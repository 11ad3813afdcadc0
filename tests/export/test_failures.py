"""A failing export is one line naming its format; with ``--format all`` the others still publish."""

from __future__ import annotations

import json

import pytest

from imagerec import Classifier
from imagerec.export.exporter import ExportFailures, export_records


def _crash(*_args, **_kwargs):
    raise ValueError(
        "Required inputs (['backbone_1/normalization_1/Sub/y:0']) are missing from input feed (['image']).\n"
        "second line of a long message"
    )


def test_format_all_publishes_the_others_then_exits_2_listing_the_failed(run_copy, cli, capsys, monkeypatch):
    from imagerec.export import onnx

    monkeypatch.setattr(onnx, "export_artifact", _crash)
    code = cli(["export", str(run_copy), "--format", "all", "--parity-images", "8"])
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("imagerec: error: onnx export failed: ValueError: Required inputs"), err
    assert "second line" not in err and "Traceback" not in err
    # the OpenVINO exports convert through the ONNX graph: they fail with it
    assert lines[-1] == (
        "imagerec: error: 4 of 9 exports failed (onnx, onnx-int8, openvino, openvino-int8); the other 5 were published"
    ), err
    published = {p.name for p in (run_copy / "exports").iterdir() if p.is_dir()}
    assert published == {"savedmodel", "tflite", "tflite-float16", "tflite-dynamic", "tflite-int8"}
    assert not list((run_copy / "exports").glob(".*")), "temporary folders left behind"
    assert "tflite int8" in out  # the table of what was published
    record = json.loads((run_copy / "exports" / "runtime.json").read_text())
    assert "onnx" not in record["latency_p50_ms"] and "tflite" in record["latency_p50_ms"]


def test_one_format_failing_is_one_line(run_copy, cli, capsys, monkeypatch):
    from imagerec.export import onnx

    monkeypatch.setattr(onnx, "export_artifact", _crash)
    assert cli(["export", str(run_copy), "--format", "onnx", "--parity-images", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("imagerec: error: onnx export failed: ValueError: "), err
    assert not (run_copy / "exports").exists() or not list((run_copy / "exports").iterdir())


def test_python_api_raises_export_failures_with_the_records(run_copy, monkeypatch):
    from imagerec.export import tflite

    original = tflite.export_artifact

    def int8_fails(model, spec, quantize, path, representative=None):
        if quantize == "int8":
            raise RuntimeError("calibration exploded")
        return original(model, spec, quantize, path, representative)

    monkeypatch.setattr(tflite, "export_artifact", int8_fails)
    with pytest.raises(ExportFailures) as info:
        export_records(Classifier.load(run_copy, runtime="keras"), "tflite", "int8", parity_images=8)
    assert info.value.failures == {
        "tflite-int8": "tflite-int8 export failed: RuntimeError: calibration exploded; nothing was published for it"
    }
    assert info.value.records == [] and str(info.value) == info.value.failures["tflite-int8"]
