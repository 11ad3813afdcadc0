"""End to end: ``imagerec export`` and ``imagerec benchmark`` on a copy of the session's trained run."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagefixtures import ALL_EXPORTS
from imagerec import Classifier
from imagerec.data.split import read_manifest, rows_for
from imagerec.utils import sha256_file


def test_export_then_benchmark_then_auto_runtime(run_copy, capsys, cli):
    assert (
        cli(["export", str(run_copy), "--format", "tflite", "--quantize", "dynamic", "--parity-images", "8"])
        == 0
    )
    out = capsys.readouterr().out
    assert "tflite dynamic" in out and "100.00%" in out
    record = json.loads((run_copy / "exports" / "tflite-dynamic" / "export.json").read_text())
    assert record["quantization"] == "dynamic" and record["parity"]["passed"]
    quick = json.loads((run_copy / "exports" / "runtime.json").read_text())
    assert quick["measured_by"] == "export" and set(quick["latency_p50_ms"]) == {"keras", "tflite-dynamic"}
    # a quantized export is never 'auto' unasked: keras answers, auto-quantized may take the export
    assert quick["runtime"] == "keras" and quick["like_keras"] == ["keras"]
    assert quick["quantized_runtime"] == min(quick["latency_p50_ms"], key=quick["latency_p50_ms"].get)

    _mislabel_one_test_image(run_copy)  # an accuracy below 100% that every runtime must report alike
    assert cli(["benchmark", str(run_copy), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "keras" in out and "tflite-dynamic" in out and "default runtime" in out
    bench = json.loads((run_copy / "exports" / "benchmark.json").read_text())
    names = {r["runtime"] for r in bench["runtimes"]}
    assert names == {"keras", "tflite-dynamic"}
    for row in bench["runtimes"]:  # timings vary: only their consistency is checked
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["throughput_b1"] > 0 and row["throughput_b8"] > 0 and row["throughput_b64"] > 0
        assert row["peak_rss_delta_mb"] >= 0
        # the share of the float32 peak: FLOPs per image x images/s over the measured GEMM FLOP/s
        assert row["peak_share_b64"] == pytest.approx(
            bench["flops_per_image"] * row["throughput_b64"] / (bench["gemm_peak_gflops"] * 1e9), rel=0.01
        )
        assert row["peak_share_b1"] > 0
    assert bench["flops_per_image"] > 0 and bench["gemm_peak_gflops"] > 0
    assert "MFLOPs per image" in out and "% peak" in out
    # sizes are the artifacts' own, accuracies what each runtime's predictions on the test split give
    rows = {r["runtime"]: r for r in bench["runtimes"]}
    assert rows["keras"]["size_bytes"] == (run_copy / "model.keras").stat().st_size
    assert (
        rows["tflite-dynamic"]["size_bytes"]
        == (run_copy / "exports/tflite-dynamic/model.tflite").stat().st_size
    )
    paths, truth = _test_split(run_copy)
    assert bench["split"] == "test" and bench["num_accuracy_images"] == len(paths) > 0
    for name, row in rows.items():
        predicted = [p.label for p in Classifier.load(run_copy, runtime=name).predict(paths)]
        assert row["accuracy"] == pytest.approx(np.mean(np.array(predicted) == truth), abs=1e-6), name
    assert rows["keras"]["accuracy"] < 1
    fastest = min(bench["runtimes"], key=lambda r: r["latency_p50_ms"])["runtime"]
    assert bench["fastest"] == fastest and bench["default"] == "keras"  # tflite-dynamic is quantized
    chosen = json.loads((run_copy / "exports" / "runtime.json").read_text())
    assert chosen["measured_by"] == "benchmark"  # the thorough measurement overrides the export's quick one
    assert Classifier.load(run_copy).runtime == chosen["runtime"] == "keras"
    assert (
        Classifier.load(run_copy, runtime="auto-quantized").runtime == chosen["quantized_runtime"] == fastest
    )

    # a benchmark that already measured what an export rewrites is kept
    assert cli(["export", str(run_copy), "-f", "tflite", "-q", "dynamic", "--parity-images", "8"]) == 0
    assert "measured by 'imagerec benchmark'" in capsys.readouterr().out
    assert json.loads((run_copy / "exports" / "runtime.json").read_text()) == chosen


@pytest.fixture(scope="module")
def cli_exported(trained_run: Path, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the trained run after ``imagerec export RUN --format all`` alone: (run, stdout)."""
    from imagerec.cli import main

    run = tmp_path_factory.mktemp("cli_exported") / "run"
    shutil.copytree(trained_run, run)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as info:
        main(["export", str(run), "--format", "all", "--parity-images", "30"])
    assert info.value.code in (0, None), stdout.getvalue()
    return run, stdout.getvalue()


def test_export_all_through_the_cli_records_the_fastest_runtime_for_auto(cli_exported):
    run, out = cli_exported
    assert {p.name for p in (run / "exports").iterdir() if p.is_dir()} == ALL_EXPORTS
    for name in (
        "savedmodel",
        "tflite float16",
        "tflite dynamic",
        "tflite int8",
        "onnx",
        "onnx int8",
        "openvino int8",
    ):
        assert name in out
    record = json.loads((run / "exports" / "runtime.json").read_text())
    latency = record["latency_p50_ms"]
    assert record["measured_by"] == "export" and set(latency) == ALL_EXPORTS | {"keras"}
    assert all(ms > 0 for ms in latency.values())
    exact = {"keras"} | {
        n
        for n in ALL_EXPORTS
        if json.loads((run / "exports" / n / "export.json").read_text())["parity"]["top1_agreement"] == 1
    }
    assert {"keras", "savedmodel", "tflite", "onnx", "openvino"} <= exact  # float32 exports answer like keras
    fastest = min((n for n in latency if n in exact and "-" not in n), key=latency.__getitem__)
    assert record["runtime"] == fastest and record["like_keras"] == sorted(n for n in exact if "-" not in n)
    assert record["quantized_runtime"] == min(latency, key=latency.__getitem__)
    assert f"default runtime (--runtime auto): {fastest}" in out
    clf = Classifier.load(run)  # runtime auto, right after the export: no benchmark has run
    assert clf.runtime == fastest
    if fastest != "keras":
        assert clf.model is None  # the export's runtime serves, not the Keras model


def _test_paths(run: Path, per_class: int = 2) -> list[str]:
    rows = rows_for(read_manifest(run / "manifest.csv"), "test")
    paths: list[str] = []
    for label in sorted({r.label for r in rows}):
        paths += [r.path for r in rows if r.label == label][:per_class]
    return paths


def _mislabel_one_test_image(run: Path) -> None:
    """File the run's first test image under another class in its manifest."""
    lines = (run / "manifest.csv").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.split(",")[2] == "test")
    path, label, split, sha = lines[i].split(",")
    lines[i] = ",".join([path, "red" if label != "red" else "blue", split, sha])
    (run / "manifest.csv").write_text("\n".join(lines) + "\n")


def _test_split(run: Path) -> tuple[list[str], np.ndarray]:
    """Every test image of the run's manifest and its true label."""
    rows = rows_for(read_manifest(run / "manifest.csv"), "test")
    return [r.path for r in rows], np.array([r.label for r in rows])


def _predict_labels(cli, capsys, run: Path, runtime: str, paths: list[str]) -> list[str]:
    code = cli(["predict", str(run), *paths, "--runtime", runtime, "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == paths
    return [r["label"] for r in rows]


@pytest.mark.parametrize("runtime", ["tflite", "onnx", "savedmodel"])
def test_predict_runtime_gives_the_keras_top1(cli_exported, cli, capsys, runtime):
    run, _ = cli_exported
    paths = _test_paths(run)
    assert len(paths) == 6
    keras = _predict_labels(cli, capsys, run, "keras", paths)
    assert _predict_labels(cli, capsys, run, runtime, paths) == keras


def test_export_json_has_preprocessing_and_source_run(cli_exported):
    run, _ = cli_exported
    config = json.loads((run / "config.json").read_text())
    for name in ALL_EXPORTS:
        record = json.loads((run / "exports" / name / "export.json").read_text())
        pre = record["preprocessing"]
        assert pre["image_size"] == config["image_size"] == 32 and pre["channels"] == config["channels"] == 3
        assert pre["resize"] == config.get("resize", "stretch") and "0..255" in pre["pixels"]
        assert "load_image" in pre["decode"]
        assert record["source_run"] == str(run.resolve())
        assert record["source_model_sha256"] == sha256_file(run / "model.keras")
        assert record["labels"] == ["blue", "green", "red"] and record["format"] == name.partition("-")[0]


def test_export_out_dir_through_the_cli(run_copy, tmp_path, cli, capsys):
    dest = tmp_path / "elsewhere" / "fmnist-tflite"
    assert (
        cli(["export", str(run_copy), "--format", "tflite", "--out", str(dest), "--parity-images", "8"]) == 0
    )
    out = capsys.readouterr().out
    assert "fmnist-tflite" in out and "default runtime" not in out
    assert {p.name for p in dest.iterdir()} >= {"model.tflite", "export.json", "labels.json", "config.json"}
    assert not (run_copy / "exports").exists()  # nothing in the run; runtime auto stays keras
    assert Classifier.load(run_copy).runtime == "keras"
    clf = Classifier.load(dest / "model.tflite")
    assert clf.runtime == "tflite"
    # the exported float32 model answers as the Keras model does, image by image, with the same probabilities
    paths, _ = _test_split(run_copy)
    keras = Classifier.load(run_copy, runtime="keras")
    got, want = clf.predict(paths, top_k=3), keras.predict(paths, top_k=3)
    assert [p.label for p in got] == [p.label for p in want]
    for g, w in zip(got, want, strict=True):
        assert dict(g.top_k) == pytest.approx(dict(w.top_k), abs=1e-4)
    parity = json.loads((dest / "export.json").read_text())["parity"]
    assert parity["num_images"] == 8 and parity["top1_agreement"] == 1.0 and parity["passed"]
    assert 0 <= parity["max_abs_prob_diff"] <= 1e-4


def _perturbed_export(original):
    """An ``export_artifact`` that exports a wrong model: the logits layer's classes rotated by one."""

    def export_artifact(model, spec, quantize, path, representative=None):
        import keras

        broken = keras.models.clone_model(model)
        broken.set_weights(model.get_weights())
        logits = broken.get_layer("logits")
        logits.set_weights([np.roll(w, 1, axis=-1) for w in logits.get_weights()])
        return original(broken, spec, quantize, path, representative)

    return export_artifact


def test_parity_failure_end_to_end_exits_2_and_publishes_nothing(run_copy, cli, capsys, monkeypatch):
    from imagerec.export import tflite

    monkeypatch.setattr(tflite, "export_artifact", _perturbed_export(tflite.export_artifact))
    code = cli(["export", str(run_copy), "--format", "tflite", "--parity-images", "30"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0, err
    assert err.startswith("imagerec: error: tflite export failed its parity check"), err
    assert "nothing was written to" in err and "Traceback" not in err
    exports = run_copy / "exports"
    assert not exports.exists() or not list(exports.iterdir())  # no export, no temp folder, no runtime.json
