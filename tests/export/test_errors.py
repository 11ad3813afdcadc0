"""Bad input to export and to loading exported artifacts: one readable line, exit code 2, nothing published."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imagerec import Classifier
from imagerec.errors import ImagerecError
from imagerec.export.parity import parity


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    from imagerec.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("imagerec: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_export_run_that_does_not_exist(tmp_path, capsys):
    _one_line_error(capsys, ["export", str(tmp_path / "nope"), "--format", "tflite"], "does not exist")


def test_unknown_format_and_quantization(trained_run, capsys):
    _one_line_error(
        capsys, ["export", str(trained_run), "--format", "caffe"], "unknown export format 'caffe'", "tflite"
    )
    _one_line_error(
        capsys, ["export", str(trained_run), "--format", "onnx", "--quantize", "float16"], "does not support"
    )
    _one_line_error(capsys, ["export", str(trained_run), "--quantize", "int4"], "unknown quantization 'int4'")


def _rewrite_manifest(run: Path, keep) -> None:
    path = run / "manifest.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split", "sha256"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(keep(r) for r in rows if keep(r) is not None)


def test_int8_without_training_rows(run_copy, capsys):
    _rewrite_manifest(run_copy, lambda r: None if r["split"] == "train" else r)
    _one_line_error(
        capsys, ["export", str(run_copy), "--quantize", "int8"], "int8 quantization needs training images"
    )
    assert not (run_copy / "exports" / "tflite-int8").exists()


def test_int8_with_training_files_moved(run_copy, tmp_path, capsys):
    _rewrite_manifest(
        run_copy,
        lambda r: (
            {**r, "path": str(tmp_path / "moved" / Path(r["path"]).name)} if r["split"] == "train" else r
        ),
    )
    _one_line_error(
        capsys, ["export", str(run_copy), "--quantize", "int8"], "no train row", "--quantize dynamic"
    )


def test_no_test_images_to_check_parity(run_copy, capsys):
    _rewrite_manifest(run_copy, lambda r: r if r["split"] == "train" else None)
    _one_line_error(capsys, ["export", str(run_copy), "--format", "onnx"], "no readable test or val images")


def test_parity_check_fails_on_disagreeing_probabilities():
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(3), 100)
    candidate = reference.copy()
    decisive = np.flatnonzero(np.sort(reference, 1)[:, -1] - np.sort(reference, 1)[:, 0] > 0.2)[:2]
    for i in decisive:  # 2 of 100 images get another, clearly worse, top-1 class: 98% agreement
        top, low = reference[i].argmax(), reference[i].argmin()
        candidate[i, [top, low]] = candidate[i, [low, top]]
    result = parity(reference, candidate, "none", "test")
    assert (
        result["top1_agreement"] == 0.98 and result["near_ties"] == 0 and not result["passed"]
    )  # float: 99%
    assert parity(reference, candidate, "int8", "test")["passed"]  # int8 needs 97%
    tie = np.array([[0.50, 0.49, 0.01]])
    flipped = parity(tie, tie[:, [1, 0, 2]], "none", "test")  # a near-tie flip is not a broken export
    assert flipped["top1_agreement"] == 0.0 and flipped["near_ties"] == 1 and flipped["passed"]
    same = parity(reference, reference, "none", "test")
    assert same["passed"] and same["max_abs_prob_diff"] == 0.0


@pytest.fixture
def onnx_export(trained_run, tmp_path) -> Path:
    from imagerec.export.exporter import export_run

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return export_run(Classifier.load(run, runtime="keras"), "onnx", parity_images=8)


def test_artifact_with_missing_labels(onnx_export, capsys):
    (onnx_export / "labels.json").unlink()
    with pytest.raises(ImagerecError, match="labels.json is missing"):
        Classifier.load(onnx_export / "model.onnx")
    _one_line_error(
        capsys,
        ["benchmark", str(onnx_export.parent.parent), "--runtime", "onnx", "--rounds", "1"],
        "labels.json is missing",
    )


def test_artifact_whose_hash_does_not_match(onnx_export, capsys):
    with (onnx_export / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ImagerecError, match="sha256 mismatch"):
        Classifier.load(onnx_export / "model.onnx")
    with pytest.raises(ImagerecError, match="sha256 mismatch"):
        Classifier.load(onnx_export.parent.parent, runtime="onnx")
    _one_line_error(
        capsys,
        ["benchmark", str(onnx_export.parent.parent), "--runtime", "onnx", "--rounds", "1"],
        "sha256 mismatch",
    )


def test_export_json_missing_or_labels_edited(onnx_export):
    labels = json.loads((onnx_export / "labels.json").read_text())
    (onnx_export / "labels.json").write_text(json.dumps(labels[::-1]))
    with pytest.raises(ImagerecError, match="does not match the labels in export.json"):
        Classifier.load(onnx_export / "model.onnx")
    (onnx_export / "export.json").unlink()
    with pytest.raises(ImagerecError, match="export.json is missing"):
        Classifier.load(onnx_export / "model.onnx")


def test_runtime_without_export_and_unknown_runtime(trained_run):
    with pytest.raises(ImagerecError, match="has no 'tflite' export"):
        Classifier.load(trained_run, runtime="tflite")
    with pytest.raises(ImagerecError, match="unknown runtime 'tensorrt'"):
        Classifier.load(trained_run, runtime="tensorrt")
    assert Classifier.load(trained_run).runtime == "keras"  # auto with no benchmark record
