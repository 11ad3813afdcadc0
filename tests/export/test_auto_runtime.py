"""Runtime ``auto`` never trades accuracy for speed unasked, and ``predict`` says which runtime answered."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.export.benchmark import write_default_runtime
from imagerec.runtime.exported import answers_like_keras


def _paths(run: Path) -> list[str]:
    return [r.path for r in rows_for(read_manifest(run / "manifest.csv"), "test")][:3]


@pytest.fixture(scope="module")
def dynamic_run(trained_run: Path, tmp_path_factory) -> Path:
    """A copy of the trained run with a tflite-dynamic export (quantized) and a float tflite export."""
    import shutil

    from imagerec.export.exporter import export_records

    run = tmp_path_factory.mktemp("auto") / "run"
    shutil.copytree(trained_run, run)
    clf = Classifier.load(run, runtime="keras")
    export_records(clf, "tflite", "dynamic", parity_images=8)
    export_records(clf, "tflite", None, parity_images=8)
    return run


def _record(run: Path, name: str) -> dict:
    return json.loads((run / "exports" / name / "export.json").read_text())


def test_answers_like_keras_needs_no_quantization_and_full_agreement(dynamic_run):
    assert not answers_like_keras(_record(dynamic_run, "tflite-dynamic"))
    float_record = _record(dynamic_run, "tflite")
    assert answers_like_keras(float_record)
    assert not answers_like_keras(
        {**float_record, "parity": {**float_record["parity"], "top1_agreement": 0.995}}
    )


def test_auto_skips_a_faster_quantized_export_unless_asked(dynamic_run):
    # as if tflite-dynamic had measured fastest (the issue: accuracy 0.978 vs keras 0.983, answered silently)
    latency = {"tflite-dynamic": 0.1, "keras": 0.5, "tflite": 0.3}
    assert write_default_runtime(dynamic_run, latency, "export", {"tflite"}) == "tflite"
    record = json.loads((dynamic_run / "exports" / "runtime.json").read_text())
    assert record["runtime"] == "tflite" and record["quantized_runtime"] == "tflite-dynamic"
    assert Classifier.load(dynamic_run).runtime == "tflite"
    assert Classifier.load(dynamic_run, runtime="auto-quantized").runtime == "tflite-dynamic"

    write_default_runtime(dynamic_run, {"tflite-dynamic": 0.1, "keras": 0.5}, "export", set())
    assert Classifier.load(dynamic_run).runtime == "keras"


def test_a_runtime_json_from_before_the_rule_does_not_pick_a_quantized_export(dynamic_run):
    (dynamic_run / "exports" / "runtime.json").write_text(
        json.dumps({"runtime": "tflite-dynamic", "measured_by": "export", "latency_p50_ms": {}})
    )
    assert Classifier.load(dynamic_run).runtime == "keras"
    assert Classifier.load(dynamic_run, runtime="auto-quantized").runtime == "tflite-dynamic"


def _predict(cli, capsys, run: Path, *extra: str) -> tuple[str, str]:
    code = cli(["predict", str(run), *_paths(run), *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_predict_names_the_runtime_that_answered(dynamic_run, cli, capsys):
    write_default_runtime(
        dynamic_run, {"tflite-dynamic": 0.1, "keras": 0.5, "tflite": 0.3}, "export", {"tflite"}
    )
    out, _ = _predict(cli, capsys, dynamic_run, "--format", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and {r["runtime"] for r in rows} == {"tflite"}
    assert list(rows[0])[:2] == ["path", "label"]  # the fields before stay where they were

    out, _ = _predict(cli, capsys, dynamic_run, "--format", "json", "--runtime", "auto-quantized")
    assert {json.loads(line)["runtime"] for line in out.splitlines()} == {"tflite-dynamic"}

    out, err = _predict(cli, capsys, dynamic_run, "--format", "csv")
    assert len(list(csv.reader(io.StringIO(out)))) == 4  # header + 3 rows, nothing else on stdout
    assert "imagerec: answered by runtime tflite (--runtime auto)" in err

    out, _ = _predict(cli, capsys, dynamic_run, "--runtime", "keras")
    assert "answered by runtime keras" in out and "(--runtime" not in out


def test_a_bf16_runs_float32_export_is_checked_against_its_float32_twin(trained_run: Path, tmp_path: Path):
    """A mixed_bfloat16 run (the default on CPUs with bf16 units) exports its float32 twin; parity compares the
    export with that twin, not with the bf16 Keras runtime (which rounds every layer), so an exact float32 export
    answers like Keras and ``auto`` may pick it."""
    import keras

    import imagerec
    from imagerec.export.exporter import export_records

    before = keras.mixed_precision.global_policy().name
    run = imagerec.train(
        str(trained_run.parent / "data"), out=tmp_path / "run", epochs=2, batch_size=16, seed=0,
        mixed_precision="bf16", log=lambda *_: None,
    )  # fmt: skip
    assert keras.mixed_precision.global_policy().name == before  # the caller's models stay in their precision
    clf = Classifier.load(run.path, runtime="keras")
    assert any("bfloat16" in str(layer.dtype_policy) for layer in clf.model.layers)  # Keras computes in bf16
    export_records(clf, "tflite", None, parity_images=27)
    parity = _record(run.path, "tflite")["parity"]
    assert parity["max_abs_prob_diff"] < 1e-4, parity  # float32 vs float32: bf16 rounding would be ~1e-2
    assert answers_like_keras(_record(run.path, "tflite"))
