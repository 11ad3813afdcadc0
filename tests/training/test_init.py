"""``imagerec train DATA [MORE_DATA...] --init RUN``: fine-tuning starts from the source run's weights, classes are
mapped by name, new classes get fresh rows of ``logits``, several datasets merge, ``init_from`` is recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagefixtures import make_image, run_cli
from imagerec.errors import RunError
from imagerec.run import RunDir
from imagerec.settings import RunConfig
from imagerec.training.init import InitLearner, inherit, source_config

AQUA = (40, 200, 200)  # a new class whose name sorts first: every old class moves one column


def write_class(root: Path, name: str, colour, n: int = 30, seed: int = 5) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / name).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(make_image(colour, rng)).save(root / name / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def more_data(tmp_path_factory) -> Path:
    return write_class(tmp_path_factory.mktemp("more") / "data", "aqua", AQUA)


@pytest.fixture(scope="module")
def init_run(trained_run, more_data, tmp_path_factory) -> Path:
    """The session's run fine-tuned on its own data plus the new class, through the CLI."""
    from imagerec.cli import main

    out = tmp_path_factory.mktemp("init") / "run"
    try:
        main(["train", str(trained_run.parent / "data"), str(more_data), "--init", str(trained_run),
              "--out", str(out), "--epochs", "3", "--seed", "0", "--mixed-precision", "off"])  # fmt: skip
    except SystemExit as exc:
        assert not exc.code, exc
    return out


def test_weights_start_from_the_source_and_classes_map_by_name(trained_run, more_data):
    source = RunDir(trained_run)
    config = inherit(RunConfig(), source_config(source), {}, source).override(
        "train", seed=0, mixed_precision="off"
    )
    data = [str(trained_run.parent / "data"), str(more_data)]
    learner = InitLearner(data, config, None, source, log=lambda *_: None).prepare().build(distribute=False)
    old = source.load_model()
    assert learner.class_names == ["aqua", "blue", "green", "red"]
    for theirs, mine in zip(old.layers, learner.model.layers, strict=True):
        if mine.name == "logits":
            continue
        for a, b in zip(theirs.get_weights(), mine.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    old_kernel, old_bias = old.get_layer("logits").get_weights()
    kernel, bias = learner.model.get_layer("logits").get_weights()
    for i, name in enumerate(source.read_labels()):
        j = learner.class_names.index(name)
        np.testing.assert_array_equal(kernel[:, j], old_kernel[:, i])
        assert bias[j] == old_bias[i]
    # the new class: fresh, neither zero nor copied
    assert kernel.shape[1] == 4 and not np.allclose(kernel[:, 0], 0)
    assert [layer.name for layer in learner.model.layers][-2:] == ["logits", "probs"]


def test_cli_init_records_its_source_and_merges_datasets(init_run, trained_run):
    config = RunDir(init_run).read_config()
    assert config["init_from"] == {
        "run": str(trained_run.resolve()),
        "model_sha256": RunDir(trained_run).model_sha256(),
    }
    assert config["class_names"] == ["aqua", "blue", "green", "red"]
    source = RunDir(trained_run).read_config()
    assert config["model"]["name"] == source["model"]["name"]
    # the source's augmentation, not the one the recipe would pick for the new data's size
    assert config["config"]["augment"] == source["config"]["augment"]
    assert json_metrics(init_run)["test"]["accuracy"] >= 0.75


def test_init_follows_the_source_augmentation_unless_one_is_given(trained_run):
    source = RunDir(trained_run)
    theirs = source_config(source).augment.preset
    assert inherit(RunConfig(), source_config(source), {}, source).augment.preset == theirs
    given = inherit(RunConfig(), source_config(source), {("augment", "preset"): "strong"}, source)
    assert given.augment.preset == "auto"  # left to apply_overrides, which sets the flag's value


def json_metrics(run: Path) -> dict:
    from imagerec.utils import read_json

    return read_json(RunDir(run).metrics)


def test_init_refuses_another_architecture(trained_run, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "train", str(trained_run.parent / "data"), "--init", str(trained_run), "--out", str(tmp_path / "r"),
        "--image-size", "48",
    )  # fmt: skip
    assert code == 2 and "fine-tuning keeps the source's architecture" in out + err
    assert not (tmp_path / "r").exists()


def test_init_refuses_a_folder_that_is_no_run(colour_data, tmp_path):
    import imagerec

    with pytest.raises(RunError):
        imagerec.train(colour_data, out=tmp_path / "r", init=colour_data, epochs=1, log=lambda *_: None)


def test_gate_compares_a_fine_tuned_run_on_olds_test_images(init_run, trained_run):
    from imagerec.classifier import Classifier
    from imagerec.data.split import read_manifest, rows_for
    from imagerec.evaluation.gate import gate_runs

    result = gate_runs(
        Classifier.load(trained_run, runtime="keras"), Classifier.load(init_run, runtime="keras")
    )
    old_test = rows_for(read_manifest(RunDir(trained_run).manifest), "test")
    assert result.num_images == len(old_test) and result.source == "run:test"
    assert set(result.new["per_class"]) == {"blue", "green", "red"}  # OLD's classes, not the new one


def test_resume_keeps_init_from(init_run, trained_run, more_data, tmp_path):
    import shutil

    import imagerec

    run = tmp_path / "run"
    shutil.copytree(init_run, run)
    before = RunDir(run).read_config()["init_from"]
    data = [str(trained_run.parent / "data"), str(more_data)]
    imagerec.train(data, out=run, resume=True, epochs=4, log=lambda *_: None)
    assert RunDir(run).read_config()["init_from"] == before
    assert RunDir(run).read_config()["config"]["train"]["epochs"] == 4
