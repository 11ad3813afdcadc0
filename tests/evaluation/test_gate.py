"""``imagerec compare OLD NEW --gate``: passes an equal or better model, fails a damaged one naming the class, on
the same images for both runs; exit codes 0 / 1 / 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagefixtures import run_cli
from imagerec.data.split import read_manifest, rows_for
from imagerec.run import RunDir


def damage(run_path: Path, out: Path) -> Path:
    """A copy of the run at ``out`` whose ``logits`` never pick 'red' (its column zeroed, its bias very low)."""
    shutil.copytree(run_path, out)
    run = RunDir(out)
    model = run.load_model()
    red = run.read_labels().index("red")
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[:, red], bias[red] = 0.0, -100.0
    model.get_layer("logits").set_weights([kernel, bias])
    run.save_model(model)
    return out


@pytest.fixture(scope="module")
def damaged_run(trained_run, tmp_path_factory) -> Path:
    return damage(trained_run, tmp_path_factory.mktemp("damaged") / "run")


def test_gate_passes_an_equal_model(trained_run, capsys):
    code, out, _ = run_cli(capsys, "compare", str(trained_run), str(trained_run), "--gate")
    assert code == 0 and "gate passed" in out


def test_gate_fails_a_damaged_model_naming_the_class(trained_run, damaged_run, capsys):
    code, out, _ = run_cli(capsys, "compare", str(trained_run), str(damaged_run), "--gate")
    assert code == 1, out
    lines = out.strip().splitlines()
    assert any("class 'red' recall" in line for line in lines), out
    assert not any("'green'" in line and "recall" in line for line in lines), out
    assert lines[-1].startswith("gate failed:")
    # the other way round NEW is better: it passes
    code, out, _ = run_cli(capsys, "compare", str(damaged_run), str(trained_run), "--gate")
    assert code == 0 and "gate passed" in out


def test_gate_on_a_dataset_and_on_olds_test_images(trained_run, damaged_run):
    from imagerec.classifier import Classifier
    from imagerec.evaluation.gate import gate_runs

    old, bad = Classifier.load(trained_run, runtime="keras"), Classifier.load(damaged_run, runtime="keras")
    result = gate_runs(old, bad, data=str(trained_run.parent / "data"))
    assert not result.passed and result.num_images == 90
    result = gate_runs(old, old)
    assert result.passed
    assert result.num_images == len(rows_for(read_manifest(RunDir(trained_run).manifest), "test"))
    assert result.old == result.new


def test_gate_refuses_bad_input(trained_run, capsys):
    code, out, err = run_cli(
        capsys, "compare", str(trained_run), str(trained_run), "--gate", "--tolerance", "2"
    )
    assert code == 2 and "tolerance" in out + err
    code, out, err = run_cli(
        capsys, "compare", str(trained_run), str(trained_run), str(trained_run), "--gate"
    )
    assert code == 2 and "two runs" in out + err
    code, out, err = run_cli(
        capsys, "compare", str(trained_run), str(trained_run), "--data", str(trained_run)
    )
    assert code == 2 and "--gate only" in out + err


def test_gate_on_multilabel_runs(multilabel_run, tmp_path, capsys):
    bad = damage(multilabel_run, tmp_path / "bad")
    code, out, _ = run_cli(capsys, "compare", str(multilabel_run), str(multilabel_run), "--gate")
    assert code == 0 and "gate passed" in out and "mAP" in out
    code, out, _ = run_cli(capsys, "compare", str(multilabel_run), str(bad), "--gate")
    assert code == 1 and "class 'red' recall" in out, out


def test_gate_refuses_runs_of_two_tasks(trained_run, multilabel_run, capsys):
    code, out, err = run_cli(capsys, "compare", str(trained_run), str(multilabel_run), "--gate")
    assert code == 2 and "one task" in out + err


def test_a_class_may_slip_within_its_sampling_noise_and_no_further():
    """Per class, the bar is the tolerance or twice the figure's standard error over that class's images."""
    from imagerec.evaluation.gate import class_tolerance

    assert class_tolerance(0.8, 1000, 0.01) == pytest.approx(2 * (0.8 * 0.2 / 1000) ** 0.5)  # 0.0253 > 0.01
    assert class_tolerance(0.999, 10_000, 0.01) == 0.01  # a near-perfect class over many images: the tolerance
    assert class_tolerance(0.5, 30, 0.01) > 0.18  # 30 images say little about one class
    assert class_tolerance(0.9, 0, 0.01) > 0.5  # no support: never a reason to fail (and no division by zero)
